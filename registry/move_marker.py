"""What a moved registry's old database remembers, and the check every write makes of it.

``adapterops db move`` (:mod:`registry.move`) copies a registry into another database and
artifact store under the same id, so MLflow's models, the store's marker and the deployments
keep naming it. Two databases taking writes under one id would give two different versions one
number, so the old database refuses writes from the moment the move starts: each write
transaction reads the one ``registry_identity`` row first (PostgreSQL: ``FOR SHARE``, so the
move's update waits for writes already running, and later ones see it; SQLite: every write
transaction holds the database lock already).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .errors import NotMigratedError, RegistryMovedError
from .orm import RegistryIdentityRow

__all__ = ["check_writable", "moved_to", "now", "record_move", "where_it_went"]


def moved_to(session: Session, *, lock: bool = False) -> dict[str, Any] | None:
    """Where ``adapterops db move`` took this registry (``None``: it was never moved):
    ``{database, artifacts, started, finished}``, ``finished`` null while the move runs.
    ``lock``: hold the row for the transaction (shared), as a write does."""
    query = select(RegistryIdentityRow.moved)
    row = session.execute(query.with_for_update(read=True) if lock else query).first()
    if row is None:
        raise NotMigratedError(
            "the registry database has no identity row: run `adapterops db upgrade`"
        )
    return row.moved


def check_writable(session: Session) -> None:
    """Refuse a write (:class:`RegistryMovedError`) to a registry that was moved or is being
    moved, saying where to point instead. Called first in every write transaction."""
    moved = moved_to(session, lock=True)
    if moved is not None:
        raise RegistryMovedError(where_it_went(moved))


def where_it_went(moved: dict[str, Any]) -> str:
    """One line for a registry moved (or being moved) to ``moved``'s database and store."""
    place = f"{moved['database']} (artifacts {moved['artifacts']})"
    if moved.get("finished"):
        return (
            f"this registry was moved to {place} by `adapterops db move` on "
            f"{moved['finished'][:19]} UTC and takes no more writes here (reading it still "
            "works): point ADAPTEROPS_REGISTRY_URL and ADAPTEROPS_ARTIFACTS_URL at its new place "
            "(with the database's password, which is not recorded here)"
        )
    return (
        f"this registry is being moved to {place} (`adapterops db move`, started "
        f"{moved['started'][:19]} UTC) and takes no writes while the move runs; once it is "
        "done, point ADAPTEROPS_REGISTRY_URL and ADAPTEROPS_ARTIFACTS_URL there. If no move "
        f"runs any more (it was stopped), `adapterops db move --to {moved['database']}` "
        "finishes it"
    )


def record_move(session: Session, moved: dict[str, Any] | None) -> None:
    """Write (or, with ``None``, clear) the registry's move record."""
    session.execute(update(RegistryIdentityRow).values(moved=moved))


def now() -> str:
    """The time a move record keeps (ISO 8601, UTC)."""
    return datetime.now(UTC).isoformat(timespec="seconds")
