"""Registry at scale: query latency over 100,000 versions, and S3 transfer throughput.

    python -m bench.registry_bench [--quick]

1. Fill a registry (SQLite, then PostgreSQL) with versions across many base models, tasks and
   languages — bulk-inserted through the ORM schema, since this measures queries, not
   registration — then time ``find`` (base model + task + language, ordered by a metric),
   ``get`` by alias and ``resolve`` through the public ``Registry`` API: p50 and p99.
2. Upload and download the same files to SeaweedFS through ``S3Store`` and through plain boto3
   ``upload_file``/``download_file``; report MB/s and the ratio ours / boto3.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from sqlalchemy import insert

from bench.common import percentiles, servers, timed, write_result
from registry import Registry
from registry.artifacts import S3Store
from registry.artifacts.s3 import MULTIPART
from registry.db import Database
from registry.orm import AdapterRow, AliasRow, BaseModelRow, MetricRow, VersionRow

BASES, TASKS, LANGUAGES = 20, 50, 20
QUERIES = 300


def fill(database_url: str, versions_per_adapter: int, adapters: int) -> None:
    """Bulk-insert ``adapters`` adapters with ``versions_per_adapter`` versions each."""
    database = Database(database_url, auto_migrate=True)
    now = datetime.now(UTC)
    rng = random.Random(0)
    with database.session() as session:
        session.execute(
            insert(BaseModelRow),
            [
                {"id": b + 1, "name": f"base-{b}", "fingerprint": f"{b:064x}", "created_at": now}
                for b in range(BASES)
            ],
        )
        adapter_rows, version_rows, metric_rows, alias_rows = [], [], [], []
        for a in range(adapters):
            base, task, language = (
                a % BASES,
                (a // BASES) % TASKS,
                (a // (BASES * TASKS)) % LANGUAGES,
            )
            adapter_rows.append(
                dict(id=a + 1, name=f"adapter-{a}", base_model_id=base + 1, task=f"task-{task}")
                | dict(language=_language(language), method="lora", head="classification")
                | dict(description="", created_at=now)
            )
            for v in range(versions_per_adapter):
                vid = a * versions_per_adapter + v + 1
                digest = hashlib.sha256(str(vid).encode()).hexdigest()
                version_rows.append(
                    dict(id=vid, adapter_id=a + 1, version=v + 1, digest=digest, size=300_000)
                    | dict(artifact_uri=f"s3://bench/{vid}", spec={}, lineage={}, created_at=now)
                )
                metric_rows.append({"version_id": vid, "key": "accuracy", "value": rng.random()})
            alias_rows.append(
                {
                    "adapter_id": a + 1,
                    "alias": "champion",
                    "version_id": a * versions_per_adapter + 1,
                    "updated_at": now,
                }
            )
        for table, rows in (
            (AdapterRow, adapter_rows),
            (VersionRow, version_rows),
            (MetricRow, metric_rows),
            (AliasRow, alias_rows),
        ):
            for start in range(0, len(rows), 5000):
                session.execute(insert(table), rows[start : start + 5000])
    # Fresh planner statistics, as autovacuum keeps them on a live server; without them PostgreSQL
    # plans the alias lookup over 100k freshly bulk-loaded rows about 15x slower.
    with database.engine.connect() as connection:
        connection.exec_driver_sql("ANALYZE")
        connection.commit()
    database.dispose()


def _language(index: int) -> str:
    """A language code the registry accepts (2-3 letters): ``xaa``, ``xab``, ..."""
    return f"x{chr(97 + index // 26)}{chr(97 + index % 26)}"


def query_latencies(database_url: str, adapters: int, artifacts_url: str) -> dict[str, Any]:
    registry = Registry(database_url, artifacts_url)
    rng = random.Random(1)

    def random_adapter() -> tuple[int, int, int, int]:
        a = rng.randrange(adapters)
        return a, a % BASES, (a // BASES) % TASKS, (a // (BASES * TASKS)) % LANGUAGES

    find, get, resolve = [], [], []
    registry.get("adapter-0@champion")  # warm the connection pool
    for _ in range(QUERIES):
        a, base, task, language = random_adapter()
        where = {
            "base_model": f"base-{base}",
            "task": f"task-{task}",
            "language": _language(language),
        }
        find.append(timed(registry.find, **where, order_by="accuracy", limit=10))
        get.append(timed(registry.get, f"adapter-{a}@champion"))
        resolve.append(timed(registry.resolve, **where))
    registry.close()
    return {
        "find": percentiles(find),
        "get_by_alias": percentiles(get),
        "resolve": percentiles(resolve),
    }


def s3_throughput(work: Path, *, big_mb: int, small_files: int, rounds: int = 3) -> dict[str, Any]:
    """MB/s through ``S3Store`` and through plain boto3 on the same files (median of rounds).

    Each round writes new random files (our store skips bytes it already holds), and both
    buckets are warmed first (SeaweedFS allocates volumes on a bucket's first write).
    """
    client = boto3.client("s3")
    results: dict[str, Any] = {}
    for label, sizes in (
        ("one_big_file", [big_mb * 2**20]),
        ("many_adapter_files", [300_000] * small_files),
    ):
        bucket = label.replace("_", "-")
        ours = S3Store(f"s3://ours-{bucket}/x")
        ours.ensure_bucket()
        client.create_bucket(Bucket=f"plain-{bucket}")
        warm = _random_files(work / "warm", [1024])[0]
        ours.put_file(_digest(warm), warm)
        client.upload_file(str(warm), f"plain-{bucket}", "warm")
        timings: dict[str, list[float]] = {
            k: [] for k in ("up_ours", "up_plain", "down_ours", "down_plain")
        }
        for r in range(rounds):
            files = _random_files(work / f"{label}-{r}", sizes)
            digests = [_digest(f) for f in files]
            pairs = list(zip(digests, files, strict=True))
            down = work / f"down-{label}-{r}"
            down.mkdir()
            plain = f"plain-{bucket}"
            downloads = [(d, down / d) for d in digests]
            timings["up_ours"].append(timed(_each, pairs, ours.put_file))
            timings["up_plain"].append(timed(_each, pairs, _plain_upload(client, plain)))
            timings["down_ours"].append(timed(_each, downloads, ours.get_file))
            timings["down_plain"].append(timed(_each, downloads, _plain_download(client, plain)))
            shutil.rmtree(down)
        megabytes = sum(sizes) / 2**20
        median = {k: statistics.median(v) for k, v in timings.items()}
        results[label] = {
            "megabytes": round(megabytes, 2),
            "files": len(sizes),
            "rounds": rounds,
            "upload_mb_s": {
                "ours": megabytes / median["up_ours"],
                "boto3": megabytes / median["up_plain"],
                "ratio_ours_over_boto3": median["up_plain"] / median["up_ours"],
            },
            "download_mb_s": {
                "ours": megabytes / median["down_ours"],
                "boto3": megabytes / median["down_plain"],
                "ratio_ours_over_boto3": median["down_plain"] / median["down_ours"],
            },
        }
    return results


def _each(pairs: list[tuple[Any, Any]], action: Callable[[Any, Any], Any]) -> None:
    for first, second in pairs:
        action(first, second)


def _plain_upload(client: Any, bucket: str) -> Callable[[str, Path], Any]:
    return lambda digest, path: client.upload_file(str(path), bucket, digest, Config=MULTIPART)


def _plain_download(client: Any, bucket: str) -> Callable[[str, Path], Any]:
    return lambda digest, path: client.download_file(bucket, digest, str(path), Config=MULTIPART)


def _random_files(folder: Path, sizes: list[int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, size in enumerate(sizes):
        path = folder / f"file-{i}.bin"
        path.write_bytes(os.urandom(size))
        files.append(path)
    return files


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="10,000 versions and smaller transfers"
    )
    args = parser.parse_args()
    versions_per_adapter = 5
    total_versions = 10_000 if args.quick else 100_000
    adapters = total_versions // versions_per_adapter
    with servers("adapterops-bench-", postgres=True) as (work, _, postgres):
        postgres.create_database("bench")
        backends = {
            "sqlite": f"sqlite:///{work / 'registry.db'}",
            "postgresql": postgres.url("bench"),
        }
        queries = {}
        for name, url in backends.items():
            print(f"filling {name} with {total_versions:,} versions ...", flush=True)
            fill(url, versions_per_adapter, adapters)
            queries[name] = query_latencies(url, adapters, (work / "artifacts").as_uri())
            print(
                f"  {name}: "
                + ", ".join(
                    f"{op} p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms"
                    for op, r in queries[name].items()
                ),
                flush=True,
            )
        print("S3 transfers through S3Store vs plain boto3 ...", flush=True)
        transfers = s3_throughput(
            work, big_mb=16 if args.quick else 64, small_files=20 if args.quick else 100
        )
        for label, r in transfers.items():
            up = r["upload_mb_s"]["ratio_ours_over_boto3"]
            down = r["download_mb_s"]["ratio_ours_over_boto3"]
            print(f"  {label}: ours/boto3 upload {up:.2f}, download {down:.2f}")
        path = write_result(
            "registry",
            {
                "quick": args.quick,
                "versions": total_versions,
                "adapters": adapters,
                "queries": queries,
                "s3": transfers,
            },
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
