"""Answers written to a file as they come: ``adapterops predict REF --data FILE --out preds.jsonl``.

A file of texts can be far longer than what a terminal table or one JSON document holds, so
``--out`` writes a line per text (and per version, with several) while the model works through
the texts a window at a time. The file appears only once every text is answered: the answers
go to a hidden ``.NAME.partial`` beside it first, so a path never holds half a run, and a run
that fails leaves what was there before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .out_files import check_out_file, record_writer, replaced_when_done

if TYPE_CHECKING:  # the writer needs no torch; predict_job imports it
    from .predict_job import Answers, Prediction

__all__ = ["PREDICTION_FORMATS", "Written", "check_predictions_path", "write_predictions"]

PREDICTION_FORMATS = (".jsonl", ".csv", ".tsv")


@dataclass(frozen=True)
class Written:
    """What :func:`write_predictions` wrote."""

    path: Path
    lines: int  # one per text and version
    refs: list[str]  # the versions answering, in the order they were written

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"out": str(self.path), "lines": self.lines, "refs": self.refs}


def check_predictions_path(out: Path, *, replace: bool) -> None:
    """A file of a known format in a folder this user can write, not one that exists unless
    ``replace``: checked before the registry opens or a model loads."""
    check_out_file(
        out, PREDICTION_FORMATS, what="a line per answer", example="predictions.jsonl",
        replace=replace,
    )  # fmt: skip


def write_predictions(
    out: Path,
    stream: Iterable[Answers],
    *,
    with_pairs: bool = False,
    on_line: Callable[[int], None] | None = None,
) -> Written:
    """Every answer of ``stream`` as a line of ``out`` (with a column of second texts when
    ``with_pairs``, for a classifier of pairs):
    JSON Lines, or CSV/TSV with a header, by its suffix. Each line names the text's row (0 for
    the first text) and the version that answered; ``on_line`` hears the lines written so far
    after each run of answers. An ``out`` that exists is replaced (the CLI asks for --force)."""
    check_predictions_path(out, replace=True)  # a format it writes, in a folder it can write
    lines, refs = 0, []
    with replaced_when_done(out) as file:
        write = _line_writer(file, out.suffix.lower(), with_pairs=with_pairs)
        for ref, first, predictions in stream:
            if ref not in refs:
                refs.append(ref)
            for row, prediction in enumerate(predictions, start=first):
                write(row, ref, prediction)
            lines += len(predictions)
            if on_line is not None:
                on_line(lines)
    return Written(out, lines, refs)


def _line_writer(
    file: IO[str], suffix: str, *, with_pairs: bool
) -> Callable[[int, str, Prediction], None]:
    """A function writing one answer as a line of ``file`` in the format ``suffix`` names."""
    write = record_writer(file, suffix)
    if suffix == ".jsonl":
        return lambda row, ref, prediction: write({"row": row, "ref": ref, **prediction.to_dict()})

    def as_cells(row: int, ref: str, prediction: Prediction) -> None:
        cells = {"row": row, "ref": ref, "text": prediction.text}
        if with_pairs:
            cells["pair"] = prediction.pair
        write(cells | _answer_cells(prediction))

    return as_cells


def _answer_cells(prediction: Prediction) -> dict[str, Any]:
    """The answer's cells: a label with its name and probability (and every label's, as a JSON
    list), the top tokens for a mask (JSON list), or a continuation."""
    if prediction.label is not None:
        return {
            "label": prediction.label,
            "label_name": prediction.label_name,
            "probability": prediction.probabilities[prediction.label],
            "probabilities": prediction.probabilities,  # (a cell holds the list's JSON)
        }
    if prediction.tokens:
        return {"tokens": prediction.tokens}
    return {"continuation": prediction.continuation}
