"""What ``adapterops db status`` reports: where the registry is, its schema, what it holds, and
which registries write to its artifact store (a shared store is why ``gc`` would refuse)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import distinct, func, select

from .artifacts import open_store
from .db import Database, schema_head
from .errors import NoRegistryError
from .move_marker import moved_to
from .orm import AdapterRow, CompositionRow, VersionRow
from .settings import Settings
from .store import registry_identity

__all__ = ["RegistryStatus", "registry_status"]


@dataclass(frozen=True)
class RegistryStatus:
    """A registry's database and store, as found (counts are None while the schema is behind)."""

    database: str  # the URL, without its password
    revision: str | None  # None: no registry schema yet (a new PostgreSQL database)
    head: str
    identity: str | None
    adapters: int | None
    versions: int | None
    compositions: int | None
    artifacts: str
    other_writers: dict[str, str] = field(default_factory=dict)  # id -> its marker's words
    # where `db move` took it, {database, artifacts, started, finished}: it takes no writes
    moved: dict[str, Any] | None = None

    @property
    def up_to_date(self) -> bool:
        """Whether the schema is the newest this code knows (else: ``adapterops db upgrade``)."""
        return self.revision == self.head


def registry_status(
    database_url: str | None = None, artifacts_url: str | None = None
) -> RegistryStatus:
    """Read the registry's state without changing it: a schema that is behind is reported,
    not migrated (SQLite too); a SQLite registry that does not exist is
    :class:`NoRegistryError`."""
    defaults = Settings.from_env()
    try:
        database = Database(
            database_url or defaults.database_url, auto_migrate=False, create=False, verify=False
        )
    except NoRegistryError as exc:
        raise exc if database_url else NoRegistryError(Settings.where_to_look(str(exc))) from None
    try:
        revision, head = database.revision(), schema_head()
        identity = adapters = versions = compositions = moved = None
        if revision == head:
            with database.session() as session:
                identity = registry_identity(session)
                moved = moved_to(session)
                adapters = session.scalar(select(func.count()).select_from(AdapterRow))
                versions = session.scalar(select(func.count()).select_from(VersionRow))
                compositions = session.scalar(select(func.count(distinct(CompositionRow.name))))
    finally:
        database.dispose()
    store = open_store(artifacts_url or defaults.artifacts_url)
    writers = store.writers()
    return RegistryStatus(
        database=database.safe_url,
        revision=revision,
        head=head,
        identity=identity,
        adapters=adapters,
        versions=versions,
        compositions=compositions,
        artifacts=store.url,
        other_writers={i: note for i, note in writers.items() if i != identity},
        moved=moved,
    )
