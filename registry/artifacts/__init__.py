"""Content-addressed artifact storage: a local folder (embedded default) or S3."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from ..errors import StorageUnavailableError
from .base import ArtifactStore, BlobInfo
from .local import LocalStore
from .s3 import S3Store

__all__ = ["ArtifactStore", "BlobInfo", "LocalStore", "S3Store", "open_store"]


def open_store(url: str) -> ArtifactStore:
    """The store for ``file:///path`` (or a plain folder path) or ``s3://bucket/prefix``."""
    scheme = urlparse(url).scheme
    if scheme == "file":
        return LocalStore(url)
    if not scheme and url:  # "/data/adapters", "./artifacts": what people write for a folder
        return LocalStore(Path(url).resolve().as_uri())
    if scheme == "s3":
        return S3Store(url)
    raise StorageUnavailableError(
        f"unsupported artifacts URL {url!r}: use file:///path or s3://bucket/prefix "
        "(ADAPTEROPS_ARTIFACTS_URL)"
    )
