"""The adapter registry: which adapters exist for which base model, task and language.

Records live in SQL (SQLite embedded, PostgreSQL in production), bytes in an artifact store (a local
folder or S3), content-addressed. Start with :class:`Registry`.
"""

from .client import Registry
from .entities import AdapterVersion, Composition, Event, Resolution
from .errors import (
    AdapterFolderError,
    BaseModelConflictError,
    DatabaseUnavailableError,
    IntegrityError,
    InUseError,
    InvalidNameError,
    NotFoundError,
    NotMigratedError,
    RegistryError,
    StorageUnavailableError,
)
from .names import Ref, parse_ref
from .settings import Settings

__all__ = [
    "AdapterFolderError",
    "AdapterVersion",
    "BaseModelConflictError",
    "Composition",
    "DatabaseUnavailableError",
    "Event",
    "InUseError",
    "IntegrityError",
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
