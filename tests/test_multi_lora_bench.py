"""``bench/multi_lora_bench.py`` runs end to end with tiny shapes on a CPU (its real shapes need a
GPU): ours and peft agree on every mixed batch before anything is timed, and every row holds
prefill and decode numbers for each way of running the batch."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import torch

from bench.multi_lora_bench import FULL, earlier_rows, merged_rows
from tests.helpers import run_quick_bench


def test_the_quick_run_measures_prefill_and_decode_for_every_mix(tmp_path):
    run_quick_bench("multi_lora_bench", tmp_path)
    data = json.loads((tmp_path / "multi_lora_smoke.json").read_text())
    assert (data["device"], data["quick"], data["complete"]) == ("cpu", True, True)
    mixes = [(r["targets"], r["distinct_adapters"], r["rows"]) for r in data["rows"]]
    assert mixes == [(t, k, 4) for t in ("q,v", "all linear") for k in (1, 4)]
    for row in data["rows"]:
        for way in ("ours", "ours_segmented", "peft", "one_adapter", "base"):
            assert row[f"prefill_{way}_ms"] > 0 and row[f"decode_{way}_tokens_per_s"] > 0
        ratio = row["prefill_ours_ms"] / row["prefill_one_adapter_ms"]
        assert abs(row["prefill_ours_over_one_adapter"] - ratio) < 1e-9


def test_a_partial_run_keeps_only_rows_measured_on_the_same_gpu_and_shape(tmp_path):
    path = tmp_path / "multi_lora.json"
    rows = [{"targets": "q,v", "distinct_adapters": 32, "prefill_ours_ms": 59.5}]
    result = {"device": "NVIDIA H200", "shape": asdict(FULL), "dtype": "torch.bfloat16"}
    path.write_text(json.dumps({**result, "rows": rows}))
    assert earlier_rows(path, "NVIDIA H200", FULL, torch.bfloat16) == rows
    assert earlier_rows(path, "NVIDIA H100", FULL, torch.bfloat16) == []
    assert earlier_rows(path, "NVIDIA H200", replace(FULL, prompt=512), torch.bfloat16) == []
    assert earlier_rows(path, "NVIDIA H200", FULL, torch.float16) == []
    assert earlier_rows(tmp_path / "absent.json", "NVIDIA H200", FULL, torch.bfloat16) == []


def test_a_prefill_only_run_keeps_the_decode_numbers_measured_before():
    earlier = [
        {"targets": "all linear", "distinct_adapters": 32, "prefill_ours_ms": 96.5,
         "decode_ours_tokens_per_s": 944.0, "decode_one_adapter_over_ours": 0.84},
        {"targets": "q,v", "distinct_adapters": 4, "prefill_ours_ms": 48.0},
    ]  # fmt: skip
    prefill_only = {"targets": "all linear", "distinct_adapters": 32, "prefill_ours_ms": 95.0}
    new = {"targets": "all linear", "distinct_adapters": 64, "prefill_ours_ms": 120.0}
    assert merged_rows(earlier, [new, prefill_only]) == [
        earlier[1],
        {**prefill_only, "decode_ours_tokens_per_s": 944.0, "decode_one_adapter_over_ours": 0.84},
        new,
    ]
    measured_again = {**prefill_only, "decode_ours_tokens_per_s": 900.0}
    assert merged_rows(earlier, [measured_again]) == [earlier[1], measured_again]
