"""Named locks shared by every process that opens one registry database.

A promotion gate reads which version holds an alias, weighs the candidate against it (a
build re-evaluates the champion: minutes for an LLM) and moves the alias. Two gates of one
adapter at once (a CI build and a scheduled retrain, two workers) both weighed against the
same holder and both moved the alias: the later move won without ever being compared with the
earlier one. Holding :func:`named_lock` from the read to the move makes the second gate wait
and weigh against what the first one left.

PostgreSQL: a transaction advisory lock (``pg_advisory_xact_lock``) in a transaction of its own
connection, released when that transaction ends, even if the process dies (a transaction's lock
also holds behind a pooler such as PgBouncer in transaction mode, where a session's would not).
SQLite: a file lock in a folder beside the database file
(SQLite is shared only by processes of one machine); an in-memory database has no other
process to exclude.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from sqlalchemy import Engine, text

__all__ = ["file_lock_if_writable", "named_lock"]


@contextmanager
def named_lock(
    engine: Engine,
    sqlite_path: str | None,
    name: str,
    *,
    on_wait: Callable[[], None] | None = None,
) -> Iterator[None]:
    """Hold the lock called ``name`` for the block, waiting for any other process (or thread)
    that holds it; ``on_wait`` is called once, before waiting, if another holds it (a gate can
    hold it for minutes: a person should know why nothing happens). ``sqlite_path``: the
    database file of a SQLite ``engine`` (None for PostgreSQL, ``":memory:"`` or empty for an
    in-memory database)."""
    if engine.dialect.name != "sqlite":
        with _advisory_lock(engine, _key(name), on_wait):
            yield
        return
    if not sqlite_path or sqlite_path == ":memory:":
        yield
        return
    folder = Path(f"{sqlite_path}.locks")
    lock_file = folder / f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.lock"
    with file_lock_if_writable(lock_file, on_wait=on_wait):
        yield


@contextmanager
def file_lock_if_writable(
    path: str | Path, *, on_wait: Callable[[], None] | None = None
) -> Iterator[None]:
    """Hold a lock file at ``path`` (its folder made if missing) for the block, calling
    ``on_wait`` first if another holds it. Where the folder cannot be written (read-only, not
    ours) the block runs without it: whatever it writes next fails there with its own clear
    error, not with the lock's."""
    lock = FileLock(path)
    try:
        Path(path).parent.mkdir(exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:  # (a TimeoutError, so an OSError: caught here, not below)
            if on_wait is not None:
                on_wait()
            lock.acquire()
        held = True
    except OSError:
        held = False
    try:
        yield
    finally:
        if held:
            lock.release()


@contextmanager
def _advisory_lock(engine: Engine, key: int, on_wait: Callable[[], None] | None) -> Iterator[None]:
    with engine.connect() as connection:  # leaving it ends the transaction, and the lock
        taken = connection.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key})
        if not taken.scalar_one():
            if on_wait is not None:
                on_wait()
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        yield


def _key(name: str) -> int:
    """A signed 64-bit key for ``name`` (advisory locks are numbered), ours alone by prefix."""
    digest = hashlib.sha256(f"adapterops:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
