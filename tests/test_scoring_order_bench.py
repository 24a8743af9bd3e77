"""``bench/scoring_order_bench.py`` runs end to end on a few rows: both orders give the same
answers (the bench asserts it before timing), and the speed-ups are what the times say."""

from __future__ import annotations

import json

import pytest

from bench import report
from tests.helpers import run_quick_bench


def test_the_quick_run_times_each_loop_in_file_order_and_longest_first(tmp_path):
    result = run_quick_bench("scoring_order_bench", tmp_path)
    data = json.loads((tmp_path / "scoring_order_smoke.json").read_text())
    assert [(r["loop"], r["rows"]) for r in data["rows"]] == [
        ("evaluate", 96), ("predict", 96), ("evaluate (causal LM)", 96),
    ]  # fmt: skip
    for row in data["rows"]:
        assert row["speedup"] == pytest.approx(
            row["file_order_seconds"] / row["longest_first_seconds"]
        )
    assert "evaluate: 96 rows in file order" in result.stdout

    section = report.scoring_order_section(data, tmp_path)
    first = data["rows"][0]
    assert f"| `evaluate` | 96 | {first['file_order_seconds']:.2f} s |" in section
