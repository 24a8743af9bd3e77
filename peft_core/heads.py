"""Which part of a transformers model is the task head, and whether it trains.

A new head (sequence classification) is part of the adapter: it trains and is saved with it. A
pre-trained head (masked-LM, causal-LM; usually tied to the input embeddings) stays frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

__all__ = ["HeadInfo", "HeadKind", "body_prefix", "detect_head"]

HeadKind = Literal["classification", "masked-lm", "causal-lm", "none"]

_SUFFIXES: tuple[tuple[str, HeadKind], ...] = (
    ("ForSequenceClassification", "classification"),
    ("ForMaskedLM", "masked-lm"),
    ("ForCausalLM", "causal-lm"),
    ("LMHeadModel", "causal-lm"),
)


@dataclass(frozen=True)
class HeadInfo:
    """The head's kind, its top-level module names, and whether it trains with the adapter."""

    kind: HeadKind
    modules: tuple[str, ...]
    trainable: bool


def body_prefix(model: nn.Module) -> str:
    """The attribute holding the model body (``"bert"``, ``"transformer"``), or ``""`` if none."""
    prefix = getattr(model, "base_model_prefix", "")
    return prefix if prefix and isinstance(getattr(model, prefix, None), nn.Module) else ""


def detect_head(model: nn.Module) -> HeadInfo:
    """Classify ``model``'s head by its transformers class name."""
    class_name = type(model).__name__
    kind: HeadKind = next((k for suffix, k in _SUFFIXES if class_name.endswith(suffix)), "none")
    prefix = body_prefix(model)
    modules = tuple(
        name
        for name, child in model.named_children()
        if prefix and name != prefix and any(True for _ in child.parameters())
    )
    return HeadInfo(kind=kind, modules=modules, trainable=kind == "classification")
