"""`adapterops db move`: an embedded registry (SQLite, a local folder) into PostgreSQL and S3.

    python -m bench.move_bench [--quick]

A registry of N versions (distinct files of 64 KiB each, aliases moved, their events) moves into
a new PostgreSQL database and a new S3 prefix (SeaweedFS on this machine), copying files 8 at once
(what the move does) against one at a time; each round moves into fresh targets, the order
alternating between rounds, and each target is checked to hold every version. Medians of the
rounds.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import registry.move
from bench.common import fake_adapter, servers, write_result
from registry import Registry
from registry.artifacts import S3Store
from registry.move_marker import record_move

FILE_BYTES = 64 * 1024  # a small LoRA's tensors: the cost is mostly requests, some bytes

Targets = Callable[[], tuple[str, str]]  # a new, empty (database URL, artifacts URL)


def filled_registry(work: Path, versions: int) -> Registry:
    """An embedded registry of ``versions`` versions over ``versions // 5`` adapters, each
    adapter's newest version its champion."""
    source = Registry(f"sqlite:///{work / 'embedded.db'}", (work / "artifacts").as_uri())
    for number in range(versions):
        name = f"adapter-{number // 5}"
        version = source.register(
            fake_adapter(work / "folders" / str(number), FILE_BYTES),
            name=name, base_model="b", task="t", language="en",
        )  # fmt: skip
        source.set_alias(version.ref, "champion")
    shutil.rmtree(work / "folders")
    return source


def move_timings(source: Registry, targets: Targets, rounds: int) -> dict[str, Any]:
    """Seconds to move ``source`` into fresh targets copying 8 files at once and one at a
    time (medians of ``rounds``); each target is checked to hold every version."""
    versions = len(source.find())
    seconds: dict[str, list[float]] = {"8": [], "1": []}
    default = registry.move.COPIES_AT_ONCE
    report = None
    try:
        for round_ in range(rounds):
            for at_once in (8, 1) if round_ % 2 == 0 else (1, 8):
                database, artifacts = targets()
                registry.move.COPIES_AT_ONCE = at_once
                started = time.perf_counter()
                report = source.move_to(database, artifacts)
                seconds[str(at_once)].append(time.perf_counter() - started)
                moved = Registry(database, artifacts)
                assert len(moved.find()) == versions, f"{database} lacks versions after the move"
                moved.close()
                with source.database.session() as session:  # so it can move again
                    record_move(session, None)
    finally:
        registry.move.COPIES_AT_ONCE = default
    assert report is not None
    eight, one = statistics.median(seconds["8"]), statistics.median(seconds["1"])
    return {
        "versions": versions,
        "files": report.files,
        "megabytes": report.copied_bytes / 2**20,
        "events": report.events,
        "rounds": rounds,
        "eight_at_once_s": eight,
        "one_at_a_time_s": one,
        "speedup": one / eight,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 versions, 2 rounds")
    args = parser.parse_args()
    versions, rounds = (100, 2) if args.quick else (1000, 3)
    made = iter(range(1_000_000))
    with servers("adapterops-move-bench-", postgres=True) as (work, _, postgres):

        def targets() -> tuple[str, str]:
            number = next(made)
            postgres.create_database(f"moved_{number}")
            store = f"s3://move-bench/t{number}"
            S3Store(store).ensure_bucket()
            return postgres.url(f"moved_{number}"), store

        print(f"filling an embedded registry with {versions:,} versions ...", flush=True)
        source = filled_registry(work, versions)
        result = move_timings(source, targets, rounds)
        print(
            f"moved {result['versions']:,} versions ({result['files']:,} files, "
            f"{result['megabytes']:.0f} MB, {result['events']:,} events) into PostgreSQL and "
            f"S3: 8 files at once {result['eight_at_once_s']:.1f} s, one at a time "
            f"{result['one_at_a_time_s']:.1f} s ({result['speedup']:.1f}x)",
            flush=True,
        )
        print(f"wrote {write_result('move', {'quick': args.quick, **result})}")


if __name__ == "__main__":
    main()
