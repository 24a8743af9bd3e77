"""Each row an evaluation scored, beside the model's answer to it: the file
``adapterops evaluate --out`` writes and every build's MLflow run keeps
(``validation_answers.csv``), so a reviewer reads the rows a version gets wrong."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .data import FILE_ROW
from .evaluation import RowOutcome
from .out_files import record_writer, replaced_when_done
from .spec import AdapterSpec
from .train_job import generates

__all__ = ["answer_records", "write_answers"]


def write_answers(out: Path, records: Iterator[dict[str, Any]]) -> int | None:
    """``records`` as the lines of ``out`` (JSON Lines, CSV or TSV by its suffix), which
    appears only when every line is written; how many say the answer was wrong (``correct``
    or ``exact`` false), or None where no record judges its answer (perplexity alone)."""
    missed: int | None = None
    with replaced_when_done(out) as file:
        write = record_writer(file, out.suffix.lower())
        for record in records:
            verdict = record.get("correct", record.get("exact"))
            if verdict is not None:
                missed = (missed or 0) + (not verdict)
            write(record)
    return missed


def answer_records(
    spec: AdapterSpec, tokenizer: Any, read: Any, outcomes: list[RowOutcome]
) -> Iterator[dict[str, Any]]:
    """Each row scored (``read``, with its ``FILE_ROW``) with the model's answer, in the
    file's order (a ``--max-samples`` subset is drawn shuffled): a classifier's label and
    probability beside the true one, a language model's loss on the row, an instruction
    model's greedy answer beside the response."""
    data, names = spec.data, list(spec.head.label_names or [])

    def named(label: int | None) -> str | None:
        return names[label] if label is not None and 0 <= label < len(names) else None

    in_file_order = sorted(range(len(outcomes)), key=read[FILE_ROW].__getitem__)
    for index in in_file_order:
        row, outcome = read[index], outcomes[index]
        record: dict[str, Any] = {"row": row[FILE_ROW]}
        if data.instructions:
            if data.messages:
                conversation = row[data.messages]
                record["prompt"] = conversation[:-1]  # its turns (a table cell: their JSON)
                record["response"] = conversation[-1]["content"]
            else:
                record |= {"prompt": data.prompt_text(row), "response": row[data.response]}
            if generates(spec):
                answer = outcome.generated
                record["generated"] = (
                    None if answer is None else tokenizer.decode(answer, skip_special_tokens=True)
                )
                record["exact"] = outcome.exact
            record |= {"loss": outcome.loss, "tokens": outcome.tokens}
            yield record
            continue
        record["text"] = row[data.text]
        if data.text_pair:
            record["pair"] = row[data.text_pair]
        if spec.head.type == "classification" and data.label:
            label = int(row[data.label])
            record |= {
                "label": label, "label_name": named(label), "predicted": outcome.predicted,
                "predicted_name": named(outcome.predicted), "probability": outcome.probability,
                "correct": outcome.predicted == label,
            }  # fmt: skip
        else:
            record |= {"loss": outcome.loss, "tokens": outcome.tokens}
        yield record
