"""``combine_adapters``: a new adapter from a weighted combination of adapters of one method.

(``merge`` means one thing in peft_core: fold an adapter into the base weights. Making a new
adapter out of several is *combining*; ``merge_adapters`` is the old, deprecated name.)

Each method says how its modules combine (``Method.combine_modules``), and how exact that is:

- LoRA, ``how="cat"`` (default, exact): the new adapter's ``A`` stacks the sources' ``A``s and its
  ``B`` stacks ``w_i * scaling_i * B_i``, so ``delta = sum_i w_i * delta_i`` exactly; its rank is
  the sum of the ranks.
- LoRA, ``how="svd"`` (lossy): ``sum_i w_i * delta_i`` truncated to ``rank`` by SVD per module; the
  report gives the worst relative Frobenius error over modules.
- BitFit: ``sum_i w_i * offset_i`` (exact).
- Bottleneck adapters and IA3: a weighted average of their parameters (approximate: outputs are
  not linear in them).
- DoRA, fusions and full fine-tunes are refused.

A new classification head is the weighted average of the sources' heads (approximate).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Literal, cast

import torch
from torch import nn

from .errors import ConfigError
from .heads import adapter_head
from .inject import add_adapter
from .layer import AdaptedLayer
from .methods import CombineReport, MergeReport, method_of
from .methods.base import average_parameters
from .state import AdapterRecord, adapter_layers, get_record

__all__ = ["CombineReport", "MergeReport", "combine_adapters", "merge_adapters"]


@torch.no_grad()
def combine_adapters(
    model: nn.Module,
    weights: Mapping[str, float],
    *,
    name: str,
    how: Literal["cat", "svd"] = "cat",
    rank: int | None = None,
) -> CombineReport:
    """Add adapter ``name`` = the ``weights``-weighted combination of existing adapters."""
    records = [get_record(model, source) for source in weights]
    if not records:
        raise ConfigError("combine_adapters needs at least one source adapter")
    first = records[0]
    _check_compatible(records)
    if how == "svd" and (rank is None or rank < 1):
        raise ConfigError("how='svd' needs rank >= 1 (the rank of the merged LoRA)")
    method = method_of(first.config)
    if method.combination is None:
        raise ConfigError(f"{first.config.type} adapters cannot be combined into a new adapter")
    factors = [float(w) for w in weights.values()]
    config = method.combined_config([r.config for r in records], how=how, rank=rank)
    add_adapter(model, name, config, targets=list(first.targets))
    worst = 0.0
    for module_name, layer in adapter_layers(model, name):
        sources = [layer_of(model, module_name).adapters[r.name] for r in records]
        worst = max(worst, method.combine_modules(layer.adapters[name], sources, factors, how))
    _average_heads(model, records, factors, name)
    exact = method.combination == "exact" and worst == 0.0 and how == "cat"
    return CombineReport(name, method.combination_name(how, rank), exact, worst)


def merge_adapters(*args: Any, **kwargs: Any) -> CombineReport:
    """Deprecated name of :func:`combine_adapters` (same arguments)."""
    warnings.warn(
        "peft_core.merge_adapters is deprecated; use peft_core.combine_adapters "
        "(merge means folding an adapter into the base weights)",
        DeprecationWarning,
        stacklevel=2,
    )
    return combine_adapters(*args, **kwargs)


def layer_of(model: nn.Module, module_name: str) -> AdaptedLayer:
    """The wrapper at ``module_name``."""
    return cast(AdaptedLayer, model.get_submodule(module_name))


def _average_heads(
    model: nn.Module, records: list[AdapterRecord], factors: list[float], name: str
) -> None:
    head = get_record(model, name).head
    if not head.trainable:
        return
    for module_name in head.modules:
        sources = [adapter_head(model, module_name, r.name) for r in records]
        average_parameters(adapter_head(model, module_name, name), sources, factors)


def _check_compatible(records: list[AdapterRecord]) -> None:
    first = records[0]
    for record in records[1:]:
        if type(record.config) is not type(first.config):
            raise ConfigError(
                f"cannot merge {first.name!r} ({first.config.type}) with {record.name!r} "
                f"({record.config.type}): sources must use the same method"
            )
        if record.targets != first.targets:
            raise ConfigError(
                f"cannot merge {first.name!r} and {record.name!r}: they adapt different modules"
            )
