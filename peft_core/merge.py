"""Merging an adapter into its base weights, and back.

Everything rests on one ``delta()`` per method (LoRA: ``scaling * B @ A``; BitFit: the bias
offsets; DoRA and IA3: a delta computed from the current weight). ``merge`` checks every delta is
finite before changing any weight and keeps the delta it applied; ``unmerge`` subtracts that same
delta. Both are explicit and
idempotent: a redundant call warns and changes nothing. Nothing merges as a side effect of
``.eval()``. In every dtype the sum is computed in fp32 and rounded once, and unmerge restores
the base weights bit for bit (:mod:`peft_core.exact`).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from .errors import NotMergeableError
from .heads import head_state
from .layer import AdaptedLayer, ParamDelta, base_state_dict
from .methods import Method, method_of
from .offload import is_offloaded, offloaded_weight_message
from .quantize import is_quantized
from .state import adapter_layers, get_record

__all__ = ["merge", "merged_state_dict", "unmerge"]

_UNDO = "merge_undo"  # on the adapter module: what merge changed, to take it back exactly


def merge(model: nn.Module, name: str) -> None:
    """Add adapter ``name``'s delta to the base weights; it then adds nothing at run time."""
    method = _check_mergeable(model, name)
    if method.places_itself:  # peft-run adapters: peft computes the merged weights
        if not method.merge_placed(model, name):
            _warn_redundant("merge", name, "already merged")
        return
    pending = _deltas(model, name, want_merged=False, verb="merge")
    for layer, delta in pending:
        adapter = layer.adapter(name)
        # Kept for unmerge: what each weight received (DoRA's and IA3's deltas depend on the
        # weight they were added to, and low-precision sums round).
        vars(adapter)[_UNDO] = layer.apply_delta(delta)
        adapter.merged = True


def unmerge(model: nn.Module, name: str) -> None:
    """Restore the base weights adapter ``name`` was merged into, bit for bit."""
    method = _check_mergeable(model, name)
    if method.places_itself:
        if not method.unmerge_placed(model, name):
            _warn_redundant("unmerge", name, "not merged")
        return
    pending = _deltas(model, name, want_merged=True, verb="unmerge")
    for layer, _ in pending:
        adapter = layer.adapter(name)
        layer.take_back_delta(vars(adapter).pop(_UNDO))
        adapter.merged = False


@torch.no_grad()
def merged_state_dict(model: nn.Module, name: str) -> dict[str, Tensor]:
    """The plain model's state dict with adapter ``name`` merged; ``model`` is not modified.

    Keys are those of the model before injection, so the result loads into a fresh instance of the
    same transformers class (``load_state_dict``) or saves as a standalone checkpoint. A new head
    is the adapter's own.
    """
    record = get_record(model, name)
    method = _check_mergeable(model, name)
    if method.places_itself:
        return _merged_placed_state(model, name, method)
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
        state[key] = (state[key].float() + weight.float()).to(state[key].dtype)  # one rounding
    if delta.bias is not None:
        key = f"{module_name}.bias"
        state[key] = (state[key].float() + delta.bias.float()).to(state[key].dtype)


@torch.no_grad()
def _merged_placed_state(model: nn.Module, name: str, method: Method) -> dict[str, Tensor]:
    """merged_state_dict for a method that places itself: merged for the copy, then restored."""
    was_merged = method.is_merged_placed(model, name)
    method.merge_placed(model, name)
    try:
        state = {key: value.detach().clone() for key, value in base_state_dict(model).items()}
    finally:
        if not was_merged:
            method.unmerge_placed(model, name)
    for key, value in head_state(model, get_record(model, name).head, name).items():
        state[key] = value.detach().clone()
    return state


def _warn_redundant(verb: str, name: str, state: str, *, stacklevel: int = 3) -> None:
    """A merge or unmerge that changes nothing (``stacklevel`` 3: the caller of merge/unmerge)."""
    warnings.warn(f"{verb}({name!r}): adapter is {state}; nothing changed", stacklevel=stacklevel)


def _check_mergeable(model: nn.Module, name: str) -> Method:
    config = get_record(model, name).config
    method = method_of(config)
    why_not = method.why_not_mergeable_for(config)
    if why_not is not None:
        raise NotMergeableError(f"adapter {name!r} is a {config.type} adapter: {why_not}")
    if method.places_itself:
        return method  # its own merge checks what it sits on
    quantized = [
        module_name
        for module_name, layer in adapter_layers(model, name)
        if is_quantized(getattr(layer.base_layer, "weight", None))
    ]
    if quantized:
        raise NotMergeableError.on_quantized_weights(name, quantized[0])
    offloaded = [m for m, layer in adapter_layers(model, name) if is_offloaded(layer.base_layer)]
    if offloaded:
        raise NotMergeableError(offloaded_weight_message(offloaded[0], f"merging {name!r}"))
    return method


@torch.no_grad()
def _deltas(
    model: nn.Module, name: str, *, want_merged: bool, verb: str
) -> list[tuple[AdaptedLayer, ParamDelta]]:
    """The deltas to apply, computed and checked before anything changes."""
    _check_mergeable(model, name)
    layers = [layer for _, layer in adapter_layers(model, name)]
    if all(layer.adapter(name).merged != want_merged for layer in layers):
        state = "already merged" if not want_merged else "not merged"
        _warn_redundant(verb, name, state, stacklevel=4)
        return []
    pending = []
    for layer in layers:
        if layer.adapter(name).merged != want_merged:
            continue
        if want_merged:  # unmerge takes back what merge recorded; nothing to compute
            pending.append((layer, ParamDelta()))
            continue
        delta = _delta_of(layer, name)
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
