"""The registry's error hierarchy.

boto3, botocore and SQLAlchemy exceptions never leave ``registry/``: they are translated here into
these classes, each with a message that says what was given, what was expected and what to do.
"""

from __future__ import annotations

__all__ = [
    "AdapterFolderError",
    "BaseModelConflictError",
    "DatabaseUnavailableError",
    "InUseError",
    "IntegrityError",
    "InvalidNameError",
    "NotFoundError",
    "NotMigratedError",
    "RegistryError",
    "StorageUnavailableError",
]


class RegistryError(Exception):
    """Base class of every error the registry raises on purpose."""


class NotFoundError(RegistryError, LookupError):
    """No adapter, version, alias or composition matches the reference."""


class InvalidNameError(RegistryError, ValueError):
    """A name or reference is malformed (``/``, ``..``, empty, too long...)."""


class AdapterFolderError(RegistryError, ValueError):
    """A folder to register is not a complete adapter (missing or extra files, bad metadata)."""


class BaseModelConflictError(RegistryError):
    """The adapter was trained on a different base model than the one it is registered under."""


class InUseError(RegistryError):
    """A version cannot be deleted: an alias or a composition still refers to it."""


class IntegrityError(RegistryError):
    """Downloaded bytes do not match their recorded digest: corrupted or truncated artifact."""


class StorageUnavailableError(RegistryError):
    """The artifact store (S3 endpoint or local folder) cannot be reached or refused access."""


class DatabaseUnavailableError(RegistryError):
    """The registry database cannot be reached."""


class NotMigratedError(RegistryError):
    """The registry database schema is older than this code: run ``adapterops db upgrade``."""
