"""The options several commands take alike (``--json``, predict's ``--text``, ``--data``,
``--out``, ...), and reading their values: ``--text -`` from standard input, ``--metric k=v``."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated

import typer

from ..errors import DataError
from ..text_sequences import SpooledTexts
from .output import errors
from .typed_values import not_utf8_byte

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document, for scripts.")]

# What predict commands take: the texts, and whether to skip the golden probes.
TextOption = Annotated[
    list[str] | None,
    typer.Option(
        "--text", help="Input text (repeatable; - reads one text per line from standard input)."
    ),
]
PredictDataOption = Annotated[
    Path | None,
    typer.Option(
        "--data",
        metavar="FILE",
        help="A TSV/CSV/JSON/Parquet file: the texts in the column(s) the spec reads "
        "(data.text, and data.text_pair for pairs).",
    ),
]
PredictionsOutOption = Annotated[
    Path | None,
    typer.Option(
        "--out",
        metavar="FILE",
        help="Write the answers to a .jsonl, .csv or .tsv file, a line per text (and REF), as "
        "they come, instead of printing them: for a --data file of any length.",
    ),
]
ReplaceOption = Annotated[
    bool, typer.Option("--force", help="Replace the --out file if it exists.")
]
TextColumnOption = Annotated[
    str | None,
    typer.Option(
        "--text-column",
        metavar="NAME",
        help="The --data file's column holding the texts, when it is not the one the spec reads "
        "(a version pushed without a spec reads `sentence`).",
    ),
]
LabelColumnOption = Annotated[
    str | None,
    typer.Option(
        "--label-column",
        metavar="NAME",
        help="The --data file's column holding a classifier's labels, when it is not the one "
        "the spec reads (a version pushed without a spec reads `label`).",
    ),
]
SkipProbeOption = Annotated[
    bool,
    typer.Option(
        "--skip-probe", help="Do not re-run the golden probes that catch wrong base weights."
    ),
]
BatchSizeOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="Rows per forward pass (each text takes a row per REF); lower it if memory runs out.",
    ),
]
MaxNewTokensOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Tokens a causal-LM adapter's continuation may take (default 20); it stops "
        "earlier at its end token.",
    ),
]


def input_texts(texts: list[str] | None) -> Sequence[str]:
    """``--text`` values, with ``-`` standing for the lines of standard input (blank lines
    skipped): ``cut -f1 reviews.tsv | adapterops predict NAME --text -``. None given: none.
    Lines from standard input go to a temporary file as they are read (:class:`SpooledTexts`),
    not into a list: a pipe of millions of lines costs 8 bytes a line until predict reads
    them a window at a time."""
    if not texts:
        return []
    for text in texts:
        if text != "-" and not text.strip():  # `--text "$REVIEW"` with the variable unset
            raise DataError(
                f"--text {text!r} is empty (an unset shell variable?): give the text to answer, "
                "or --text - to read one per line from standard input"
            )
    if "-" not in texts:
        return texts
    found = SpooledTexts(_with_standard_input(texts))
    if not found:
        raise DataError("no text to predict: --text - read no line from standard input")
    return found


def _with_standard_input(texts: list[str]) -> Iterator[str]:
    """The ``--text`` values in order, the lines of standard input where ``-`` stands."""
    for text in texts:
        if text == "-":
            if sys.stdin.isatty():  # a person typing, not a pipe: say what ends the input
                errors.print(
                    "reading texts from standard input, one per line: Ctrl-D ends them",
                    style="dim", highlight=False,
                )  # fmt: skip
            for number, line in enumerate(sys.stdin, start=1):
                if line.strip():
                    yield _check_utf8(line.rstrip("\r\n"), f"line {number} of standard input")
        else:
            yield text


def _check_utf8(text: str, where: str) -> str:
    """``text``, when it is UTF-8: Python reads other bytes (a Latin-1 file piped in) as lone
    surrogates, which the tokenizer refused with a TypeError traceback. (A --text value is
    checked with every option's: :mod:`.typed_values`.)"""
    byte = not_utf8_byte(text)
    if byte is not None:
        raise DataError(
            f"{where} is not UTF-8 text (byte {byte:#04x}): convert it to UTF-8 "
            "(`iconv -f latin1 -t utf-8` converts Latin-1)"
        )
    return text


MetricOption = Annotated[
    list[str] | None,
    typer.Option(metavar="KEY=VALUE", help="Metric, e.g. accuracy=0.91 (repeatable)."),
]


def metric_values(pairs: list[str]) -> dict[str, float]:
    """``--metric accuracy=0.91`` options as ``{"accuracy": 0.91}``."""
    metrics = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            metrics[key] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key:
            raise DataError(f"--metric {pair!r}: write key=number, e.g. accuracy=0.91")
    return metrics
