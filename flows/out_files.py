"""A file a command will write (``--out``): checked before the registry opens or a model loads,
then written a line per record, appearing only once it is whole."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from registry.folders import filesystem_refusal

from .errors import DataError

__all__ = ["check_out_file", "record_writer", "replaced_when_done"]


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
    refused = filesystem_refusal(out.parent)
    if refused:
        raise DataError(
            f"--out {out}: {out.parent} refuses new files ({refused}); give a path you can write to"
        )


@contextmanager
def replaced_when_done(out: Path) -> Iterator[IO[str]]:
    """A text file to write that becomes ``out`` only when the block ends without an error: it
    is a hidden ``.NAME.partial`` beside ``out`` until then, so a path never holds half a run
    and a run that fails leaves what was there before."""
    partial = out.with_name(f".{out.name}.partial")
    try:
        with partial.open("w", encoding="utf-8", newline="") as file:
            yield file
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)


def record_writer(file: IO[str], suffix: str) -> Callable[[dict[str, Any]], None]:
    """A function writing one record (a dict) as a line of ``file`` in the format ``suffix``
    names: JSON Lines, or CSV/TSV whose header is the first record's keys (every record of a
    file has the same ones; a key a later one lacks is an empty cell). In a table, True and
    False are written as JSON writes them, None as an empty cell, and a list or a mapping (a
    conversation's turns) as its JSON."""
    if suffix == ".jsonl":

        def as_json(record: dict[str, Any]) -> None:
            file.write(json.dumps(record) + "\n")

        return as_json
    table = csv.writer(file, delimiter="\t" if suffix == ".tsv" else ",")
    header: list[str] = []

    def as_cells(record: dict[str, Any]) -> None:
        if not header:
            header.extend(record)
            table.writerow(header)
        table.writerow([_cell(record.get(column)) for column in header])

    return as_cells


def _cell(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else value
