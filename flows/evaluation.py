"""Evaluation metrics: accuracy and macro-F1 for classification, perplexity for language models,
and exact match of greedy generations for instruction data (the response must come out token for
token, its end-of-sequence included)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peft_core.offload import input_device

__all__ = [
    "EvaluationProgress",
    "RowOutcome",
    "RowsCallback",
    "confusion_matrix",
    "counted_rows",
    "evaluate",
    "exact_match",
    "greedy_continuations",
    "language_model_metrics",
    "metrics_from_confusion",
    "on_device",
    "validation_loss",
    "validation_loss_sum",
    "with_answers",
]


def confusion_matrix(predictions: Tensor, labels: Tensor, num_labels: int) -> Tensor:
    """``matrix[true, predicted]`` counts."""
    index = labels.long() * num_labels + predictions.long()
    return torch.bincount(index, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def metrics_from_confusion(matrix: Tensor) -> dict[str, float]:
    """Accuracy and macro-averaged F1 (classes absent from both labels and predictions skipped)."""
    matrix = matrix.double()
    true_positive = matrix.diag()
    predicted = matrix.sum(0)
    actual = matrix.sum(1)
    present = (predicted + actual) > 0
    f1 = 2 * true_positive / (predicted + actual).clamp(min=1)
    return {
        "accuracy": float(true_positive.sum() / matrix.sum().clamp(min=1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
    }


RowsCallback = Callable[[str, int], None]  # ("score" or "generate", rows done in that pass)
# what a person watching hears: ("rows scored" or "answers generated", done, total)
EvaluationProgress = Callable[[str, int, int], None]


def counted_rows(
    progress: EvaluationProgress | None, total: int, *, whose: str = ""
) -> RowsCallback | None:
    """:func:`evaluate`'s per-batch ``on_rows`` turned into ``progress`` calls out of
    ``total`` rows (``whose``: said after what is counted, e.g. a process's share); None
    when nobody watches."""
    if progress is None:
        return None

    def tell(step: str, done: int) -> None:
        progress(("rows scored" if step == "score" else "answers generated") + whose, done, total)

    return tell


@dataclass
class RowOutcome:
    """How the model did on one scored row: what a reviewer reads beside the row's text to see
    which examples it gets wrong. A field stays None where the row's head does not produce it."""

    predicted: int | None = None  # a classifier's label
    probability: float | None = None  # ... and its probability
    loss: float | None = None  # a language model's mean loss over the row's scored tokens
    tokens: int | None = None  # ... and how many tokens that is (0: none scored)
    generated: list[int] | None = None  # instructions: the greedy answer's token ids
    exact: bool | None = None  # ... and whether it reproduced the response exactly


def evaluate(
    model: nn.Module,
    batches: Iterable[Mapping[str, Tensor]],
    *,
    head: str,
    pad_token_id: int | None = None,
    on_rows: RowsCallback | None = None,
    outcomes: list[RowOutcome] | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` over ``batches`` (which carry ``labels``). With ``pad_token_id``
    (instruction data) a causal LM also generates each response: ``exact_match``.
    ``on_rows`` hears after each batch how many rows that pass has done: ``("score", 128)``,
    then ``("generate", 64)`` while generating. ``outcomes``, when given (empty), receives each
    row's :class:`RowOutcome`, in the order of the rows."""
    model.eval()
    tell = on_rows or _nobody
    if head == "classification":
        return _classification(model, batches, tell, outcomes)
    metrics = _language_model(model, batches, tell, causal=head == "causal-lm", outcomes=outcomes)
    if pad_token_id is not None:
        generated: list[RowOutcome] | None = [] if outcomes is not None else None
        metrics |= exact_match(
            model, batches, pad_token_id=pad_token_id, on_rows=tell, outcomes=generated
        )
        with_answers(outcomes, generated)
    return metrics


def with_answers(outcomes: list[RowOutcome] | None, answers: list[RowOutcome] | None) -> None:
    """Each row's generated answer (:func:`exact_match`'s ``answers``) put into its scored
    outcome (both in the same row order; nothing when either was not asked for)."""
    for outcome, answer in zip(outcomes or [], answers or [], strict=True):
        outcome.generated, outcome.exact = answer.generated, answer.exact


@torch.no_grad()
def validation_loss(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]], *, head: str
) -> float:
    """The model's own loss over ``batches``: a classifier's mean over rows, a language
    model's mean over its scored tokens (what training minimises; lower is better), whatever
    the batching. What ``train.eval_every`` records during training."""
    total, count = validation_loss_sum(model, batches, head=head)
    return total / max(count, 1)


def validation_loss_sum(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]], *, head: str
) -> tuple[float, int]:
    """The model's loss summed over ``batches``, and what it is summed over (a classifier's
    rows, a language model's scored tokens): the sums of shares of a split add up to the
    whole split's, so processes scoring a share each can add theirs up."""
    if head != "classification":
        scored = _language_model(model, batches, _nobody, causal=head == "causal-lm")
        return float(scored["eval_loss"]) * scored["tokens"], int(scored["tokens"])
    total, rows = 0.0, 0
    for batch in on_device(model, batches):
        total += float(model(**batch).loss) * len(batch["labels"])
        rows += len(batch["labels"])
    return total, rows


def _nobody(_: str, __: int) -> None:
    """The rows callback when nobody listens."""


@torch.no_grad()
def exact_match(
    model: nn.Module,
    batches: Iterable[Mapping[str, Tensor]],
    *,
    pad_token_id: int,
    on_rows: RowsCallback | None = None,
    outcomes: list[RowOutcome] | None = None,
    in_step: bool = False,
) -> dict[str, Any]:
    """The share of rows whose greedy continuation of the prompt (the tokens labelled -100
    before the response) reproduces the response (the labelled tokens) exactly. ``outcomes``,
    when given, receives each row's answer (its tokens up to the response's length) and whether
    it was exact; a row with no response left after truncation gets an empty outcome.

    ``in_step``: the processes of an FSDP-sharded model generate together (every forward is a
    collective): each generation runs until every process's is done, and a batch with no
    response still generates a token, so every process runs as many forwards as its peers."""
    hits = rows = done = 0
    for batch in on_device(model, batches):
        done += len(batch["input_ids"])
        prompts, answers, answered = _prompts_and_answers(batch)
        generated = []
        if prompts:
            most = max(len(a) for a in answers)
            generated = greedy_continuations(model, prompts, most, pad_token_id, in_step=in_step)
            for out, answer in zip(generated, answers, strict=True):
                hits += int(torch.equal(out[: len(answer)], answer))
                rows += 1
        elif in_step:  # uncounted: its peers' batches generate
            greedy_continuations(model, [batch["input_ids"][0]], 1, pad_token_id, in_step=True)
        if outcomes is not None:
            outcomes += _answer_outcomes(answered, zip(generated, answers, strict=True))
        if on_rows is not None:
            on_rows("generate", done)
    return {"exact_match": hits / max(rows, 1), "generated": rows}


def _prompts_and_answers(
    batch: Mapping[str, Tensor],
) -> tuple[list[Tensor], list[Tensor], list[bool]]:
    """A batch's prompts and responses (without padding) of the rows with a response left
    after truncation, and for every row whether it has one."""
    prompts, answers, answered = [], [], []
    for row_ids, mask, row_labels in zip(
        batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True
    ):
        ids, labels = row_ids[mask.bool()], row_labels[mask.bool()]
        scored = (labels != -100).nonzero()
        answered.append(len(scored) > 0)
        if len(scored) == 0:
            continue
        start = int(scored[0])
        prompts.append(ids[:start])
        answers.append(ids[start:][labels[start:] != -100])
    return prompts, answers, answered


def _answer_outcomes(
    answered: list[bool], pairs: Iterable[tuple[Tensor, Tensor]]
) -> list[RowOutcome]:
    """Each row's :class:`RowOutcome`: its answer and whether it was exact (empty for a row
    with no response), from the (generated, response) pairs of the rows that have one."""
    outcomes, remaining = [], iter(pairs)
    for has_answer in answered:
        if not has_answer:
            outcomes.append(RowOutcome())
            continue
        out, answer = next(remaining)
        kept = out[: len(answer)]
        outcomes.append(RowOutcome(generated=kept.tolist(), exact=bool(torch.equal(kept, answer))))
    return outcomes


def greedy_continuations(
    model: nn.Module, prompts: list[Tensor], new_tokens: int, pad: int, *, in_step: bool = False
) -> list[Tensor]:
    """Greedy continuations of ``prompts`` (1-D ids on the model's input device), left-padded
    into one batch: each row ends where generation reads, so it continues as it would alone.
    The new tokens only; a row that ended early is padded with ``pad``. ``in_step``: the
    processes of a sharded model generate together, until the last of them is done."""
    width = max(len(p) for p in prompts)
    ids = torch.stack([F.pad(p, (width - len(p), 0), value=pad) for p in prompts])
    mask = torch.stack([F.pad(torch.ones_like(p), (width - len(p), 0), value=0) for p in prompts])
    out = model.generate(  # type: ignore[operator]
        input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=0,
        do_sample=False, pad_token_id=pad, synced_gpus=in_step,
    )  # fmt: skip
    return list(out[:, width:])


@torch.no_grad()
def _classification(
    model: nn.Module,
    batches: Iterable[Mapping[str, Tensor]],
    on_rows: RowsCallback,
    outcomes: list[RowOutcome] | None,
) -> dict[str, Any]:
    config: Any = model.config  # a transformers model's
    num_labels = int(config.num_labels)
    matrix = torch.zeros(num_labels, num_labels, dtype=torch.long)
    for batch in on_device(model, batches):
        logits = model(**batch).logits
        predictions = logits.argmax(-1)
        matrix += confusion_matrix(predictions.cpu(), batch["labels"].cpu(), num_labels)
        if outcomes is not None:
            chances = logits.float().softmax(-1).max(-1).values
            outcomes.extend(
                RowOutcome(predicted=label, probability=chance)
                for label, chance in zip(predictions.tolist(), chances.tolist(), strict=True)
            )
        on_rows("score", int(matrix.sum()))
    return {
        **metrics_from_confusion(matrix),
        "confusion_matrix": matrix.tolist(),
        "examples": int(matrix.sum()),
    }


@torch.no_grad()
def _language_model(
    model: nn.Module,
    batches: Iterable[Mapping[str, Tensor]],
    on_rows: RowsCallback,
    *,
    causal: bool,
    outcomes: list[RowOutcome] | None = None,
) -> dict[str, Any]:
    """The mean loss over every scored token: each batch's mean loss weighted by the tokens it
    averages, so the result does not depend on how rows are batched. ``outcomes``, when given,
    receives each row's own mean loss and token count."""
    total_loss, total_tokens, done = 0.0, 0, 0
    for batch in on_device(model, batches):
        # a causal LM predicts each token from those before it: a row's first is never scored
        scored = batch["labels"][:, 1:] if causal else batch["labels"]
        tokens = int((scored != -100).sum())
        output = model(**batch)
        if tokens:  # a batch of rows truncated before their response has a loss of NaN
            total_loss += float(output.loss) * tokens
            total_tokens += tokens
        done += len(batch["labels"])
        if outcomes is not None:
            outcomes.extend(_row_losses(output.logits, batch["labels"], causal=causal))
        on_rows("score", done)
    return language_model_metrics(total_loss, total_tokens)


def language_model_metrics(loss_sum: float, tokens: int) -> dict[str, Any]:
    """A language model's metrics from its loss summed over ``tokens`` scored tokens."""
    mean = loss_sum / max(tokens, 1)
    return {"perplexity": math.exp(min(mean, 50.0)), "eval_loss": mean, "tokens": tokens}


def _row_losses(logits: Tensor, labels: Tensor, *, causal: bool) -> list[RowOutcome]:
    """Each row's mean cross-entropy over its scored tokens (the model's own loss, per row).
    A row at a time: a float32 copy of a whole batch's logits over a 128k vocabulary is
    gigabytes."""
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    outcomes = []
    for row_logits, row_labels in zip(logits, labels, strict=True):
        count = int((row_labels != -100).sum())
        total = F.cross_entropy(row_logits.float(), row_labels, ignore_index=-100, reduction="sum")
        outcomes.append(RowOutcome(loss=float(total) / count if count else None, tokens=count))
    return outcomes


def on_device(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]]
) -> Iterator[dict[str, Tensor]]:
    """``batches`` on the device of ``model``'s inputs."""
    device = input_device(model)  # (an offloaded first layer's weights wait on meta)
    for batch in batches:
        yield {k: v.to(device) for k, v in batch.items()}
