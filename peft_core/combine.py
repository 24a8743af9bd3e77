"""``merge_adapters``: a new adapter from a weighted combination of adapters of one method.

Algorithms, and what they keep exact:

- LoRA, ``how="cat"`` (default, exact): the new adapter's ``A`` stacks the sources' ``A``s and its
  ``B`` stacks ``w_i * scaling_i * B_i``, so ``delta = sum_i w_i * delta_i`` exactly; its rank is
  the sum of the ranks.
- LoRA, ``how="svd"`` (lossy): ``sum_i w_i * delta_i`` truncated to ``rank`` by SVD per module; the
  report gives the worst relative Frobenius error over modules.
- BitFit: ``sum_i w_i * offset_i`` (exact).
- Bottleneck adapters: a weighted average of their weights (approximate: the bottleneck is
  non-linear, so outputs are not averaged exactly).

A new classification head is the weighted average of the sources' heads (approximate).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import Tensor, nn

from .config import BitFit, Houlsby, LoRA, Pfeiffer
from .errors import ConfigError
from .heads import adapter_head
from .inject import add_adapter
from .layer import AdaptedLayer
from .methods.lora import LoRAModule
from .methods.parts import SliceParts
from .state import AdapterRecord, adapter_layers, get_record

__all__ = ["MergeReport", "merge_adapters"]


@dataclass(frozen=True)
class MergeReport:
    """What ``merge_adapters`` built and how exact it is."""

    name: str
    algorithm: str
    exact: bool
    relative_error: float  # worst relative Frobenius error of a module's delta (0 when exact)


@torch.no_grad()
def merge_adapters(
    model: nn.Module,
    weights: Mapping[str, float],
    *,
    name: str,
    how: Literal["cat", "svd"] = "cat",
    rank: int | None = None,
) -> MergeReport:
    """Add adapter ``name`` = the ``weights``-weighted combination of existing adapters."""
    records = [get_record(model, source) for source in weights]
    if not records:
        raise ConfigError("merge_adapters needs at least one source adapter")
    first = records[0]
    _check_compatible(records)
    if how == "svd" and (rank is None or rank < 1):
        raise ConfigError("how='svd' needs rank >= 1 (the rank of the merged LoRA)")
    factors = [float(w) for w in weights.values()]
    if isinstance(first.config, LoRA):
        return _merge_lora(model, records, factors, name=name, how=how, rank=rank)
    if not isinstance(first.config, BitFit | Houlsby | Pfeiffer):
        raise ConfigError(f"{first.config.type} adapters cannot be merged into a new adapter")
    add_adapter(model, name, first.config, targets=list(first.targets))
    for module_name, layer in adapter_layers(model, name):
        sources = [layer_of(model, module_name).adapters[r.name] for r in records]
        _average_parameters(layer.adapters[name], sources, factors)
    _average_heads(model, records, factors, name)
    exact = isinstance(first.config, BitFit)
    return MergeReport(name, "weighted sum" if exact else "parameter average", exact, 0.0)


def layer_of(model: nn.Module, module_name: str) -> AdaptedLayer:
    """The wrapper at ``module_name``."""
    return cast(AdaptedLayer, model.get_submodule(module_name))


def _merge_lora(
    model: nn.Module,
    records: list[AdapterRecord],
    factors: list[float],
    *,
    name: str,
    how: str,
    rank: int | None,
) -> MergeReport:
    first = records[0]
    config = cast(LoRA, first.config)
    sample = _parts(
        next(iter(layer.adapters[first.name] for _, layer in adapter_layers(model, first.name)))
    )
    new_rank = rank if how == "svd" else sum(_parts(_source(model, r))[0].rank for r in records)
    assert new_rank is not None and sample
    merged = LoRA(
        rank=new_rank, alpha=float(new_rank), dropout=config.dropout, targets=config.targets
    )
    add_adapter(model, name, merged, targets=list(first.targets))
    worst = 0.0
    for module_name, layer in adapter_layers(model, name):
        targets = _parts(layer.adapters[name])
        sources = [_parts(layer_of(model, module_name).adapters[r.name]) for r in records]
        for position, target in enumerate(targets):
            parts = [s[position] for s in sources]
            if how == "cat":
                target.lora_A.weight.copy_(torch.cat([p.lora_A.weight for p in parts]))
                target.lora_B.weight.copy_(
                    torch.cat(
                        [
                            w * p.scaling * p.lora_B.weight
                            for w, p in zip(factors, parts, strict=True)
                        ],
                        dim=1,
                    )
                )
            else:
                worst = max(worst, _svd_into(target, parts, factors, new_rank))
    _average_heads(model, records, factors, name)
    return MergeReport(
        name, "concatenation" if how == "cat" else f"svd rank {new_rank}", how == "cat", worst
    )


def _svd_into(
    target: LoRAModule, parts: list[LoRAModule], factors: list[float], rank: int
) -> float:
    delta = sum(
        w * p.scaling * (p.lora_B.weight @ p.lora_A.weight)
        for w, p in zip(factors, parts, strict=True)
    )
    assert isinstance(delta, Tensor)
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    k = min(rank, s.shape[0])
    b = u[:, :k] * s[:k]  # (out, k)
    a = vh[:k]  # (k, in)
    target.lora_B.weight.zero_()
    target.lora_A.weight.zero_()
    target.lora_B.weight[:, :k] = b.to(target.lora_B.weight.dtype)
    target.lora_A.weight[:k] = a.to(target.lora_A.weight.dtype)
    target.scaling = 1.0
    norm = float(delta.norm())
    return float((delta - b @ a).norm()) / norm if norm > 0 else 0.0


def _source(model: nn.Module, record: AdapterRecord) -> nn.Module:
    return next(layer.adapters[record.name] for _, layer in adapter_layers(model, record.name))


def _parts(adapter: nn.Module) -> list[LoRAModule]:
    modules = list(adapter.parts.values()) if isinstance(adapter, SliceParts) else [adapter]
    return [cast(LoRAModule, m) for m in modules]


def _average_parameters(target: nn.Module, sources: list[nn.Module], factors: list[float]) -> None:
    source_params = [dict(s.named_parameters()) for s in sources]
    for key, param in target.named_parameters():
        param.copy_(sum(w * p[key] for w, p in zip(factors, source_params, strict=True)))  # type: ignore[arg-type]


def _average_heads(
    model: nn.Module, records: list[AdapterRecord], factors: list[float], name: str
) -> None:
    head = get_record(model, name).head
    if not head.trainable:
        return
    for module_name in head.modules:
        sources = [adapter_head(model, module_name, r.name) for r in records]
        _average_parameters(adapter_head(model, module_name, name), sources, factors)


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
