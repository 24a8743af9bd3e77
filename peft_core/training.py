"""A small, explicit training loop for adapters (AdamW, linear warm-up and decay).

Only parameters with ``requires_grad`` are optimised, so after ``add_adapter`` this trains the
adapter (and a new head) and nothing else. The flows add data preparation, checkpoints, devices and
tracking around it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers import get_linear_schedule_with_warmup

__all__ = ["TrainResult", "train"]

Batch = Mapping[str, Tensor]


@dataclass
class TrainResult:
    """Loss, learning rate and wall time of every optimiser step."""

    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)

    @property
    def median_step_seconds(self) -> float:
        """Median step time (robust to the slow first steps)."""
        ordered = sorted(self.step_seconds)
        return ordered[len(ordered) // 2] if ordered else 0.0


def train(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    max_steps: int,
    learning_rate: float,
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.06,
    max_grad_norm: float = 1.0,
    gradient_accumulation_steps: int = 1,
    on_step: Callable[[int, float, float], None] | None = None,
) -> TrainResult:
    """Train ``model`` for ``max_steps`` optimiser steps over ``batches`` (cycled if shorter).

    Each batch is a mapping of model inputs including ``labels``; the model returns the loss.
    With ``gradient_accumulation_steps`` = k, each optimiser step averages the gradients of k
    batches. Batches move to the model's device. ``on_step(step, loss, learning_rate)`` is called
    after every optimiser step.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad (add an adapter first)")
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * max_steps), max_steps)
    device = params[0].device
    result = TrainResult()
    stream = _cycle(batches)
    model.train()
    for step in range(max_steps):
        started = time.perf_counter()
        step_loss = 0.0
        for _ in range(gradient_accumulation_steps):
            batch = {k: v.to(device) for k, v in next(stream).items()}
            loss = model(**batch).loss / gradient_accumulation_steps
            loss.backward()
            step_loss += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        learning_rate_used = float(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(step_loss)
        result.learning_rates.append(learning_rate_used)
        result.step_seconds.append(time.perf_counter() - started)
        if on_step is not None:
            on_step(step, step_loss, learning_rate_used)
    model.eval()
    return result


def _cycle(batches: Iterable[Batch]) -> Iterator[Batch]:
    while True:
        produced = False
        for batch in batches:
            produced = True
            yield batch
        if not produced:
            raise ValueError("no training batches: the data set is empty")
