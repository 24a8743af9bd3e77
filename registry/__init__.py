"""The adapter registry: which adapters exist for which base model, task and language.

Records live in SQL (SQLite embedded, PostgreSQL in production), bytes in an artifact store (a local
folder or S3), content-addressed. Start with :class:`Registry`.
"""

from typing import TYPE_CHECKING, Any

from .composition_diff import CompositionDiff, blocks_text, diff_compositions
from .entities import AdapterVersion, Composition, Event, Resolution, UsedBy
from .errors import (
    AdapterFolderError,
    BaseModelMismatchError,
    CorruptArtifactError,
    DatabaseUnavailableError,
    ForeignDatabaseError,
    InUseError,
    InvalidCompositionError,
    InvalidNameError,
    NewerSchemaError,
    NoRegistryError,
    NotFoundError,
    NotMigratedError,
    RegistryError,
    RegistryMovedError,
    SharedStoreError,
    StorageUnavailableError,
    renamed,
)
from .metrics import higher_is_better
from .names import Ref, parse_ref
from .settings import HomeNotAFolderError, Settings
from .version_diff import Change, VersionDiff, diff_versions, diff_with_spec, shown

if TYPE_CHECKING:
    from .client import Registry
    from .status import RegistryStatus, registry_status


def __getattr__(name: str) -> Any:
    # The client pulls in SQLAlchemy, Alembic and boto3 (~0.5 s): load it on first use, so
    # commands that only need the registry's names and errors (``--help``) start fast.
    if name == "Registry":
        from .client import Registry  # noqa: PLC0415

        return Registry
    if name in ("RegistryStatus", "registry_status"):  # SQLAlchemy too: `db status` only
        from . import status  # noqa: PLC0415

        return getattr(status, name)
    return renamed(__name__, name)


__all__ = [
    "AdapterFolderError",
    "AdapterVersion",
    "BaseModelMismatchError",
    "Change",
    "Composition",
    "CompositionDiff",
    "CorruptArtifactError",
    "DatabaseUnavailableError",
    "Event",
    "ForeignDatabaseError",
    "HomeNotAFolderError",
    "InUseError",
    "InvalidCompositionError",
    "InvalidNameError",
    "NewerSchemaError",
    "NoRegistryError",
    "NotFoundError",
    "NotMigratedError",
    "Ref",
    "Registry",
    "RegistryError",
    "RegistryMovedError",
    "RegistryStatus",
    "Resolution",
    "Settings",
    "SharedStoreError",
    "StorageUnavailableError",
    "UsedBy",
    "VersionDiff",
    "blocks_text",
    "diff_compositions",
    "diff_versions",
    "diff_with_spec",
    "higher_is_better",
    "parse_ref",
    "registry_status",
    "shown",
]
