"""``bench/fsdp_memory_bench.py`` runs end to end in quick mode: one case, two gloo processes,
twice; the row's ratios are what its bytes say."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_quick_bench


def test_the_quick_run_compares_the_estimate_with_each_runs_real_peak(tmp_path):
    result = run_quick_bench("fsdp_memory_bench", tmp_path)
    data = json.loads((tmp_path / "fsdp_memory_smoke.json").read_text())
    (row,) = data["rows"]
    assert (row["case"], row["processes"], data["repeats"]) == ("llama-512-lora", 2, 2)
    assert row["real_low_bytes"] <= row["real_high_bytes"]
    assert row["ratio_low"] == pytest.approx(row["estimate_bytes"] / row["real_high_bytes"])
    assert row["ratio_high"] == pytest.approx(row["estimate_bytes"] / row["real_low_bytes"])
    assert 0.85 < row["ratio_low"] <= row["ratio_high"] < 1.15
    assert row["shard_bytes"] < row["one_process_bytes"]
    assert "estimate / real" in result.stdout
