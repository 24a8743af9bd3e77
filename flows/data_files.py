"""A data file named on the command line, checked before torch and datasets load: a slip in
``--data`` is one line at once, not after five seconds of imports."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .errors import DataError

__all__ = [
    "DATA_SUFFIXES",
    "NOTHING_TO_PREDICT",
    "check_data_file",
    "check_scoring_sources",
    "check_text_sources",
]

DATA_SUFFIXES = (".tsv", ".csv", ".json", ".jsonl", ".parquet")  # what flows.data reads
NOTHING_TO_PREDICT = "nothing to predict: give --text TEXT (- reads standard input) or --data FILE"


def check_data_file(path: str | Path) -> Path:
    """``path`` as a file of a format the data loader reads, that exists and is not empty."""
    file = Path(path)
    if file.is_dir():
        raise DataError(f"data file {file} is a folder: name a file ({', '.join(DATA_SUFFIXES)})")
    if not file.is_file():
        raise DataError(f"data file {file} does not exist")
    if file.suffix not in DATA_SUFFIXES:
        raise DataError(
            f"{file}: unsupported file type {file.suffix!r}; use {sorted(DATA_SUFFIXES)}"
        )
    if file.stat().st_size == 0:
        raise DataError(f"data file {file} is empty")
    return file


def check_text_sources(
    texts: Sequence[str], data: str | Path | None, text_column: str | None
) -> None:
    """What predict answers comes from ``--text`` (``texts``) or a ``--data`` file, one of the
    two; ``--text-column`` names a column of that file."""
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
    data: str | Path | None, text_column: str | None, label_column: str | None
) -> None:
    """evaluate scores a ``--data`` file (which must be one the loader reads) or the split its
    spec names; ``--text-column`` and ``--label-column`` name columns of that file."""
    if data is not None:
        check_data_file(data)
    elif text_column is not None or label_column is not None:
        raise DataError(
            "--text-column and --label-column name columns of the --data file: give --data FILE"
        )
