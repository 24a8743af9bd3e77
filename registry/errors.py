"""The registry's error hierarchy.

boto3, botocore and SQLAlchemy exceptions never leave ``registry/``: they are translated here into
these classes, each with a message that says what was given, what was expected and what to do.
"""

from __future__ import annotations

import warnings
from typing import Any

from .redaction import RedactedError

__all__ = [
    "AdapterFolderError",
    "BaseModelMismatchError",
    "CorruptArtifactError",
    "DatabaseUnavailableError",
    "ForeignDatabaseError",
    "InUseError",
    "InvalidCompositionError",
    "InvalidNameError",
    "NewerSchemaError",
    "NoRegistryError",
    "NotFoundError",
    "NotMigratedError",
    "RegistryError",
    "RegistryMovedError",
    "SharedStoreError",
    "StorageUnavailableError",
]


class RegistryError(RedactedError):
    """Base class of every error the registry raises on purpose (messages carry no secret)."""


class NotFoundError(RegistryError, LookupError):
    """No adapter, version, alias or composition matches the reference."""


class NoRegistryError(RegistryError, LookupError):
    """A SQLite registry opened to be read (``Registry(create=False)``) does not exist: nothing
    was registered there, or its path (``ADAPTEROPS_HOME``, ``ADAPTEROPS_REGISTRY_URL``) is not
    the one the versions were registered under."""


class InvalidNameError(RegistryError, ValueError):
    """A name or reference is malformed (``/``, ``..``, empty, too long...)."""


class AdapterFolderError(RegistryError, ValueError):
    """A folder to register is not a complete adapter (missing or extra files, bad metadata), or
    one to write an adapter into cannot be written."""


class BaseModelMismatchError(RegistryError):
    """The adapter was trained on a different base model than the one it is registered under
    (the registry's twin of ``peft_core.BaseModelMismatchError``: the same word, the same
    meaning)."""


class InvalidCompositionError(RegistryError, ValueError):
    """A composition definition is malformed, breaks a nesting rule or does not fit its members."""


class InUseError(RegistryError):
    """A version cannot be deleted: an alias, a composition or a fusion trained over it still
    refers to it."""


class CorruptArtifactError(RegistryError):
    """Downloaded bytes do not match their recorded digest: corrupted or truncated artifact."""


class StorageUnavailableError(RegistryError):
    """The artifact store (S3 endpoint or local folder) cannot be reached or refused access."""


class DatabaseUnavailableError(RegistryError):
    """The registry database cannot be reached."""


class ForeignDatabaseError(RegistryError):
    """The registry URL names another application's database (an Alembic schema that is not
    ours): nothing is migrated into it."""


class SharedStoreError(RegistryError):
    """Garbage collection refused: another registry writes to the same artifact store, and a
    blob this registry does not refer to may be one of its versions'."""


class NotMigratedError(RegistryError):
    """The registry database schema is older than this code: run ``adapterops db upgrade``."""


class NewerSchemaError(RegistryError):
    """The registry database was migrated by a newer release of adapterops than this one: this
    code cannot read its schema (upgrade adapterops here)."""


class RegistryMovedError(RegistryError):
    """The registry was moved to another database (``adapterops db move``), or is being moved:
    this one takes no more writes; the message says where it went."""


# Old names, kept working with a DeprecationWarning: ``IntegrityError`` shadowed SQLAlchemy's, and
# ``BaseModelConflictError`` meant what peft_core calls ``BaseModelMismatchError``.
RENAMED = {
    "IntegrityError": "CorruptArtifactError",
    "BaseModelConflictError": "BaseModelMismatchError",
}


def renamed(module: str, name: str) -> Any:
    """The class an old name stands for, with a DeprecationWarning (modules' ``__getattr__``)."""
    if name not in RENAMED:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    warnings.warn(
        f"{module}.{name} is deprecated; use {module}.{RENAMED[name]}",
        DeprecationWarning,
        stacklevel=3,
    )
    return globals()[RENAMED[name]]


def __getattr__(name: str) -> Any:
    return renamed(__name__, name)
