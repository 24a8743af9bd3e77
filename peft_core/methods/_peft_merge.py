"""Merging a peft-run adapter into its base weights, and back, bit for bit.

peft knows how each of its layers merges (LoHa's Hadamard product, OFT's rotation, HRA's
reflections, VeRA's scaled projections...), so its own ``layer.merge`` computes the merged
weights. What peft does not give is the lifecycle peft_core promises for every method: a merge
checked to be finite everywhere before any weight changes, and an unmerge that restores the base
bit for bit in any dtype (peft's unmerge subtracts or inverts, which rounds). So each layer is
merged by peft on the side, what the weights received is taken as a delta, the layer is put back,
and the delta is added through :func:`peft_core.exact.add_exactly`, which keeps what undoing it
needs.

peft is then told nothing: its layers keep the adapter unmerged in their own books, and
``PeftRun.switch`` leaves a merged adapter out of the layers' active adapters, so it adds nothing
at run time (it is in the weights) whatever is active, as a merged native adapter does. peft's
bookkeeping would instead unmerge on the first forward with adapters off, and skip every other
active adapter of a merged layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import NotMergeableError
from ..exact import Undo, add_exactly, take_back
from ..quantize import is_quantized

__all__ = ["forget", "merge", "merged_names", "unmerge"]

_MERGED = "peft_core_peft_merged"  # on the model: adapter name -> what its merge changed
_PARAMETERS = ("weight", "bias")

LayerUndo = tuple[nn.Module, list[tuple[str, Undo]]]  # a base layer and its parameters' undos


def merged_names(model: nn.Module) -> set[str]:
    """The peft-run adapters of ``model`` now merged into its base weights."""
    return set(_merged(model))


@torch.no_grad()
def merge(model: nn.Module, name: str, layers: list[tuple[str, Any]]) -> bool:
    """Merge adapter ``name``, present in the peft tuner ``layers`` (``(module name, layer)``);
    False, changing nothing, when it is merged already."""
    if name in _merged(model):
        return False
    if not layers:
        raise NotMergeableError(f"adapter {name!r} has no weights in the model's layers to merge")
    _refuse_quantized(name, layers)
    deltas = [(layer, _delta(name, module_name, layer)) for module_name, layer in layers]
    undos: list[LayerUndo] = []
    for layer, delta in deltas:  # every delta computed and checked: nothing can fail now
        base = layer.get_base_layer()
        undos.append((base, [(p, add_exactly(getattr(base, p), d)) for p, d in delta.items()]))
    _merged(model)[name] = undos
    return True


@torch.no_grad()
def unmerge(model: nn.Module, name: str) -> bool:
    """Restore the base weights adapter ``name`` was merged into; False when it is not merged."""
    undos = _merged(model).pop(name, None)
    if undos is None:
        return False
    for base, parameters in undos:
        for parameter, undo in parameters:
            take_back(getattr(base, parameter), undo)
    return True


def forget(model: nn.Module, name: str) -> None:
    """Drop what undoes adapter ``name``'s merge (it is being deleted; the weights keep it)."""
    _merged(model).pop(name, None)


def _delta(name: str, module_name: str, layer: Any) -> dict[str, Tensor]:
    """What peft's merge of ``name`` would add to the layer's base parameters (in float32); the
    layer is left as it was."""
    base = layer.get_base_layer()
    before = {p: getattr(base, p).detach().clone() for p in _PARAMETERS if _has(base, p)}
    try:
        layer.merge(adapter_names=[name])
    except Exception as exc:  # peft's refusal, for whatever reason its layer has
        _restore(base, before)
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise NotMergeableError(
            f"adapter {name!r}: peft cannot merge its {type(layer).__name__} layer at "
            f"{module_name} ({reason:.200})"
        ) from None
    after = {p: getattr(base, p).detach().to(torch.float32, copy=True) for p in before}
    _restore(base, before)
    _forget_merge(layer, name)
    delta = {p: after[p] - before[p].float() for p in before}
    delta = {p: d for p, d in delta.items() if bool(d.any())}
    if not all(torch.isfinite(d).all() for d in delta.values()):
        raise NotMergeableError(
            f"adapter {name!r} has non-finite weights (NaN or inf) at {module_name}; refusing "
            "to merge"
        )
    return delta


def _restore(base: nn.Module, before: dict[str, Tensor]) -> None:
    for parameter, value in before.items():
        current = getattr(base, parameter)
        if current.data.shape != value.shape or current.data.dtype != value.dtype:
            current.data = value  # peft replaced the tensor; take the original back
        else:
            current.data.copy_(value)


def _forget_merge(layer: Any, name: str) -> None:
    merged: list[str] = layer.merged_adapters
    while name in merged:
        merged.remove(name)


def _refuse_quantized(name: str, layers: list[tuple[str, Any]]) -> None:
    for module_name, layer in layers:
        if is_quantized(getattr(layer.get_base_layer(), "weight", None)):
            raise NotMergeableError.on_quantized_weights(name, module_name)


def _has(module: nn.Module, parameter: str) -> bool:
    return isinstance(getattr(module, parameter, None), Tensor)


def _merged(model: nn.Module) -> dict[str, list[LayerUndo]]:
    merged: dict[str, list[LayerUndo]] = model.__dict__.setdefault(_MERGED, {})
    return merged
