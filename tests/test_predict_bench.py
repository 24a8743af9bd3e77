"""``bench/predict_bench.py`` runs end to end on a few texts: every batch size gives the same
labels (the bench asserts it before timing), and the ratios are what the times say."""

from __future__ import annotations

import json

import pytest

from bench import report
from tests.helpers import run_quick_bench


def test_the_quick_run_times_each_batch_size_against_one_text_a_pass(tmp_path):
    result = run_quick_bench("predict_bench", tmp_path)
    data = json.loads((tmp_path / "predict_smoke.json").read_text())
    rows = data["rows"]
    assert [(r["versions"], r["batch_rows"], r["texts_per_batch"]) for r in rows] == [
        (1, 1, 1), (1, 32, 32), (1, 64, 64), (2, 1, 1), (2, 32, 16), (2, 64, 32),
    ]  # fmt: skip
    for row in rows:
        one_text = next(
            r for r in rows if r["versions"] == row["versions"] and r["batch_rows"] == 1
        )
        assert row["texts_per_second"] == pytest.approx(data["texts"] / row["seconds"])
        assert row["speedup_vs_one_text"] == pytest.approx(one_text["seconds"] / row["seconds"])
    assert "2 version(s), 32 rows a batch" in result.stdout

    (tmp_path / "predict.json").write_text(json.dumps(data))
    section = report.predict_section(data, tmp_path)
    assert "| 2 | 32 (16 texts) |" in section and "| 2 | 2 (1 text) |" in section
