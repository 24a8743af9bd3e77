"""Train one adapter from a spec, evaluate it and save it: the job behind ``adapterops train``.

Plain functions, no Prefect: the flows wrap them, the CLI and the tests call them directly.
Everything a user can get wrong (spec, base model, data) is checked before training starts.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

import peft_core as pc

from .data import make_loader, prepare
from .evaluation import evaluate
from .models import resolve_base_model
from .spec import AdapterSpec

if TYPE_CHECKING:
    from registry import Registry

__all__ = ["TrainReport", "evaluate_registered", "load_base_model", "train_from_spec"]

_AUTO = {
    "classification": AutoModelForSequenceClassification,
    "masked-lm": AutoModelForMaskedLM,
    "causal-lm": AutoModelForCausalLM,
}


@dataclass
class TrainReport:
    """What one training run produced, for people (tables) and scripts (``--json``)."""

    name: str
    method: str
    trainable_params: int
    total_params: int
    adapter_bytes: int
    steps: int
    train_seconds: float
    median_step_seconds: float
    final_loss: float
    metrics: dict[str, Any]
    output: str
    losses: list[float] = field(default_factory=list, repr=False)
    learning_rates: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (without the per-step curves)."""
        data = asdict(self)
        del data["losses"], data["learning_rates"]
        return data


def load_base_model(spec: AdapterSpec) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The spec's base model with its head, and its tokenizer (from local files only)."""
    path = resolve_base_model(spec.base_model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # GPT-2 and Llama tokenizers ship without one
        tokenizer.pad_token = tokenizer.eos_token
    options: dict[str, Any] = {}
    if spec.head.type == "classification":
        options["num_labels"] = spec.head.num_labels
    model = _AUTO[spec.head.type].from_pretrained(path, **options)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def train_from_spec(
    spec: AdapterSpec,
    output: str | Path,
    *,
    on_step: Callable[[int, int, float, float], None] | None = None,
) -> TrainReport:
    """Train, evaluate and save ``spec``'s adapter into ``output``; returns the report.

    ``on_step(step, total_steps, loss, learning_rate)`` is called after every optimiser step
    (progress bars, experiment tracking).
    """
    torch.manual_seed(spec.train.seed)
    resolve_base_model(spec.base_model)  # an unknown base model fails before the data is read
    model, tokenizer = load_base_model(spec)
    data = prepare(spec, tokenizer)
    config = spec.method.to_config()
    pc.add_adapter(model, spec.name, config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    cfg = spec.train
    train_loader = make_loader(
        data.train,
        tokenizer,
        head=data.head,
        batch_size=cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
    )
    per_epoch = math.ceil(len(train_loader) / cfg.gradient_accumulation_steps)
    steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
    started = time.perf_counter()
    result = pc.train(
        model,
        train_loader,
        max_steps=steps,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        on_step=(lambda step, loss, lr: on_step(step, steps, loss, lr)) if on_step else None,
    )
    seconds = time.perf_counter() - started
    eval_loader = make_loader(
        data.validation, tokenizer, head=data.head, batch_size=64, shuffle=False
    )
    metrics = evaluate(model, eval_loader, head=data.head)
    folder = pc.save_adapter(model, spec.name, output, tokenizer=tokenizer)
    costs = pc.plan(model, config)
    report = TrainReport(
        name=spec.name,
        method=config.type,
        trainable_params=costs.trainable_params,
        total_params=costs.total_params,
        adapter_bytes=costs.adapter_bytes,
        steps=steps,
        train_seconds=seconds,
        median_step_seconds=result.median_step_seconds,
        final_loss=result.losses[-1],
        metrics=metrics,
        output=str(folder),
        losses=result.losses,
        learning_rates=result.learning_rates,
    )
    (folder / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def evaluate_registered(spec: AdapterSpec, ref: str, registry: Registry) -> dict[str, Any]:
    """Metrics of registry version ``ref`` on ``spec``'s validation split (the gate's fair test)."""
    model, tokenizer = load_base_model(spec)
    version = registry.load_into(model, ref)
    pc.set_active(model, version.name)
    validation = prepare(spec, tokenizer).validation
    loader = make_loader(validation, tokenizer, head=spec.head.type, batch_size=64, shuffle=False)
    return evaluate(model, loader, head=spec.head.type)
