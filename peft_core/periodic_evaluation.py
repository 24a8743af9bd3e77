"""Validation during training: a loss every N optimiser steps, and the weights of the best.

A run trained for a fixed number of steps can overfit a small data set long before its end.
:class:`PeriodicEvaluation` (``pc.train(..., evaluate=..., evaluate_every=N)``) measures the
validation loss after every N-th step and after the last, so the curve shows where, and with
``keep_best`` puts the trainable weights of the lowest loss back at the end (what the
transformers Trainer calls ``load_best_model_at_end``). Its state (the points so far and the
best weights) travels in the run's checkpoints, so a resumed run keeps the best of the steps
before the crash. Under FSDP2 each process keeps the part of the best weights it holds (its
shards' rows), and checkpoints hold them whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .shards import local_part, local_part_of_whole, whole_from_local_part

__all__ = ["PeriodicEvaluation"]


class PeriodicEvaluation:
    """Calls ``evaluate()`` (the validation loss, lower is better) on ``model`` in eval mode
    after every ``every``-th optimiser step and after the last one; ``keep_best`` keeps a
    copy of the trainable weights of the lowest loss (on the CPU; a sharded model's local
    parts) for :meth:`restore_best`;
    ``patience`` K: :attr:`should_stop` once K evaluations in a row found no lower loss.
    Without ``evaluate`` or ``every`` it does nothing (a run that does not evaluate)."""

    def __init__(
        self,
        model: nn.Module,
        evaluate: Callable[[], float] | None,
        *,
        every: int | None,
        keep_best: bool = False,
        patience: int | None = None,
        on_evaluation: Callable[[int, float], None] | None = None,
    ) -> None:
        self.model = model
        self.evaluate = evaluate
        self.every = every
        self.keep_best = keep_best
        self.patience = patience  # evaluations without a lower loss before training stops
        self.on_evaluation = on_evaluation
        self.points: list[tuple[int, float]] = []  # (optimiser steps done, validation loss)
        self.best_step: int | None = None
        self.best_loss: float | None = None
        self._best_weights: dict[str, Tensor] = {}  # the parts this process holds
        self._kept = False  # the same in every process (they all measured the same losses)

    def after_step(self, done: int, max_steps: int) -> None:
        """Evaluate when ``done`` steps is a multiple of ``every`` or the last step (never
        without ``evaluate`` and ``every``)."""
        if self.evaluate is None or self.every is None:
            return
        if done % self.every and done != max_steps:
            return
        self.model.eval()
        # the random numbers a validation collator draws (masks) are not training's: the run
        # trains as it would without evaluating
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            loss = float(self.evaluate())
        self.model.train()
        self.points.append((done, loss))
        lower = self.best_loss is None or loss < self.best_loss
        if math.isfinite(loss) and lower:  # a NaN never is the best
            self.best_step, self.best_loss = done, loss
            if self.keep_best:
                self._best_weights = {
                    name: local_part(param).detach().cpu().clone()
                    for name, param in self._trainable().items()
                }
                self._kept = True
        if self.on_evaluation is not None:
            self.on_evaluation(done, loss)

    @property
    def should_stop(self) -> bool:
        """``patience`` evaluations in a row found no lower loss than the best (early
        stopping); read again after a resume, from the points the checkpoint kept."""
        if self.patience is None:
            return False
        best = self.best_step or 0
        return sum(step > best for step, _ in self.points) >= self.patience

    def restore_best(self) -> int | None:
        """Put the best weights back into the model (``keep_best``); returns their step, or
        None when nothing was kept."""
        if not self._kept:
            return None
        params = self._trainable()
        with torch.no_grad():
            for name, value in self._best_weights.items():
                local_part(params[name]).copy_(value)
        return self.best_step

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of it: the best weights whole (a collective when the model
        is sharded: every process calls it)."""
        params = self._trainable()
        return {
            "points": list(self.points),
            "best_step": self.best_step,
            "best_loss": self.best_loss,
            "best_weights": {
                name: whole_from_local_part(params[name], part)
                for name, part in self._best_weights.items()
            },
        }

    def load(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's :meth:`state`."""
        self.points = [(int(step), float(loss)) for step, loss in state.get("points", [])]
        self.best_step = state.get("best_step")
        self.best_loss = state.get("best_loss")
        params = self._trainable()
        self._best_weights = {
            name: local_part_of_whole(params[name], whole)
            for name, whole in (state.get("best_weights") or {}).items()
        }
        self._kept = bool(self._best_weights)

    def _trainable(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}
