"""``bench/packing_bench.py`` runs end to end with tiny shapes: both variants train the same rows
(the first batch's losses agree), and the packed batches compute exactly the real tokens."""

from __future__ import annotations

import json

from tests.helpers import run_quick_bench


def test_the_quick_run_times_packed_against_padded_batches(tmp_path):
    result = run_quick_bench("packing_bench", tmp_path)
    data = json.loads((tmp_path / "packing_smoke.json").read_text())
    losses = data["first_batch_losses"]
    assert abs(losses["packed"] - losses["padded"]) < 1e-4
    padded, packed = data["rows"]
    assert (padded["variant"], packed["variant"]) == ("padded", "packed")
    assert packed["computed_tokens"] == packed["real_tokens"] == padded["real_tokens"]
    assert padded["computed_tokens"] > padded["real_tokens"]  # padding was computed
    assert data["padding_share"] == 1 - padded["real_tokens"] / padded["computed_tokens"]
    expected = packed["tokens_per_second"] / padded["tokens_per_second"]
    assert data["speedup_packed_over_padded"] == expected
    assert "packed / padded" in result.stdout
