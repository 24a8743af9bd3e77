"""What peft_core remembers about the adapters inside one model.

The record lives on the model object itself (``model.peft_core_adapters``), so a model carries its
adapters' configurations wherever it goes; the weights live in the injected modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from torch import nn

from .errors import AdapterNotFoundError
from .heads import HeadInfo, HeadSwitch
from .layer import AdaptedLayer
from .methods.base import MethodConfig
from .roles import Target

__all__ = ["AdapterRecord", "adapter_layers", "adapter_records", "check_model", "get_record"]

_ATTRIBUTE = "peft_core_adapters"


@dataclass
class AdapterRecord:
    """One adapter in a model: its method, where it sits, and its head."""

    name: str
    config: MethodConfig
    targets: list[Target]
    head: HeadInfo
    # Per-module (rank, alpha) that differ from the config: PEFT files with rank_pattern, and our
    # export of fused GPT-2 projections. Keys are module names.
    lora_overrides: dict[str, tuple[int, float]] = field(default_factory=dict)


def check_model(model: object) -> None:
    """A TypeError naming what was given where a model belongs: ``None`` from a loader that
    returned nothing failed deep inside with "'NoneType' object has no attribute '__dict__'"."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"peft_core works on a torch model (a torch.nn.Module, such as a transformers "
            f"model), got {type(model).__name__} {model!r:.40}"
        )


def adapter_records(model: nn.Module) -> dict[str, AdapterRecord]:
    """The model's adapters by name (created empty on first use)."""
    check_model(model)
    records: dict[str, AdapterRecord] | None = model.__dict__.get(_ATTRIBUTE)
    if records is None:
        records = {}
        model.__dict__[_ATTRIBUTE] = records
    return records


def get_record(model: nn.Module, name: str) -> AdapterRecord:
    """The record of adapter ``name``, or an error listing the adapters that exist."""
    records = adapter_records(model)
    if name not in records:
        known = ", ".join(sorted(records)) or "none"
        raise AdapterNotFoundError(
            f"model has no adapter {name!r}; adapters in this model: {known}. "
            "Add one with peft_core.add_adapter or load one with peft_core.load_adapter."
        )
    return records[name]


def adapter_layers(model: nn.Module, name: str | None = None) -> Iterator[tuple[str, AdaptedLayer]]:
    """``(module name, wrapper)`` for every wrapper, or only those holding adapter ``name``.

    In ``named_modules`` order, but without walking into the wrappers: with many adapters their
    modules outnumber the model's own many times over (64 LoRAs on every linear layer of MiniLM:
    ~9,000 modules), and nothing inside a wrapper is another wrapper.
    """
    check_model(model)
    for module_name, module in _outside_wrappers(model, ""):
        if isinstance(module, AdaptedLayer) and (name is None or name in module.adapters):
            yield module_name, module


def head_switches(model: nn.Module) -> list[tuple[str, HeadSwitch]]:
    """``(module name, switch)`` for every per-adapter head (walked as :func:`adapter_layers`)."""
    check_model(model)
    return [(n, m) for n, m in _outside_wrappers(model, "") if isinstance(m, HeadSwitch)]


def _outside_wrappers(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    """``named_modules`` that does not walk into adapter wrappers and per-adapter heads."""
    yield prefix, module
    if isinstance(module, AdaptedLayer | HeadSwitch):
        return
    for child_name, child in module.named_children():
        yield from _outside_wrappers(child, f"{prefix}.{child_name}" if prefix else child_name)
