"""``bench/gc_bench.py`` against the real SeaweedFS server: both ways delete every blob they
are given (the bench checks it), and the report shows the times the rows hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import report
from bench.common import machine
from bench.gc_bench import delete_timings

pytestmark = pytest.mark.usefixtures("seaweed")


def test_both_ways_delete_every_blob_and_the_report_shows_the_ratio(tmp_path: Path):
    rows = delete_timings("gc-bench-test", [3, 7], 2, tmp_path)
    assert [(r["blobs"], r["rounds"]) for r in rows] == [(3, 2), (7, 2)]
    for row in rows:
        assert row["speedup"] == pytest.approx(row["one_request_each_s"] / row["batched_s"])
    section = report.gc_section({"machine": machine(), "rows": rows}, tmp_path)
    first = rows[0]
    assert (
        f"| 3 | {first['one_request_each_s']:.2f} s | {first['batched_s']:.3f} s | "
        f"{first['speedup']:.1f}x |"
    ) in section
