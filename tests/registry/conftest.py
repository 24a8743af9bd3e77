"""Real services for the registry tests: a throwaway PostgreSQL cluster and a SeaweedFS S3 server.

Both start once per test session on free loopback ports; every test gets its own database and its
own bucket, so tests never see each other's data.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infra.stack import PostgresServer
from registry import Registry
from registry.artifacts import S3Store
from registry.db import Database

_counter = itertools.count()


def fresh_postgres_url(postgres: PostgresServer) -> str:
    name = f"registry_{os.getpid()}_{next(_counter)}"
    postgres.create_database(name)
    url = postgres.url(name)
    Database(url, auto_migrate=True).dispose()  # as `adapterops db upgrade` does
    return url


def fresh_bucket_url() -> str:
    """A prefix of its own in this process's bucket: isolated like a bucket, but without a new
    SeaweedFS collection per test (each takes volumes, and the server has a fixed number)."""
    url = f"s3://test-{os.getpid()}/t{next(_counter)}/adapters"
    S3Store(url).ensure_bucket()
    return url


# For tests of what differs between servers (migrations, concurrency): also PostgreSQL 18.
EVERY_SERVER = pytest.mark.parametrize(
    "locations", ["sqlite+folder", "postgres+s3", "newer_postgres+s3"], indirect=True
)


@pytest.fixture(params=["sqlite+folder", "postgres+s3"])
def locations(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """``(database URL, artifacts URL)`` for each supported backend pair (also
    ``newer_postgres+s3``, PostgreSQL 18, where a module asks for it)."""
    if request.param == "sqlite+folder":
        return f"sqlite:///{tmp_path / 'registry.db'}", (tmp_path / "artifacts").as_uri()
    postgres = request.getfixturevalue(request.param.partition("+")[0])
    request.getfixturevalue("seaweed")
    return fresh_postgres_url(postgres), fresh_bucket_url()


@pytest.fixture
def registry(locations: tuple[str, str]) -> Iterator[Registry]:
    reg = Registry(*locations)
    yield reg
    reg.close()


@pytest.fixture
def make_adapter(tmp_path: Path) -> Callable[..., Path]:
    """Write an adapter folder in our format with distinct bytes (the registry stores bytes)."""

    def make(
        seed: int = 0,
        *,
        method: str = "lora",
        head: str = "classification",
        fingerprint: str = "f" * 64,
        extra: dict[str, str] | None = None,
    ) -> Path:
        from tests.registry.workers import write_fake_adapter

        folder = tmp_path / f"adapter-{seed}-{method}-{next(_counter)}"
        write_fake_adapter(folder, seed, method=method, head=head, fingerprint=fingerprint)
        for name, text in (extra or {}).items():
            (folder / name).write_text(text)
        return folder

    return make
