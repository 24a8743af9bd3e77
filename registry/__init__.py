"""The adapter registry: which adapters exist for which base model, task and language.

Records live in SQL (SQLite embedded, PostgreSQL in production), bytes in an artifact store (a local
folder or S3), content-addressed. Start with :class:`Registry`.
"""

from typing import Any

from .client import Registry
from .entities import AdapterVersion, Composition, Event, Resolution
from .errors import (
    AdapterFolderError,
    BaseModelMismatchError,
    CorruptArtifactError,
    DatabaseUnavailableError,
    InUseError,
    InvalidCompositionError,
    InvalidNameError,
    NotFoundError,
    NotMigratedError,
    RegistryError,
    StorageUnavailableError,
    renamed,
)
from .names import Ref, parse_ref
from .settings import Settings


def __getattr__(name: str) -> Any:
    return renamed(__name__, name)


__all__ = [
    "AdapterFolderError",
    "AdapterVersion",
    "BaseModelMismatchError",
    "Composition",
    "CorruptArtifactError",
    "DatabaseUnavailableError",
    "Event",
    "InUseError",
    "InvalidCompositionError",
    "InvalidNameError",
    "NotFoundError",
    "NotMigratedError",
    "Ref",
    "Registry",
    "RegistryError",
    "Resolution",
    "Settings",
    "StorageUnavailableError",
    "parse_ref",
]
