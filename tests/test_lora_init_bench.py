"""``bench/lora_init_bench.py`` runs end to end with tiny shapes: every init is timed, ours and
peft's, and the ratios are what the times say."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_quick_bench


def test_the_quick_run_times_each_init_against_the_default_and_peft(tmp_path):
    result = run_quick_bench("lora_init_bench", tmp_path)
    data = json.loads((tmp_path / "lora_init_smoke.json").read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert list(rows) == ["default", "pissa", "pissa, 4 iterations", "olora"]
    default = rows["default"]["ours_s"]
    for row in rows.values():
        assert row["ours_s"] > 0 and row["peft_s"] >= 0
        assert row["ours_over_default"] == pytest.approx(row["ours_s"] / default)
        assert row["ours_s_per_layer"] == pytest.approx(row["ours_s"] / data["shape"]["layers"])
    assert rows["default"]["ours_over_default"] == pytest.approx(1.0)
    assert "ours / peft" in result.stdout
