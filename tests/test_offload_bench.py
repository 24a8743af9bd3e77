"""``bench/offload_bench.py`` runs end to end with tiny shapes: every variant's logits equal the
whole model's, the disk variant really keeps the second half's blocks off the device, and the
ratios are each variant's median over the whole model's."""

from __future__ import annotations

import json

from tests.helpers import run_quick_bench


def test_the_quick_run_times_offloaded_blocks_against_the_whole_model(tmp_path):
    result = run_quick_bench("offload_bench", tmp_path)
    data = json.loads((tmp_path / "offload_smoke.json").read_text())
    whole, disk = data["rows"]  # on a CPU: no "half in CPU memory" row (it would not offload)
    assert (whole["variant"], disk["variant"]) == ("in memory", "half on disk")
    assert whole["offloaded_bytes"] == 0 and whole["ratio_to_whole"] == 1.0
    block = 4 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64)  # float32: attention, MLP, two norms
    assert disk["offloaded_bytes"] == block  # one of the two blocks
    assert disk["max_logit_difference"] == 0.0
    expected = disk["forward_ms_median"] / whole["forward_ms_median"]
    assert abs(disk["ratio_to_whole"] - expected) < 1e-9
    assert "half on disk" in result.stdout
