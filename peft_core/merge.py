"""Merging an adapter into its base weights, and back.

Everything rests on one ``delta()`` per method (LoRA: ``scaling * B @ A``; BitFit: the bias
offsets; DoRA and IA3: a delta computed from the current weight). ``merge`` checks every delta is
finite before changing any weight and keeps the delta it applied; ``unmerge`` subtracts that same
delta, restoring the base weights within float rounding. Both are explicit and
idempotent: a redundant call warns and changes nothing. Nothing merges as a side effect of
``.eval()``.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from .errors import NotMergeableError
from .heads import head_state
from .layer import AdaptedLayer, ParamDelta, base_state_dict
from .methods import method_of
from .state import adapter_layers, get_record

__all__ = ["merge", "merged_state_dict", "unmerge"]

_APPLIED = "applied_delta"  # the delta merge added, on the adapter module


def merge(model: nn.Module, name: str) -> None:
    """Add adapter ``name``'s delta to the base weights; it then adds nothing at run time."""
    pending = _deltas(model, name, want_merged=False, verb="merge")
    for layer, delta in pending:
        layer.apply_delta(delta, sign=1.0)
        adapter = layer.adapter(name)
        adapter.merged = True
        # Kept for unmerge: DoRA's and IA3's deltas depend on the weight they were added to.
        vars(adapter)[_APPLIED] = delta


def unmerge(model: nn.Module, name: str) -> None:
    """Subtract adapter ``name``'s delta from the base weights (inverse of :func:`merge`)."""
    pending = _deltas(model, name, want_merged=True, verb="unmerge")
    for layer, delta in pending:
        layer.apply_delta(delta, sign=-1.0)
        adapter = layer.adapter(name)
        adapter.merged = False
        vars(adapter).pop(_APPLIED, None)


@torch.no_grad()
def merged_state_dict(model: nn.Module, name: str) -> dict[str, Tensor]:
    """The plain model's state dict with adapter ``name`` merged; ``model`` is not modified.

    Keys are those of the model before injection, so the result loads into a fresh instance of the
    same transformers class (``load_state_dict``) or saves as a standalone checkpoint. A new head
    is the adapter's own.
    """
    record = get_record(model, name)
    _check_mergeable(model, name)
    wrappers = {
        module_name: layer
        for module_name, layer in adapter_layers(model, name)
        if not layer.adapter(name).merged
    }
    state = {key: value.detach().clone() for key, value in base_state_dict(model).items()}
    for module_name, layer in wrappers.items():
        _add_delta(state, module_name, layer, name)
    for key, value in head_state(model, record.head, name).items():
        state[key] = value.detach().clone()
    return state


def _add_delta(state: dict[str, Tensor], module_name: str, layer: AdaptedLayer, name: str) -> None:
    delta = _delta_of(layer, name)
    if delta.weight is not None:
        weight = delta.weight.T if layer.kind.transposed else delta.weight
        key = f"{module_name}.weight"
        state[key] = state[key] + weight.to(state[key].dtype)
    if delta.bias is not None:
        key = f"{module_name}.bias"
        state[key] = state[key] + delta.bias.to(state[key].dtype)


def _check_mergeable(model: nn.Module, name: str) -> None:
    config = get_record(model, name).config
    method = method_of(config)
    if not method.mergeable:
        raise NotMergeableError(
            f"adapter {name!r} is a {config.type} adapter: {method.why_not_mergeable}"
        )


@torch.no_grad()
def _deltas(
    model: nn.Module, name: str, *, want_merged: bool, verb: str
) -> list[tuple[AdaptedLayer, ParamDelta]]:
    """The deltas to apply, computed and checked before anything changes."""
    _check_mergeable(model, name)
    layers = [layer for _, layer in adapter_layers(model, name)]
    if all(layer.adapter(name).merged != want_merged for layer in layers):
        state = "already merged" if not want_merged else "not merged"
        warnings.warn(f"{verb}({name!r}): adapter is {state}; nothing changed", stacklevel=3)
        return []
    pending = []
    for layer in layers:
        if layer.adapter(name).merged != want_merged:
            continue
        applied = vars(layer.adapter(name)).get(_APPLIED)
        delta = applied if want_merged and applied is not None else _delta_of(layer, name)
        for tensor in (delta.weight, delta.bias):
            if tensor is not None and not torch.isfinite(tensor).all():
                raise NotMergeableError(
                    f"adapter {name!r} has non-finite weights (NaN or inf); refusing to {verb}"
                )
        pending.append((layer, delta))
    return pending


def _delta_of(layer: AdaptedLayer, name: str) -> ParamDelta:
    delta = layer.adapter(name).delta()
    if delta is None:
        raise NotMergeableError(f"adapter {name!r} has no weight delta and cannot be merged")
    return delta
