"""Artifacts in a local folder: the embedded default."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import StorageUnavailableError
from ..folders import filesystem_refusal
from .base import MARKERS, BlobInfo, BytesMoved, blob_key, file_sha256

__all__ = ["LocalStore"]


INCOMING = ".incoming-"  # a blob being copied in; renamed into place when complete


class LocalStore:
    """Blobs under ``<root>/blobs/sha256/``; writes are atomic (temporary file, then rename)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.root = Path(unquote(urlparse(url).path))
        if self.root.exists() and not self.root.is_dir():
            raise StorageUnavailableError(
                f"cannot use artifact folder {self.root}: it is a file; ADAPTEROPS_ARTIFACTS_URL "
                "names the folder the registry's files go in (file:///path or a folder path), "
                "or s3://bucket/prefix"
            )
        # made by the first write, not here: a reading command given a mistyped folder left an
        # empty one behind. Whether it could be made is checked now, before any work.
        existing = next(p for p in (self.root, *self.root.parents) if p.exists())
        if not existing.is_dir():
            raise StorageUnavailableError(
                f"cannot use artifact folder {self.root}: {existing} is a file"
            )
        if existing != self.root and not os.access(existing, os.W_OK | os.X_OK):
            raise StorageUnavailableError(
                f"cannot use artifact folder {self.root}: this user cannot make it in {existing}"
            )
        refused = filesystem_refusal(existing) if existing != self.root else None
        if refused:  # the permission bits allow what the filesystem refuses (/proc, NFS root)
            raise StorageUnavailableError(
                f"cannot use artifact folder {self.root}: {existing} refuses new folders "
                f"({refused}); point ADAPTEROPS_ARTIFACTS_URL at a folder you can write to"
            )

    def check(self) -> None:
        """Nothing more to ask: opening it checked that the folder is or can be made."""

    def _path(self, digest: str) -> Path:
        return self.root / blob_key(digest)

    def has(self, digest: str) -> bool:
        return self._path(digest).is_file()

    def size(self, digest: str) -> int | None:
        path = self._path(digest)
        return path.stat().st_size if path.is_file() else None

    def put_file(self, digest: str, source: Path, on_bytes: BytesMoved | None = None) -> None:
        target = self._path(digest)
        if target.is_file() and file_sha256(target) == digest:  # a damaged copy is replaced
            if on_bytes is not None:
                on_bytes(source.stat().st_size)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        # created by open(), not mkstemp (always 0600): a registry folder shared by a team,
        # or by the stack's worker under another user, is readable as the umask allows
        temporary = target.parent / f"{INCOMING}{uuid.uuid4().hex}"
        try:
            _copy(source, temporary, on_bytes)
            os.replace(temporary, target)  # over a damaged copy too: the rename is atomic
        finally:
            temporary.unlink(missing_ok=True)

    def get_file(self, digest: str, destination: Path, on_bytes: BytesMoved | None = None) -> None:
        source = self._path(digest)
        if not source.is_file():
            raise FileNotFoundError(self.uri(digest))
        _copy(source, destination, on_bytes)

    def read_bytes(self, digest: str) -> bytes:
        source = self._path(digest)
        if not source.is_file():
            raise FileNotFoundError(self.uri(digest))
        return source.read_bytes()

    def blobs(self) -> Iterator[BlobInfo]:
        for path in (self.root / "blobs" / "sha256").glob("*/*"):
            if path.name.startswith("."):
                continue
            stat = path.stat()
            yield BlobInfo(path.name, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))

    def delete(self, digest: str) -> None:
        self._path(digest).unlink(missing_ok=True)

    def delete_many(self, digests: Sequence[str]) -> None:
        for digest in digests:  # one unlink each: a folder has no batch delete
            self.delete(digest)

    def clean_incomplete(self, cutoff: datetime, *, dry_run: bool = False) -> list[str]:
        stale = [
            path
            for path in (self.root / "blobs" / "sha256").glob(f"*/{INCOMING}*")
            if datetime.fromtimestamp(path.stat().st_mtime, UTC) <= cutoff
        ]
        if not dry_run:
            for path in stale:
                path.unlink(missing_ok=True)
        return [str(path.relative_to(self.root)) for path in stale]

    def uri(self, digest: str) -> str:
        return f"{self.url}/{blob_key(digest)}"

    def writers(self) -> dict[str, str]:
        folder = self.root / MARKERS
        if not folder.is_dir():
            return {}
        return {path.name: path.read_text() for path in folder.iterdir() if path.is_file()}

    def mark_writer(self, registry_id: str, description: str) -> None:
        (self.root / MARKERS).mkdir(parents=True, exist_ok=True)
        (self.root / MARKERS / registry_id).write_text(description)

    def marker_uri(self, registry_id: str) -> str:
        return f"{self.url}/{MARKERS}/{registry_id}"


_CHUNK = 8 * 1024 * 1024


def _copy(source: Path, target: Path, on_bytes: BytesMoved | None) -> None:
    """``shutil.copyfile``, telling ``on_bytes`` as it goes (in 8 MiB chunks)."""
    if on_bytes is None:
        shutil.copyfile(source, target)
        return
    with source.open("rb") as reading, target.open("wb") as writing:
        while chunk := reading.read(_CHUNK):
            writing.write(chunk)
            on_bytes(len(chunk))
