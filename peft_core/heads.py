"""Which part of a transformers model is the task head, and whose head is in use.

A new head (sequence classification) belongs to the adapter: each adapter gets its own copy of the
head (a :class:`HeadSwitch` holds them), trains it and saves it. The model's original head serves
when no adapter with a head is active. A pre-trained head (masked-LM, causal-LM; usually tied to the
input embeddings) is shared and stays frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .offload import onloaded_copy

__all__ = [
    "HeadInfo",
    "HeadKind",
    "HeadSwitch",
    "adapter_head",
    "body_prefix",
    "detect_head",
    "head_state",
    "original_head_state",
]

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


class HeadSwitch(nn.Module):
    """A head with one copy per adapter; ``active`` picks the copy (``None``: the original)."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.original = original
        self.heads = nn.ModuleDict()
        self.active: str | None = None
        self.rows: list[str | None] | None = None  # per-row heads, set by peft_core.per_row

    def forward(self, *args: Tensor, **kwargs: Tensor) -> Tensor:
        if self.rows is not None:
            return self._per_row(self.rows, *args, **kwargs)
        head = self.heads[self.active] if self.active is not None else self.original
        return _in_own_dtype(head, *args, **kwargs)

    def _per_row(self, rows: list[str | None], *args: Tensor, **kwargs: Tensor) -> Tensor:
        """Each row through its adapter's head (heads are small: one pass per distinct head)."""
        out: Tensor = self.original(*args, **kwargs)
        for name in sorted({r for r in rows if r is not None and r in self.heads}):
            mask = torch.tensor([r == name for r in rows], device=out.device)
            mask = mask.reshape(-1, *([1] * (out.dim() - 1)))
            out = torch.where(mask, _in_own_dtype(self.heads[name], *args, **kwargs), out)
        return out

    def add(self, name: str, *, float32: bool = False) -> nn.Module:
        """A new copy of the original head for adapter ``name``; ``float32``: its weights in
        float32 whatever the base's dtype (it trains with the adapter, like the adapter's own
        weights: half-precision AdamW updates vanish)."""
        head = onloaded_copy(self.original)  # (a copy of an offloaded head holds its weights)
        if float32:
            head.float()
        self.heads[name] = head
        return head


def _in_own_dtype(head: nn.Module, *args: Tensor, **kwargs: Tensor) -> Tensor:
    """``head``'s output, its floating inputs cast to its weights' dtype first (a float32 head
    on a bf16 body; its logits stay float32, which the loss prefers)."""
    weight = next(head.parameters(), None)
    if weight is not None:

        def cast(value: Any) -> Any:  # .to() of the same dtype is free: returns the tensor
            floating = isinstance(value, Tensor) and value.is_floating_point()
            return value.to(weight.dtype) if floating else value

        args = tuple(cast(a) for a in args)
        kwargs = {key: cast(value) for key, value in kwargs.items()}
    out: Tensor = head(*args, **kwargs)
    return out


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


def adapter_head(model: nn.Module, module_name: str, name: str) -> nn.Module:
    """Adapter ``name``'s copy of head module ``module_name``."""
    switch = model.get_submodule(module_name)
    assert isinstance(switch, HeadSwitch), f"{module_name} holds no per-adapter heads"
    return switch.heads[name]


def head_state(model: nn.Module, head: HeadInfo, name: str) -> dict[str, Tensor]:
    """Adapter ``name``'s head tensors under the plain model's names (``classifier.weight``)."""
    if not head.trainable:
        return {}
    return {
        f"{module_name}.{key}": value
        for module_name in head.modules
        for key, value in adapter_head(model, module_name, name).state_dict().items()
    }


def original_head_state(model: nn.Module, head: HeadInfo) -> dict[str, Tensor]:
    """The model's own head tensors: what a saved head is checked against before loading."""
    if not head.trainable:
        return {}
    state = {}
    for module_name in head.modules:
        module = model.get_submodule(module_name)
        original = module.original if isinstance(module, HeadSwitch) else module
        for key, value in original.state_dict().items():
            state[f"{module_name}.{key}"] = value
    return state
