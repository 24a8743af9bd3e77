"""gc on S3 (SeaweedFS): its deletes and its reading of every version's manifest.

    python -m bench.gc_bench [--quick]

1. Deletes: batched DeleteObjects requests (up to 1,000 keys each, what ``S3Store.delete_many``
   sends) against one DeleteObject request per blob (what gc sent before). gc holds the
   registry's exclusive blob lock while it deletes, and every registration waits on that lock.
   Each round uploads fresh blobs (not timed) into two prefixes of one bucket, then deletes one
   prefix's blobs each way, the order alternating between rounds; medians of the rounds.
2. Manifests: ``Registry.gc(dry_run=True)`` over a registry of N versions (SQLite, S3), reading
   what the manifests list from SQL (what gc does since revision 0008) against downloading every
   manifest, 8 at once and one at a time (what it did before, and still does once for versions
   registered before 0008); medians, order alternating.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy

import registry.garbage
from bench.common import fake_adapter, servers, timed, write_result
from registry import Registry
from registry.artifacts import S3Store

BLOB_BYTES = 2048  # small: the cost is the requests, not the bytes


def upload_blobs(store: S3Store, count: int, work: Path) -> list[str]:
    """``count`` new random blobs in ``store`` (their digests), written through the store."""
    work.mkdir(parents=True, exist_ok=True)
    digests = []
    for _ in range(count):
        data = os.urandom(BLOB_BYTES)
        digest = data[:32].hex()  # random, hence unique: the store needs no real hash here
        source = work / digest
        source.write_bytes(data)
        store.put_file(digest, source)
        source.unlink()
        digests.append(digest)
    return digests


def delete_timings(bucket: str, counts: list[int], rounds: int, work: Path) -> list[dict[str, Any]]:
    """For each count of orphaned blobs: seconds to delete them one request each and batched
    (medians of ``rounds``), checked to leave none behind either way."""
    one_by_one, batched = S3Store(f"s3://{bucket}/one"), S3Store(f"s3://{bucket}/batched")
    one_by_one.ensure_bucket()
    rows = []
    for count in counts:
        seconds: dict[str, list[float]] = {"one_request_each": [], "batched": []}
        for round_ in range(rounds):
            doomed = {
                "one_request_each": upload_blobs(one_by_one, count, work),
                "batched": upload_blobs(batched, count, work),
            }
            ways = list(seconds) if round_ % 2 == 0 else list(reversed(seconds))
            for way in ways:
                if way == "batched":
                    seconds[way].append(timed(batched.delete_many, doomed[way]))
                else:
                    seconds[way].append(timed(_each, one_by_one, doomed[way]))
            for store in (one_by_one, batched):
                assert not list(store.blobs()), f"{store.url}: blobs left after the deletes"
        median = {way: statistics.median(times) for way, times in seconds.items()}
        rows.append(
            {
                "blobs": count,
                "rounds": rounds,
                "one_request_each_s": median["one_request_each"],
                "batched_s": median["batched"],
                "speedup": median["one_request_each"] / median["batched"],
            }
        )
    return rows


def manifest_timings(bucket: str, versions: int, rounds: int, work: Path) -> dict[str, Any]:
    """Seconds of a dry-run gc over ``versions`` registered versions (medians of ``rounds``):
    reading what their manifests list from SQL (what gc does), and downloading every manifest
    (what it did before revision 0008, and does once for versions registered before it), 8 at
    once and one at a time. Each finds nothing to delete."""
    registry_ = Registry(f"sqlite:///{work / 'gc.db'}", f"s3://{bucket}/registry")
    S3Store(registry_.artifacts.url).ensure_bucket()
    for number in range(versions):
        registry_.register(
            fake_adapter(work / f"adapter-{number}", BLOB_BYTES),
            name=f"a{number}", base_model="b", task="t", language="en",
        )  # fmt: skip
    seconds: dict[str, list[float]] = {"recorded": [], "8": [], "1": []}
    default = registry.garbage.MANIFEST_DOWNLOADS

    def dry_run() -> float:
        started = time.perf_counter()
        found = registry_.gc(older_than=timedelta(0), dry_run=True)
        assert found == [], f"a dry-run gc found {found[:3]} in a store with no orphans"
        return time.perf_counter() - started

    try:
        for round_ in range(rounds):
            seconds["recorded"].append(dry_run())
            _forget_manifest_files(registry_)  # a dry run records nothing: they stay forgotten
            for at_once in (8, 1) if round_ % 2 == 0 else (1, 8):
                registry.garbage.MANIFEST_DOWNLOADS = at_once
                seconds[str(at_once)].append(dry_run())
            registry.garbage.MANIFEST_DOWNLOADS = default
            registry_.gc(older_than=timedelta(0))  # records them again (not timed)
    finally:
        registry.garbage.MANIFEST_DOWNLOADS = default
        registry_.close()
    recorded, eight, one = (statistics.median(seconds[k]) for k in ("recorded", "8", "1"))
    return {"versions": versions, "rounds": rounds, "recorded_s": recorded,
            "eight_at_once_s": eight, "one_at_a_time_s": one,
            "speedup": eight / recorded}  # fmt: skip


def _forget_manifest_files(registry_: Registry) -> None:
    """As if every version were registered before revision 0008: no manifest's files known."""
    with registry_.database.engine.begin() as connection:
        connection.execute(sqlalchemy.text("DELETE FROM manifest_files"))


def _each(store: S3Store, digests: list[str]) -> None:
    for digest in digests:
        store.delete(digest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer blobs and rounds")
    args = parser.parse_args()
    counts, rounds = ([50, 200], 2) if args.quick else ([100, 1000, 3000], 3)
    versions = 50 if args.quick else 1000
    with servers("adapterops-gc-bench-") as (work, _, _):
        rows = delete_timings("gc-bench", counts, rounds, work / "blobs")
        for r in rows:
            print(
                f"{r['blobs']:>5} blobs: one request each {r['one_request_each_s']:.2f} s, "
                f"batched {r['batched_s']:.3f} s ({r['speedup']:.0f}x)",
                flush=True,
            )
        manifests = manifest_timings("gc-bench-registry", versions, rounds, work / "versions")
        print(
            f"dry-run gc over {versions} versions: files read from SQL "
            f"{manifests['recorded_s']:.2f} s; every manifest downloaded 8 at once "
            f"{manifests['eight_at_once_s']:.2f} s ({manifests['speedup']:.1f}x slower), one at "
            f"a time {manifests['one_at_a_time_s']:.2f} s",
            flush=True,
        )
        result = {"quick": args.quick, "rows": rows, "manifests": manifests}
        print(f"wrote {write_result('gc', result)}")


if __name__ == "__main__":
    main()
