"""The small interface every artifact store implements.

Blobs are addressed by the sha256 of their bytes, so identical bytes are stored once and a blob
never changes. Stores move bytes; verifying downloads against their digest is the caller's job
(:mod:`registry.bundles`), so it happens the same way for every backend. One check is the
store's: a blob stored already is whole before an upload of the same bytes skips it (a damaged
one, found by a download, is replaced by registering its source folder again).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

__all__ = ["MARKERS", "ArtifactStore", "BlobInfo", "BytesMoved", "blob_key", "file_sha256"]

BytesMoved = Callable[[int], None]
"""Told how many more bytes a transfer moved (a progress bar's ``advance``); a file already
stored counts as moved when it is skipped, so the total is always the files' size."""


@dataclass(frozen=True)
class BlobInfo:
    """A stored blob: its digest, size and when it was written."""

    digest: str
    size: int
    modified: datetime


class ArtifactStore(Protocol):
    """Where adapter bytes live."""

    url: str

    def check(self) -> None:
        """Raise :class:`~registry.errors.StorageUnavailableError` when the store cannot be
        used, writing nothing: before long work whose result it will hold."""
        ...

    def has(self, digest: str) -> bool:
        """Whether a blob with this digest is stored."""
        ...

    def size(self, digest: str) -> int | None:
        """The stored blob's size in bytes, in one request; ``None`` when it is not stored."""
        ...

    def put_file(self, digest: str, source: Path, on_bytes: BytesMoved | None = None) -> None:
        """Store ``source``'s bytes under ``digest``: a no-op when a whole copy is stored already
        (its size and checksum those of ``source``), replacing one that is not."""
        ...

    def get_file(self, digest: str, destination: Path, on_bytes: BytesMoved | None = None) -> None:
        """Write the blob to ``destination``."""
        ...

    def read_bytes(self, digest: str) -> bytes:
        """A small blob's bytes (a manifest), in one request and no file; ``FileNotFoundError``
        when absent."""
        ...

    def blobs(self) -> Iterator[BlobInfo]:
        """Every stored blob."""
        ...

    def delete(self, digest: str) -> None:
        """Remove a blob (a no-op when absent)."""
        ...

    def delete_many(self, digests: Sequence[str]) -> None:
        """Remove these blobs (absent ones are no-ops), in as few requests as the store allows:
        gc deletes while every registration waits on its lock."""
        ...

    def uri(self, digest: str) -> str:
        """A URI naming the blob, for records and messages."""
        ...

    def clean_incomplete(self, cutoff: datetime, *, dry_run: bool = False) -> list[str]:
        """Remove uploads a crash left unfinished, started before ``cutoff``; returns their names.

        (A local copy's temporary file, an S3 multipart upload never completed.)
        """
        ...

    def writers(self) -> dict[str, str]:
        """The registries that have written to this store: id -> what their marker says."""
        ...

    def mark_writer(self, registry_id: str, description: str) -> None:
        """Leave the marker saying registry ``registry_id`` writes here (``registries/<id>``)."""
        ...

    def marker_uri(self, registry_id: str) -> str:
        """Where registry ``registry_id``'s marker is, for messages."""
        ...


MARKERS = "registries"  # one small object per registry writing to the store, named by its id


def blob_key(digest: str) -> str:
    """``blobs/sha256/ab/abcdef...``: two-character fan-out keeps folders small."""
    return f"blobs/sha256/{digest[:2]}/{digest}"


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
