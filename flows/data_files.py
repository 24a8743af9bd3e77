"""A data file named on the command line, checked before torch and datasets load: a slip in
``--data`` is one line at once, not after five seconds of imports."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .errors import DataError
from .prediction_files import check_predictions_path

__all__ = [
    "DATA_SUFFIXES",
    "NOTHING_TO_PREDICT",
    "check_data_file",
    "check_scoring_sources",
    "check_spec_data_files",
    "check_text_sources",
    "local_data_path",
]

DATA_SUFFIXES = (".tsv", ".csv", ".json", ".jsonl", ".parquet")  # what flows.data reads
# what a spec's data.train/validation may name as a file (``.txt`` too: refused as a type, below)
SPEC_FILE_SUFFIXES = (*DATA_SUFFIXES, ".txt")
NOTHING_TO_PREDICT = "nothing to predict: give --text TEXT (- reads standard input) or --data FILE"


_ONE_OF_DATA_SUFFIXES = ", ".join(DATA_SUFFIXES[:-1]) + f" or {DATA_SUFFIXES[-1]}"


def check_data_file(path: str | Path) -> Path:
    """``path`` as a file of a format the data loader reads, that exists and is not empty."""
    file = Path(path)
    if file.is_dir():
        raise DataError(f"data file {file} is a folder: name a file ({', '.join(DATA_SUFFIXES)})")
    if not file.is_file():
        raise DataError(f"data file {file} does not exist")
    if file.suffix not in DATA_SUFFIXES:
        # the suffix says how a file is read: name both, not a Python list of them
        kind = f"a {file.suffix} file" if file.suffix else "a file without a suffix"
        raise DataError(f"data file {file} is {kind}: give a {_ONE_OF_DATA_SUFFIXES} file")
    if file.stat().st_size == 0:
        raise DataError(f"data file {file} is empty")
    return file


def check_text_sources(
    texts: Sequence[str], data: str | Path | None, text_column: str | None
) -> None:
    """What predict answers comes from ``--text`` (``texts``) or a ``--data`` file, one of the
    two; ``--text-column`` names a column of that file."""
    _check_column_names({"--text-column": text_column})
    if text_column is not None and data is None:
        raise DataError("--text-column names a column of the --data file: give --data FILE too")
    if data is None:
        if not texts:
            raise DataError(NOTHING_TO_PREDICT)
        return
    if texts:
        raise DataError("give --text or --data, not both")
    check_data_file(data)


def check_scoring_sources(
    data: str | Path | None,
    text_column: str | None,
    label_column: str | None,
    *,
    out: Path | None = None,
    replace: bool = True,
) -> None:
    """evaluate scores a ``--data`` file (which must be one the loader reads) or the split its
    spec names; ``--text-column`` and ``--label-column`` name columns of that file. ``--out``
    (each row scored beside its answer) is a file predict's ``--out`` could write, there only
    if ``replace``."""
    _check_column_names({"--text-column": text_column, "--label-column": label_column})
    if data is not None:
        check_data_file(data)
    elif text_column is not None or label_column is not None:
        raise DataError(
            "--text-column and --label-column name columns of the --data file: give --data FILE"
        )
    if out is not None:
        check_predictions_path(out, replace=replace)


def _check_column_names(columns: dict[str, str | None]) -> None:
    """A column named by a blank string (a script's unset variable) is said as such, not
    looked up: from Python, ``text_column=""`` ended in a KeyError."""
    for option, column in columns.items():
        if column is not None and not column.strip():
            raise DataError(f"{option} {column!r} names no column: give the column's name")


def local_data_path(value: str, base_dir: Path) -> Path | None:
    """The file a spec's ``data.train`` or ``data.validation`` names, relative to the spec's
    folder (``base_dir``), or None where it names a dataset id (``glue``) rather than a file:
    an absolute path, something that exists there, or a name with a data file's suffix."""
    if Path(value).is_absolute():
        return Path(value)
    local = base_dir / value
    if local.exists() or value.endswith(SPEC_FILE_SUFFIXES):
        return local.resolve()
    return None


def check_spec_data_files(document: object, spec_file: Path) -> None:
    """The files a spec document's ``data.train`` and ``data.validation`` name, checked as
    :func:`check_data_file` checks ``--data``: a typo in a path is one line, naming the field,
    before torch loads, not after the spec's checks. Anything else in the document is the spec
    module's to judge."""
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, dict):
        return
    for key in ("train", "validation"):
        value = data.get(key)
        if not isinstance(value, str) or not value.strip():
            continue
        local = local_data_path(value, spec_file.resolve().parent)
        if local is None:  # a dataset id, not a file
            continue
        try:
            check_data_file(local)
        except DataError as exc:
            relative = not Path(value).is_absolute() and not local.exists()
            where = f" ({value!r} is relative to the spec's folder)" if relative else ""
            raise DataError(f"{spec_file}: data.{key}: {exc}{where}") from None
