"""A different adapter per row of one batch, in one forward pass.

    with pc.per_row(model, ["a", "b", None, "a"]):   # row i uses adapter i; None = base model
        out = model(**batch)

In every adapted layer each adapter type is computed once for the whole batch: the adapters'
weights are stacked (slot 0 is all zeros, for rows without an adapter there), each row gathers its
own, and batched matrix products do the rest. The cost stays nearly flat as the number of distinct
adapters grows — no loop over adapters, no sub-batches (peft's ``adapter_names`` runs one
sub-batch per adapter). LoRAs of different ranks are zero-padded to the largest rank and
bottlenecks to the widest bottleneck: zero rows and columns add exactly nothing.

Routing is for inference: dropout is not applied, and merged adapters are refused.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError
from .heads import HeadSwitch
from .layer import AdaptedLayer
from .methods.bitfit import BiasOffset
from .methods.bottleneck import Bottleneck
from .methods.lora import LoRAModule
from .methods.parts import SliceParts
from .state import adapter_layers, get_record

__all__ = ["per_row", "route"]


@contextmanager
def per_row(model: nn.Module, rows: Sequence[str | None]) -> Iterator[None]:
    """Within the block, batch row ``i`` runs through adapter ``rows[i]`` (``None``: the base)."""
    names = sorted({name for name in rows if name is not None})
    for name in names:
        get_record(model, name)  # unknown names fail before anything changes
    layers = [layer for _, layer in adapter_layers(model)]
    merged = sorted(
        {n for layer in layers for n in names if n in layer.adapters and layer.adapter(n).merged}
    )
    if merged:
        raise ConfigError(f"per_row needs unmerged adapters; unmerge {merged} first")
    switches = [m for m in model.modules() if isinstance(m, HeadSwitch)]
    device = next(model.parameters()).device
    for layer in layers:
        present = tuple(n for n in names if n in layer.adapters)
        layer.row_names = present
        layer.rows = torch.tensor(
            [present.index(n) + 1 if n in present else 0 for n in rows], device=device
        )
    for switch in switches:
        switch.rows = list(rows)
    try:
        yield
    finally:
        for layer in layers:
            layer.rows, layer.row_names = None, ()
        for switch in switches:
            switch.rows = None


def route(layer: AdaptedLayer, x: Tensor, y: Tensor) -> Tensor:
    """Add every row's own adapter to ``y`` (called by ``AdaptedLayer.forward``)."""
    index = layer.rows
    assert index is not None
    if index.shape[0] != y.shape[0]:
        raise ConfigError(
            f"per_row was given {index.shape[0]} row names for a batch of {y.shape[0]} rows"
        )
    modules = [layer.adapters[name] for name in layer.row_names]
    return _route_modules(modules, index, x, y)


def _route_modules(modules: list[nn.Module], index: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Group the layer's adapters by type; each group runs once, batched over the rows."""
    groups: dict[type, list[int]] = defaultdict(list)
    for slot, module in enumerate(modules, start=1):
        groups[type(module)].append(slot)
    for kind, slots in groups.items():
        group_index = _remap(index, slots)
        members = [modules[s - 1] for s in slots]
        if kind is SliceParts:
            fused = [cast(SliceParts, m) for m in members]
            for part in fused[0].parts:  # the same targets give the same parts
                y = _route_modules([m.parts[part] for m in fused], group_index, x, y)
        else:
            y = _BATCHED[kind](members, group_index, x, y)
    return y


def _remap(index: Tensor, slots: list[int]) -> Tensor:
    """Slots of the layer -> slots of one group (others become 0: no adapter of this kind)."""
    table = torch.zeros(
        int(index.max().item()) + 1 if index.numel() else 1, dtype=torch.long, device=index.device
    )
    for position, slot in enumerate(slots, start=1):
        if slot < table.shape[0]:
            table[slot] = position
    return table[index]


def _rows(t: Tensor) -> Tensor:
    """(batch, ..., features) -> (batch, tokens, features)."""
    return t.reshape(t.shape[0], -1, t.shape[-1])


def _lora(modules: list[LoRAModule], index: Tensor, x: Tensor, y: Tensor) -> Tensor:
    first = modules[0]
    rank = max(m.rank for m in modules)
    width = first.lora_B.weight.shape[0]
    a = x.new_zeros(
        len(modules) + 1, rank, first.lora_A.weight.shape[1], dtype=first.lora_A.weight.dtype
    )
    b = x.new_zeros(len(modules) + 1, width, rank, dtype=first.lora_B.weight.dtype)
    for slot, m in enumerate(modules, start=1):
        a[slot, : m.rank] = m.lora_A.weight
        b[slot, :, : m.rank] = m.lora_B.weight * m.scaling
    x3 = _rows(x).to(a.dtype)
    update = torch.bmm(
        torch.bmm(x3, a[index].transpose(1, 2)), b[index].transpose(1, 2)
    )  # (B, T, w)
    if first.out_slice is not None:
        start, stop = first.out_slice
        update = F.pad(update, (start, first.total_out - stop))
    return y + update.reshape(y.shape).to(y.dtype)


def _bias(modules: list[BiasOffset], index: Tensor, x: Tensor, y: Tensor) -> Tensor:
    del x
    offsets = torch.stack(
        [torch.zeros_like(modules[0]._full_offset()), *(m._full_offset() for m in modules)]
    )
    y3 = _rows(y)
    return (y3 + offsets[index].unsqueeze(1).to(y.dtype)).reshape(y.shape)


def _bottleneck(modules: list[Bottleneck], index: Tensor, x: Tensor, y: Tensor) -> Tensor:
    del x
    by_activation: dict[type, list[int]] = defaultdict(list)
    for slot, m in enumerate(modules, start=1):
        by_activation[type(m.act)].append(slot)
    for slots in by_activation.values():  # usually one group: all adapters share an activation
        members = [modules[s - 1] for s in slots]
        group = _remap(index, slots)
        width = max(m.down.weight.shape[0] for m in members)
        features = members[0].up.weight.shape[0]
        dtype = members[0].down.weight.dtype
        down_w = y.new_zeros(len(members) + 1, width, features, dtype=dtype)
        down_b = y.new_zeros(len(members) + 1, width, dtype=dtype)
        up_w = y.new_zeros(len(members) + 1, features, width, dtype=dtype)
        up_b = y.new_zeros(len(members) + 1, features, dtype=dtype)
        for slot, m in enumerate(members, start=1):
            size = m.down.weight.shape[0]
            down_w[slot, :size], down_b[slot, :size] = m.down.weight, m.down.bias
            up_w[slot, :, :size], up_b[slot] = m.up.weight, m.up.bias
        y3 = _rows(y).to(dtype)
        hidden = members[0].act(
            torch.bmm(y3, down_w[group].transpose(1, 2)) + down_b[group].unsqueeze(1)
        )
        update = torch.bmm(hidden, up_w[group].transpose(1, 2)) + up_b[group].unsqueeze(1)
        y = y + update.reshape(y.shape).to(y.dtype)  # slot 0: act(0) = 0, so exactly nothing
    return y


_BATCHED: dict[type, Any] = {LoRAModule: _lora, BiasOffset: _bias, Bottleneck: _bottleneck}
