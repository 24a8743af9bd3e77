"""Turning what a method asks for (roles, module-name patterns, "every bias") into module targets.

Methods call these from their ``targets`` hook; injection then builds one adapter module per
resolved module. Resolution happens inside the model body (``model.bert``, ``model.transformer``),
so a new classification head is never adapted by accident.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from .errors import TargetError
from .heads import body_prefix
from .layer import layer_kind, named_base_modules
from .roles import ALL_LINEAR, ROLES, Target, family_of, find_targets

__all__ = ["all_biases", "model_type_of", "resolve_targets"]


def model_type_of(model: nn.Module) -> str:
    """``model.config.model_type`` (``""`` for a model without a transformers config)."""
    return str(getattr(getattr(model, "config", None), "model_type", ""))


def resolve_targets(model: nn.Module, requested: Iterable[str]) -> list[Target]:
    """Roles (``q``, ``ffn_out``) and patterns resolved to targets in the model body.

    Raises :class:`TargetError` listing what matched nothing and a few names that exist.
    """
    requested = tuple(requested)
    prefix = body_prefix(model)
    body = getattr(model, prefix) if prefix else model
    widths = {
        name: kind.out_features(module)
        for name, module in named_base_modules(body)
        if (kind := layer_kind(module)) is not None
    }
    model_type = model_type_of(model)
    found, unmatched = find_targets(body, requested, model_type=model_type, out_features=widths)
    if unmatched:
        raise TargetError(_unmatched_message(body, requested, unmatched, model_type))
    return [_prefixed(prefix, t) for t in found]


def all_biases(model: nn.Module, *, method: str = "BitFit") -> list[Target]:
    """Every supported layer in the body that has a bias term."""
    prefix = body_prefix(model)
    body = getattr(model, prefix) if prefix else model
    found = [
        _prefixed(prefix, Target(name))
        for name, module in named_base_modules(body)
        if layer_kind(module) is not None and getattr(module, "bias", None) is not None
    ]
    if not found:
        raise TargetError(
            f"{method} needs bias terms, but this {type(model).__name__} has none "
            "(Llama-family models have no biases). Choose LoRA or a bottleneck adapter instead."
        )
    return found


def _prefixed(prefix: str, target: Target) -> Target:
    if not prefix:
        return target
    return Target(f"{prefix}.{target.module_name}", target.out_slice, target.role)


def _unmatched_message(
    body: nn.Module, requested: Iterable[str], unmatched: list[str], model_type: str
) -> str:
    candidates = [n for n, m in named_base_modules(body) if n and layer_kind(m) is not None]
    leaf_names = sorted({n.rsplit(".", 1)[-1] for n in candidates})
    patterns = f"use module-name patterns (or {ALL_LINEAR}: every linear layer)"
    if family_of(model_type):
        roles = (
            f"roles known for {model_type!r}: {', '.join(ROLES)} ({ALL_LINEAR}: every linear layer)"
        )
    elif model_type:
        roles = f"model type {model_type!r} has no role table; {patterns}"
    else:  # a plain torch module: no config saying which family it is
        roles = (
            f"this {type(body).__name__} has no transformers config naming its model type, "
            f"so no roles; {patterns}"
        )
    where = (
        f"Adaptable module names here include: {', '.join(leaf_names[:12])}"
        if leaf_names
        else f"This {type(body).__name__} has no Linear, Conv1D or LayerNorm submodule to "
        "adapt (adapters go on a transformers model, not on one of its layers)"
    )
    return f"targets {unmatched} matched no module (asked for {list(requested)}); {roles}. {where}"
