"""Folders a command will write into: made for a block and removed again if it fails, and
checked before any work. Light (no boto3, no SQLAlchemy): the CLI checks a destination before
it loads the registry's client or torch."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import AdapterFolderError

__all__ = ["check_folder_to_write", "filesystem_refusal", "new_folders"]


@contextlib.contextmanager
def new_folders(folder: Path) -> Iterator[Path]:
    """Make ``folder`` and its missing parents for the block; if the block fails, remove the
    ones made here again (those left empty), so a refused write leaves no empty folder."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for each in made:  # deepest first
            with contextlib.suppress(OSError):
                each.rmdir()
        raise


def check_folder_to_write(folder: str | Path, action: str) -> None:
    """Refuse, before any work, a ``folder`` that cannot become one to write files into: a file,
    a path through a file, or under a folder this user cannot write to. ``action`` says what
    would have been written (``"download x@1"``)."""
    path = Path(folder)
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        where = "it is a file" if existing == path else f"{existing} is a file"
        raise AdapterFolderError(
            f"cannot {action} into {path}: {where}; give a folder (new or existing) to write "
            "the adapter's files into"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AdapterFolderError(
            f"cannot {action} into {path}: this user cannot write in {existing}; give a folder "
            "you can write to"
        )
    refused = filesystem_refusal(existing)
    if refused:
        raise AdapterFolderError(
            f"cannot {action} into {path}: {existing} refuses new folders ({refused}); "
            "give a folder you can write to"
        )


def filesystem_refusal(folder: Path) -> str | None:
    """Why the filesystem refuses a new entry in ``folder`` (its error), or None when it takes
    one: the permission bits can allow what it refuses (/proc, /sys, root on NFS). Probed with
    a temporary file, removed at once."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".adapterops-can-write-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
