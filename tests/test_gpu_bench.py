"""``bench/gpu_bench.py`` runs end to end with tiny shapes on a CPU (its real shapes need a GPU):
ours and peft train the same LoRA (same trainable count, same loss) with and without gradient
checkpointing, and the ratios are written."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_quick_bench


def test_the_quick_run_compares_ours_with_peft(tmp_path):
    run_quick_bench("gpu_bench", tmp_path)
    data = json.loads((tmp_path / "gpu_smoke.json").read_text())
    rows = {(r["library"], r["checkpointing"]): r for r in data["rows"]}
    libraries = ("ours", "peft", "ours-nf4")  # torchao is a dev dependency: QLoRA runs too
    assert set(rows) == {(lib, c) for lib in libraries for c in (False, True)}
    for checkpointing in (False, True):
        ours, peft = rows["ours", checkpointing], rows["peft", checkpointing]
        nf4 = rows["ours-nf4", checkpointing]
        # r=16 on q (128->128), k, v (128->64), o, gate, up (128->256), down (256->128); 2 layers
        per_layer = 16 * (256 + 192 + 192 + 256 + 384 + 384 + 384)
        assert ours["trainable"] == peft["trainable"] == nf4["trainable"] == 2 * per_layer
        assert ours["final_loss"] == pytest.approx(peft["final_loss"], abs=1e-3)
        # the 4-bit base computes close to, not exactly like, the bf16 one
        assert nf4["final_loss"] == pytest.approx(ours["final_loss"], abs=0.1)
        assert nf4["final_loss"] != ours["final_loss"]
        # the planner's step peak beside ours (QLoRA's weights are smaller; the step is not)
        assert 0 < nf4["estimated_peak_gib"] < ours["estimated_peak_gib"]
        assert "estimated_peak_gib" not in peft
        key = "checkpointing" if checkpointing else "plain"
        ratio = data["ratios"][key]["time_ours_over_peft"]
        assert ratio == pytest.approx(ours["step_seconds"] / peft["step_seconds"])
    assert data["complete"] is True


def test_a_failing_configuration_is_a_row_with_its_error_and_the_others_keep_their_ratios():
    """On a lent GPU one configuration may fail (a kernel missing, out of memory): the run
    records why and goes on, and ratios come only from rows that were measured."""
    import torch

    from bench import gpu_bench

    failed = gpu_bench.run_or_record("no-such-library", True, gpu_bench.QUICK, torch.device("cpu"))
    assert failed == {
        "library": "no-such-library", "checkpointing": True, "error": "KeyError: 'no-such-library'"
    }  # fmt: skip
    rows = [
        {"library": "ours", "checkpointing": False, "step_seconds": 2.0, "peak_memory_gib": 3.0},
        {"library": "peft", "checkpointing": False, "step_seconds": 4.0, "peak_memory_gib": 4.0},
        {"library": "ours-nf4", "checkpointing": False, "error": "OutOfMemoryError: ..."},
        {"library": "ours", "checkpointing": True, "step_seconds": 3.0, "peak_memory_gib": None},
        {**failed, "library": "peft"},
    ]
    assert gpu_bench.ratios_of(rows) == {
        "plain": {"time_ours_over_peft": 0.5, "memory_ours_over_peft": 0.75},
        "checkpointing": {},
    }
