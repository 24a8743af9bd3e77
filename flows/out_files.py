"""A file a command will write (``--out``), checked before the registry opens or a model loads."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DataError

__all__ = ["check_out_file"]


def check_out_file(
    out: Path, suffixes: tuple[str, ...], *, what: str, example: str, replace: bool
) -> None:
    """``out`` ends in one of ``suffixes`` (``what`` says what they hold), is not a folder (then
    ``example`` is a file name to give in it), sits in a folder that exists and this user can
    write, and exists only if ``replace``."""
    if out.suffix.lower() not in suffixes:
        choices = " or ".join(
            [", ".join(suffixes[:-1]), suffixes[-1]] if suffixes[1:] else suffixes
        )
        raise DataError(f"--out {out}: give a {choices} file ({what})")
    if out.is_dir():
        raise DataError(f"--out {out} is a folder: give a file name in it ({out / example})")
    if not out.parent.is_dir():
        raise DataError(f"--out {out}: folder {out.parent} does not exist; create it first")
    if out.exists() and not replace:
        raise DataError(f"--out {out} exists: give --force to replace it, or another file name")
    # a PermissionError would come after the work, as a traceback; the file may be written
    # beside its path and moved onto it, so the folder must take new files too
    for blocked, access in ((out.parent, os.W_OK | os.X_OK), (out, os.W_OK)):
        if blocked.exists() and not os.access(blocked, access):
            raise DataError(f"--out {out}: this user cannot write {blocked}; give a path you can")
