"""``bench/move_bench.py`` against real PostgreSQL and SeaweedFS: both ways move every version
(the bench checks each target), and the report shows the times the result holds."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from bench import report
from bench.common import machine
from bench.move_bench import filled_registry, move_timings
from registry.artifacts import S3Store

pytestmark = pytest.mark.usefixtures("seaweed")


def test_both_ways_move_every_version_and_the_report_shows_the_ratio(tmp_path: Path, postgres):
    numbers = itertools.count()

    def targets() -> tuple[str, str]:
        number = next(numbers)
        postgres.create_database(f"move_bench_{tmp_path.name}_{number}".lower())
        store = f"s3://move-bench-test/{tmp_path.name}/t{number}"
        S3Store(store).ensure_bucket()
        return postgres.url(f"move_bench_{tmp_path.name}_{number}".lower()), store

    source = filled_registry(tmp_path, 6)
    result = move_timings(source, targets, 2)

    assert (result["versions"], result["files"], result["rounds"]) == (6, 13, 2)
    assert result["speedup"] == pytest.approx(result["one_at_a_time_s"] / result["eight_at_once_s"])
    assert next(numbers) == 4  # two rounds, each way once
    section = report.move_section({"machine": machine(), **result}, tmp_path)
    assert (
        f"6 versions (13 files, {result['megabytes']:.0f} MB, {result['events']} events) from "
        f"SQLite and a local folder into PostgreSQL and S3 (SeaweedFS on this machine) took "
        f"**{result['eight_at_once_s']:.1f} s** copying 8 files at once"
    ) in section
