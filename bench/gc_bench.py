"""gc's deletes on S3 (SeaweedFS): batched DeleteObjects requests (up to 1,000 keys each, what
``S3Store.delete_many`` sends) against one DeleteObject request per blob (what gc sent before).

    python -m bench.gc_bench [--quick]

gc holds the registry's exclusive blob lock while it deletes, and every registration waits on
that lock, so the time measured here is the time registrations are held up. Each round uploads
fresh blobs (not timed) into two prefixes of one bucket, then deletes one prefix's blobs each
way, the order alternating between rounds; the median of the rounds is reported.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.common import timed, write_result
from infra.stack import SeaweedS3
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


def _each(store: S3Store, digests: list[str]) -> None:
    for digest in digests:
        store.delete(digest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer blobs and rounds")
    args = parser.parse_args()
    counts, rounds = ([50, 200], 2) if args.quick else ([100, 1000, 3000], 3)
    work = Path(tempfile.mkdtemp(prefix="adapterops-gc-bench-"))
    seaweed = SeaweedS3.on_free_ports(work / "seaweedfs")
    try:
        seaweed.start()
        os.environ.update(
            AWS_ENDPOINT_URL_S3=seaweed.endpoint,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
        )
        rows = delete_timings("gc-bench", counts, rounds, work / "blobs")
        for r in rows:
            print(
                f"{r['blobs']:>5} blobs: one request each {r['one_request_each_s']:.2f} s, "
                f"batched {r['batched_s']:.3f} s ({r['speedup']:.0f}x)",
                flush=True,
            )
        print(f"wrote {write_result('gc', {'quick': args.quick, 'rows': rows})}")
    finally:
        seaweed.stop(grace=5)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
