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
Managed servers often set ``statement_timeout`` and ``idle_in_transaction_session_timeout``, so
a waiter polls (no statement lasts as long as a gate) and the holder's transaction runs a
statement every second (never idle that long); PostgreSQL 17's ``transaction_timeout`` the
lock's transaction sets off for itself (a build holds its build key's lock for hours); a
connection lost anyway ends in a warning, the work done under the lock standing.
SQLite: a file lock in a folder beside the database file
(SQLite is shared only by processes of one machine); an in-memory database has no other
process to exclude.
"""

from __future__ import annotations

import hashlib
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

__all__ = [
    "KEEPALIVE_SECONDS",
    "POLL_SECONDS",
    "file_lock_if_writable",
    "kept_busy",
    "lock_is_held",
    "lock_key",
    "named_lock",
    "take_xact_lock",
]

POLL_SECONDS = 0.5  # how often a PostgreSQL waiter tries the lock again
# How long a lock is tried before ``on_wait`` says that it waits: a probe (lock_is_held) holds
# a free lock for a moment, and a build starting then said "waiting" for nothing
GRACE_SECONDS = 0.5
KEEPALIVE_SECONDS = 1.0  # how often a held PostgreSQL lock's transaction runs a statement


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
    in-memory database).

    Re-entrant within a thread: a block that holds the lock (an alias move by hand) may call
    code that takes it again (the MLflow sync of that adapter) without waiting on itself."""
    held: set[tuple[str, str]] = _held.__dict__.setdefault("locks", set())
    key = (str(engine.url), name)
    if key in held:
        yield
        return
    held.add(key)
    try:
        with _named_lock_once(engine, sqlite_path, name, on_wait):
            yield
    finally:
        held.discard(key)


_held = threading.local()  # the named locks this thread holds, as (database URL, name)


@contextmanager
def _named_lock_once(
    engine: Engine, sqlite_path: str | None, name: str, on_wait: Callable[[], None] | None
) -> Iterator[None]:
    if engine.dialect.name != "sqlite":
        with _advisory_lock(engine, lock_key(name), on_wait):
            yield
        return
    if not sqlite_path or sqlite_path == ":memory:":
        yield
        return
    with file_lock_if_writable(_lock_file(sqlite_path, name), on_wait=on_wait):
        yield


def _lock_file(sqlite_path: str, name: str) -> Path:
    """The file behind lock ``name`` of the SQLite database at ``sqlite_path``."""
    folder = Path(f"{sqlite_path}.locks")
    return folder / f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.lock"


def lock_is_held(engine: Engine, sqlite_path: str | None, name: str) -> bool:
    """Whether some process (this one included) holds the lock called ``name`` now: a probe
    that takes it and lets it go at once, never waiting. True where it cannot tell (an
    in-memory database, whose locks are not taken; a lock folder this process cannot
    write): a caller ending the work of processes that are gone must not end a live one's."""
    if (str(engine.url), name) in _held.__dict__.setdefault("locks", set()):
        return True
    if engine.dialect.name != "sqlite":
        with engine.connect() as connection:  # its transaction's lock ends with it
            taken = connection.execute(
                text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": lock_key(name)}
            ).scalar_one()
            connection.rollback()
        return not taken
    if not sqlite_path or sqlite_path == ":memory:":
        return True
    lock = FileLock(_lock_file(sqlite_path, name))
    try:
        lock.acquire(timeout=0)
    except OSError:  # Timeout (held), or a folder this process cannot write
        return True
    lock.release()
    return False


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
            lock.acquire(timeout=GRACE_SECONDS, poll_interval=GRACE_SECONDS / 10)
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
    connection = engine.connect()
    lost: list[SQLAlchemyError] = []  # what ended the connection while the lock was held
    try:
        take_xact_lock(connection, key, on_wait=on_wait)
        with kept_busy(connection, lost=lost):
            yield
    finally:
        _end(connection, lost)


def take_xact_lock(
    connection: Connection | Session,
    key: int,
    *,
    shared: bool = False,
    on_wait: Callable[[], None] | None = None,
) -> None:
    """Take PostgreSQL transaction advisory lock ``key`` in ``connection``'s transaction
    (``shared``: beside other sharers), calling ``on_wait`` once first if it must wait. Polled,
    not one blocking statement: a server's ``statement_timeout`` would cancel a wait as long
    as the holder's work (a gate, a garbage collection)."""
    function = "pg_try_advisory_xact_lock_shared" if shared else "pg_try_advisory_xact_lock"
    query = text(f"SELECT {function}(:key)")
    if _server_version(connection) >= (17,):  # its transaction lasts as long as the work
        connection.execute(text("SET LOCAL transaction_timeout = 0"))
    if _taken_within(connection, query, key, GRACE_SECONDS):
        return
    if on_wait is not None:
        on_wait()
    while not connection.execute(query, {"key": key}).scalar_one():
        time.sleep(POLL_SECONDS)


def _taken_within(connection: Connection | Session, query: Any, key: int, seconds: float) -> bool:
    """Try the lock ``query`` takes until ``seconds`` have passed; whether it was taken."""
    deadline = time.monotonic() + seconds
    while not connection.execute(query, {"key": key}).scalar_one():
        if time.monotonic() >= deadline:
            return False
        time.sleep(seconds / 10)
    return True


@contextmanager
def kept_busy(
    *connections: Connection | Session, lost: list[SQLAlchemyError] | None = None
) -> Iterator[None]:
    """A statement on each PostgreSQL connection (or session) every :data:`KEEPALIVE_SECONDS`
    while the block runs: their transactions hold locks, and a server's
    ``idle_in_transaction_session_timeout`` (managed PostgreSQL often sets one) would end them,
    and the locks with them, during long work that uses no SQL (a gate, deleting blobs). The
    block must not use them meanwhile. A failing statement goes to ``lost``."""
    beaten = [c for c in connections if _dialect(c) == "postgresql"]
    if not beaten:  # SQLite has no such timeout (and its connections stay in their thread)
        yield
        return
    done = threading.Event()

    def beat() -> None:
        while not done.wait(KEEPALIVE_SECONDS):
            for connection in beaten:
                try:
                    connection.execute(text("SELECT 1"))
                except SQLAlchemyError as exc:
                    if lost is not None:
                        lost.append(exc)
                    return

    beating = threading.Thread(target=beat, name="adapterops-lock-keepalive", daemon=True)
    beating.start()
    try:
        yield
    finally:
        done.set()
        beating.join()


def _dialect(connection: Connection | Session) -> str:
    bind = connection.get_bind() if isinstance(connection, Session) else connection.engine
    return bind.dialect.name


def _server_version(connection: Connection | Session) -> tuple[int, ...]:
    """The PostgreSQL server's version numbers, as SQLAlchemy read them on connecting."""
    bind = connection.get_bind() if isinstance(connection, Session) else connection.engine
    return tuple(part for part in bind.dialect.server_version_info or () if isinstance(part, int))


def _end(connection: Connection, lost: list[SQLAlchemyError]) -> None:
    """End the lock's transaction (and so the lock). A connection the server dropped meanwhile
    already lost the lock: the work done under it stands, and is not failed for it."""
    try:
        connection.rollback()
    except SQLAlchemyError as exc:
        lost.append(exc)
    finally:
        connection.close()
    if lost:
        warnings.warn(
            "the database connection holding a registry lock was lost before the work under "
            f"it ended ({' '.join(str(lost[0]).split())[:200]}); another process may have "
            "taken the lock meanwhile",
            RuntimeWarning,
            stacklevel=4,
        )


def lock_key(name: str) -> int:
    """A signed 64-bit key for ``name`` (advisory locks are numbered), ours alone by prefix."""
    digest = hashlib.sha256(f"adapterops:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
