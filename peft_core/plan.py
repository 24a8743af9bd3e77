"""What an adapter will cost, answered without allocating a single weight.

The model is built on PyTorch's meta device (shapes only), the adapter is injected there, and the
parameters are counted. A 175B-parameter configuration answers in seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
)

from .config import MethodConfig
from .heads import HeadKind
from .inject import add_adapter
from .io import adapter_state_dict

__all__ = ["Plan", "build_on_meta", "measure", "plan"]

_AUTO_CLASSES: dict[str, Any] = {
    "classification": AutoModelForSequenceClassification,
    "masked-lm": AutoModelForMaskedLM,
    "causal-lm": AutoModelForCausalLM,
    "none": AutoModel,
}


@dataclass(frozen=True)
class Plan:
    """Parameter counts and file size of one adapter on one base model."""

    trainable_params: int
    total_params: int
    trainable_fraction: float
    adapter_bytes: int

    def to_dict(self) -> dict[str, int | float]:
        """JSON-ready form (the keys of ``adapterops plan --json``)."""
        return asdict(self)


def build_on_meta(config: PretrainedConfig, head: HeadKind = "none") -> nn.Module:
    """A transformers model of ``config`` with ``head``, on the meta device (no memory used)."""
    with torch.device("meta"):
        model: nn.Module = _AUTO_CLASSES[head].from_config(config)
    return model


def plan(
    model_or_config: nn.Module | PretrainedConfig,
    config: MethodConfig,
    *,
    head: HeadKind | None = None,
) -> Plan:
    """Trainable and total parameters, the trainable fraction and the adapter's bytes on disk.

    Given a model, its class and configuration are rebuilt on the meta device, so the model itself
    is never modified. ``head`` picks the task head when a bare configuration is given.
    """
    if isinstance(model_or_config, PretrainedConfig):
        model = build_on_meta(model_or_config, head or "none")
    else:
        with torch.device("meta"):
            model = type(model_or_config)(model_or_config.config)
    add_adapter(model, "plan", config)
    return measure(model, "plan")


def measure(model: nn.Module, name: str) -> Plan:
    """The costs of adapter ``name`` as it is in ``model`` (trainable now, total, file bytes).

    Unlike :func:`plan` this needs what the adapter needs in the model, e.g. a Fusion's members.
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    saved = adapter_state_dict(model, name)
    size = sum(t.numel() * t.element_size() for t in saved.values())
    return Plan(trainable, total, trainable / total if total else 0.0, size)
