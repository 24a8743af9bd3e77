"""``train.eval_every``, ``keep_best`` and ``patience``: the validation loss during a build.

:func:`periodic_evaluation` turns the spec's settings into ``pc.train``'s. Under torchrun each
process scores its share of the validation rows and the loss sums are added up across the
processes, so N processes measure the whole split N times faster than each scoring all of it,
and every process gets the same loss (so patience stops, and keep_best keeps, the same step
everywhere). Under FSDP every forward is a collective (the shards gather each block's weights),
so every process runs as many batches (:mod:`flows.shares`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import datasets
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

import peft_core as pc

from .data import PreparedData, make_loader
from .distributed import Placement, summed
from .evaluation import validation_loss_sum
from .shares import BATCH, filler_forwards, share
from .spec import AdapterSpec

if TYPE_CHECKING:
    from .train_job import TrainReport

__all__ = ["evaluation_line", "evaluation_sample", "outcome_lines", "periodic_evaluation"]


def periodic_evaluation(
    spec: AdapterSpec,
    model: nn.Module,
    *,
    data: PreparedData,
    tokenizer: PreTrainedTokenizerBase,
    where: Placement,
    on_phase: Callable[[str], None],
    on_evaluation: Callable[[int, float], None] | None,
) -> dict[str, Any]:
    """``pc.train``'s periodic-evaluation settings for ``train.eval_every`` (none without it):
    the validation loss on the validation split (``train.eval_rows`` of its rows), said as a
    phase and to ``on_evaluation``."""
    cfg = spec.train
    if cfg.eval_every is None:
        return {}
    rows = data.validation
    if cfg.eval_rows is not None and cfg.eval_rows < len(rows):
        rows = evaluation_sample(rows, cfg.eval_rows, seed=cfg.seed)
    measure = _validation_loss_measure(model, rows, data.head, tokenizer, where, seed=cfg.seed)

    def heard(step: int, loss: float) -> None:  # every process measured the same
        on_phase(evaluation_line(step, loss))
        if on_evaluation is not None and where.is_main:
            on_evaluation(step, loss)

    return {
        "evaluate": measure,
        "evaluate_every": cfg.eval_every,
        "keep_best": cfg.keep_best,
        "patience": cfg.patience,
        "on_evaluation": heard,
    }


def evaluation_sample(rows: datasets.Dataset, size: int, *, seed: int) -> datasets.Dataset:
    """The ``size`` validation rows (``train.eval_rows``) every evaluation during training
    scores: the same in every process and at every evaluation, drawn with ``seed``. (Not
    ``Dataset.shuffle``: on the prepared-data cache it would write an index file there.)"""
    drawn = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:size]
    return rows.select(sorted(drawn.tolist()))


def _validation_loss_measure(
    model: nn.Module,
    rows: datasets.Dataset,
    head: str,
    tokenizer: PreTrainedTokenizerBase,
    where: Placement,
    *,
    seed: int,
) -> Callable[[], float]:
    """A callable measuring ``model``'s loss on ``rows``: this process's share of them,
    summed with the other processes' shares."""
    loader = make_loader(
        share(rows, where, head=head), tokenizer, head=head, batch_size=BATCH, shuffle=False
    )

    def measure() -> float:
        # the same masked-LM masks each time, so the losses compare (pc.train keeps
        # training's random numbers apart)
        torch.manual_seed(seed)
        mine = validation_loss_sum(model, loader, head=head)  # (loss summed, rows)
        filler_forwards(model, rows, tokenizer, head=head, done=len(loader), where=where)
        total, count = summed(list(mine), where)
        return total / max(count, 1)

    return measure


def evaluation_line(step: int, loss: float) -> str:
    """How a validation loss measured during training is said (a phase of the run)."""
    return f"train (validation loss {loss:.4f} after step {step})"


def outcome_lines(
    trained: TrainReport | pc.TrainResult, steps: int, patience: int | None
) -> list[str]:
    """What ``train.patience`` and ``train.keep_best`` did in a run of ``steps``, said once
    training is done: an early stop, and the step whose weights were kept (none when neither
    happened)."""
    lines, done = [], trained.stopped_at or steps
    if trained.stopped_at is not None:
        lines.append(
            f"stop after step {trained.stopped_at} of {steps}: "
            f"{'the last evaluation' if patience == 1 else f'{patience} evaluations in a row'} "
            "found no lower validation loss"
        )
    losses = {int(step): loss for step, loss in trained.evaluations}
    best = trained.best_step
    if best is not None and best in losses:
        lines.append(
            f"the last step had the lowest validation loss ({losses[best]:.4f})"
            if best == done
            else f"keep the weights of step {best} of {done} (the lowest validation loss, "
            f"{losses[best]:.4f})"
        )
    return lines
