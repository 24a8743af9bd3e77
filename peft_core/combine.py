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

``flatten_composition`` turns an active-able ``Stack`` or ``Average`` into one adapter computing
the same outputs, for engines that serve one adapter (vLLM, peft, a merged checkpoint). It is
exact exactly where combining is: methods whose output is the layer's plus a term of the input
(LoRA, BitFit), so a stack adds the terms and an average weighs them.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping
from typing import Any, Literal, cast

import torch
from torch import nn

from .composition import Average, Block, CompositionError, Stack, leaves, weight_value
from .errors import ConfigError
from .heads import HeadSwitch, adapter_head
from .inject import add_adapter
from .layer import AdaptedLayer
from .methods import CombineReport, MergeReport, method_of
from .methods.base import average_parameters
from .roles import Target
from .state import AdapterRecord, adapter_layers, get_record

__all__ = [
    "CombineReport",
    "MergeReport",
    "combine_adapters",
    "flatten_composition",
    "leaf_weights",
    "merge_adapters",
]


@torch.no_grad()
def combine_adapters(
    model: nn.Module,
    weights: Mapping[str, float],
    *,
    name: str,
    how: Literal["cat", "svd"] = "cat",
    rank: int | None = None,
) -> CombineReport:
    """Add adapter ``name`` = the ``weights``-weighted combination of existing adapters.

    LoRA and BitFit sources may adapt different modules: the result adapts all of them (with
    ``cat``, each LoRA module's rank is the sum of the ranks of the sources there)."""
    return _combine(model, weights, name=name, how=how, rank=rank, uniform=False)


def _combine(
    model: nn.Module,
    weights: Mapping[str, float],
    *,
    name: str,
    how: Literal["cat", "svd"],
    rank: int | None,
    uniform: bool,
) -> CombineReport:
    """combine_adapters; ``uniform``: one rank for every module (lower ones zero-padded, which
    adds nothing), for engines that size every module by one rank (vLLM)."""
    if not isinstance(weights, Mapping):  # a list of names failed with "no attribute 'items'"
        raise ConfigError(
            "combine_adapters weights map each source adapter's name to its weight "
            f"({{'a': 0.5, 'b': 0.5}}), not {type(weights).__name__} {weights!r:.40}"
        )
    records = [get_record(model, source) for source in weights]
    if not records:
        raise ConfigError("combine_adapters needs at least one source adapter")
    first = records[0]
    method = method_of(first.config)
    # Exact methods add terms, so sources on different modules combine over the union of their
    # modules (a module only some adapt gets only their terms); averaged ones need the same.
    _check_compatible(records, "combine", same_targets=method.combination != "exact")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, numbers.Integral)):
        raise ConfigError(f"combine_adapters rank must be a whole number, got {rank!r:.40}")
    rank = None if rank is None else int(rank)  # a NumPy integer is one too
    if how == "svd" and (rank is None or rank < 1):
        raise ConfigError("how='svd' needs rank >= 1 (the rank of the merged LoRA)")
    if method.combination is None:
        raise ConfigError(f"{first.config.type} adapters cannot be combined into a new adapter")
    factors = {
        source: weight_value(weight, f"combine_adapters' weight of {source!r}")
        for source, weight in weights.items()
    }
    if not all(math.isfinite(factor) for factor in factors.values()):
        raise ConfigError(f"combine_adapters weights must be finite numbers, got {factors}")
    targets, sources_at = _union_of_targets(records)
    config = method.combined_config([r.config for r in records], how=how, rank=rank)
    config, overrides = method.combined_ranks(config, sources_at, how=how, uniform=uniform)
    add_adapter(model, name, config, targets=targets, lora_overrides=overrides)
    worst = 0.0
    for module_name, layer in adapter_layers(model, name):
        present = sources_at[module_name]
        sources = [layer_of(model, module_name).adapters[r.name] for r in present]
        module_factors = [factors[r.name] for r in present]
        worst = max(
            worst, method.combine_modules(layer.adapters[name], sources, module_factors, how)
        )
    _average_heads(model, records, list(factors.values()), name)
    exact = method.combination == "exact" and worst == 0.0 and how == "cat"
    return CombineReport(name, method.combination_name(how, rank), exact, worst)


def leaf_weights(block: Block) -> dict[str, float]:
    """What each adapter of ``block`` adds when adapter outputs are the layer's plus a term: 1 per
    adapter of a ``Stack``, ``w_i`` per child of an ``Average`` (products when nested; an adapter
    listed twice adds up)."""
    weights: dict[str, float] = {}

    def visit(node: Block, factor: float) -> None:
        if isinstance(node, str):
            weights[node] = weights.get(node, 0.0) + factor
        elif isinstance(node, Stack):
            for child in node.children:
                visit(child, factor)
        elif isinstance(node, Average):
            for child, weight in zip(node.children, node.weights, strict=True):
                visit(child, factor * weight)
        else:
            raise CompositionError(
                f"a {type(node).__name__} block does not flatten into one adapter (its outputs "
                "do not add up); only Stack and Average do"
            )

    visit(block, 1.0)
    return weights


def flatten_composition(model: nn.Module, block: Block, *, name: str) -> CombineReport:
    """Add adapter ``name`` computing what ``block`` computes, as one adapter of its members'
    method (a LoRA's rank is the sum of theirs). Its head is the one the block answers with
    (the last member that has one). Refused, before anything is added, unless every member uses
    one method whose terms add up exactly (LoRA, BitFit); members on different modules give
    an adapter over all of them, with one rank everywhere (the largest sum; zero-padded below
    it), as serving engines that size every module by one rank need."""
    weights = leaf_weights(block)
    records = [get_record(model, member) for member in weights]
    _check_compatible(records, "flatten", same_targets=False)
    method = method_of(records[0].config)
    if method.combination != "exact":
        raise ConfigError(
            f"{records[0].config.type} adapters do not flatten into one: their outputs do not "
            "add up, so a stack or an average of them is no single adapter; LoRA and BitFit "
            "adapters do"
        )
    report = _combine(model, weights, name=name, how="cat", rank=None, uniform=True)
    _copy_answering_head(model, leaves(block), name)
    return report


def _copy_answering_head(model: nn.Module, members: list[str], name: str) -> None:
    """``name``'s head becomes the one a block over ``members`` answers with (``set_active``:
    the last member with a head), not combine_adapters' weighted average of theirs."""
    head = get_record(model, name).head
    if not head.trainable:
        return
    for module_name in head.modules:
        switch = cast(HeadSwitch, model.get_submodule(module_name))
        answering = next((m for m in reversed(members) if m in switch.heads), None)
        if answering is not None:
            switch.heads[name].load_state_dict(switch.heads[answering].state_dict())


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


def _check_compatible(
    records: list[AdapterRecord], verb: str, *, same_targets: bool = True
) -> None:
    first = records[0]
    for record in records[1:]:
        if type(record.config) is not type(first.config):
            raise ConfigError(
                f"cannot {verb} {first.name!r} ({first.config.type}) with {record.name!r} "
                f"({record.config.type}): sources must use the same method"
            )
        if same_targets and record.targets != first.targets:
            raise ConfigError(
                f"cannot {verb} {first.name!r} and {record.name!r}: they adapt different modules"
            )


def _union_of_targets(
    records: list[AdapterRecord],
) -> tuple[list[Target], dict[str, list[AdapterRecord]]]:
    """Every module some source adapts (in first-seen order), and the sources at each. Sources
    must agree on what they adapt of a module they share (GPT-2's fused ``c_attn``: the same
    q/k/v slices), since one adapter module there serves them all."""
    union: dict[str, tuple[Target, ...]] = {}
    owner: dict[str, AdapterRecord] = {}
    sources_at: dict[str, list[AdapterRecord]] = {}
    for record in records:
        for module_name in dict.fromkeys(t.module_name for t in record.targets):
            here = tuple(t for t in record.targets if t.module_name == module_name)
            if module_name in union and union[module_name] != here:
                raise ConfigError(
                    f"cannot combine {owner[module_name].name!r} and {record.name!r}: they adapt "
                    f"different parts of {module_name} "
                    f"({_slices(union[module_name])} against {_slices(here)})"
                )
            union.setdefault(module_name, here)
            owner.setdefault(module_name, record)
            sources_at.setdefault(module_name, []).append(record)
    return [t for here in union.values() for t in here], sources_at


def _slices(targets: tuple[Target, ...]) -> str:
    return ", ".join(t.role or str(t.out_slice or "whole") for t in targets)
