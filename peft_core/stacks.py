"""Stacked adapter weights for per-row routing, kept between ``per_row`` calls.

``per_row`` runs each layer's adapters as one batched product over their weights stacked into one
tensor. Building that stack copies every adapter's weights, so it is kept on the layer's first
adapter module and reused until it goes stale: until the set of adapters changes, or any of
their parameters changes in place (an optimiser step, ``load_adapter``, ``copy_``: the tensor's
version counter) or is replaced (``.to()``, a new storage). Entering ``per_row`` then costs an
index computation, not a copy of every adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TypeVar

from torch import Tensor, nn

__all__ = ["cached_stack"]

T = TypeVar("T")
_SLOT = "_peft_core_stacks"
_KEEP = 4  # stacks kept per first module: a few recent groupings of the same layer


def _state(
    modules: Sequence[nn.Module], parameters: Callable[[nn.Module], Iterable[Tensor]]
) -> Hashable:
    """Which modules, and the exact state of their parameters."""
    return tuple(
        (id(m), *((p._version, p.data_ptr(), p.dtype, p.device) for p in parameters(m)))
        for m in modules
    )


def cached_stack(
    modules: Sequence[nn.Module],
    build: Callable[[], T],
    tag: Hashable = None,
    parameters: Callable[[nn.Module], Iterable[Tensor]] = nn.Module.parameters,
) -> T:
    """``build()``'s result for ``modules``, rebuilt only when they or their parameters change.
    ``tag`` tells apart different builds over the same modules (layouts, dtypes).
    ``parameters(module)`` gives the tensors ``build`` reads; naming them directly is much
    quicker than ``nn.Module.parameters``' walk, and this check runs for every layer on every
    entry into ``per_row``."""
    kept: dict[Hashable, object] = modules[0].__dict__.setdefault(_SLOT, {})
    key = (tag, _state(modules, parameters))
    if key in kept:
        return kept[key]  # type: ignore[return-value]
    value = build()
    if len(kept) >= _KEEP:
        kept.pop(next(iter(kept)))  # the oldest
    kept[key] = value
    return value
