"""``bench/gc_bench.py`` against the real SeaweedFS server: both ways delete every blob they
are given (the bench checks it), and the report shows the times the rows hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import report
from bench.common import machine
from bench.gc_bench import delete_timings, manifest_timings

pytestmark = pytest.mark.usefixtures("seaweed")


def test_both_ways_delete_every_blob_and_the_report_shows_the_ratio(tmp_path: Path):
    rows = delete_timings("gc-bench-test", [3, 7], 2, tmp_path)
    assert [(r["blobs"], r["rounds"]) for r in rows] == [(3, 2), (7, 2)]
    for row in rows:
        assert row["speedup"] == pytest.approx(row["one_request_each_s"] / row["batched_s"])
    manifests = manifest_timings("gc-bench-test-registry", 4, 2, tmp_path / "versions")
    assert (manifests["versions"], manifests["rounds"]) == (4, 2)
    assert manifests["speedup"] == pytest.approx(
        manifests["eight_at_once_s"] / manifests["recorded_s"]
    )
    data = {"machine": machine(), "rows": rows, "manifests": manifests}
    section = report.gc_section(data, tmp_path)
    assert (
        f"a dry run over 4 versions took {manifests['recorded_s']:.2f} s; downloading every "
        f"manifest instead (what gc did before, and does once for older versions) took "
        f"{manifests['eight_at_once_s']:.2f} s 8 at once"
    ) in section
    first = rows[0]
    assert (
        f"| 3 | {first['one_request_each_s']:.2f} s | {first['batched_s']:.3f} s | "
        f"{first['speedup']:.1f}x |"
    ) in section
