"""``bench/quantized_load_bench.py`` at tiny shapes on a CPU: both ways of loading an NF4 base
run in fresh processes and end with the same codes, on the CPU, with the model's NF4 size."""

from __future__ import annotations

import json

from tests.helpers import run_quick_bench


def test_both_ways_load_the_same_nf4_model(tmp_path):
    run_quick_bench("quantized_load_bench", tmp_path)
    data = json.loads((tmp_path / "quantized_load_smoke.json").read_text())
    whole, streamed = data["rows"]
    assert (whole["way"], streamed["way"]) == ("whole, then quantised", "quantised while loading")
    assert data["same_codes"] is True and whole["digest"] == streamed["digest"]
    # q, o, gate, up, down of 2 blocks (k and v, 64 x 128, are too small for NF4's blocks)
    assert whole["quantized_layers"] == streamed["quantized_layers"] == 10
    assert whole["model_bytes"] == streamed["model_bytes"] < data["checkpoint_bytes"]
    assert whole["on"] == streamed["on"] == "cpu" and whole["gpu_peak_bytes"] == 0
    assert data["time_ratio"] == streamed["seconds"] / whole["seconds"]
