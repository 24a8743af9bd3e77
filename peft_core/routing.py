"""A different adapter per row of one batch, in one forward pass.

    with pc.per_row(model, ["a", "b", None, "a"]):   # row i uses adapter i; None = base model
        out = model(**batch)

In every adapted layer each adapter type is computed once for the whole batch: the adapters'
weights are stacked (slot 0 is all zeros, for rows without an adapter there), each row gathers its
own, and batched matrix products do the rest. The per-row weights are gathered once, when the
``per_row`` block is entered, so each forward pass costs two batched products per LoRA layer. The
cost stays nearly flat as the number of distinct adapters grows: no loop over adapters, no
sub-batches (peft's ``adapter_names`` runs one sub-batch per adapter). LoRAs of different ranks
are zero-padded to the largest rank and bottlenecks to the widest bottleneck: zero rows and
columns add exactly nothing.

Routing is for inference: dropout is not applied, and merged adapters are refused.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
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

__all__ = ["install_routing", "per_row", "remove_routing", "route"]


Step = Callable[[Tensor, Tensor], Tensor]  # (layer input x, output so far y) -> new y


@contextmanager
def per_row(model: nn.Module, rows: Sequence[str | None]) -> Iterator[None]:
    """Within the block, batch row ``i`` runs through adapter ``rows[i]`` (``None``: the base)."""
    install_routing(model, rows)
    try:
        yield
    finally:
        remove_routing(model)


def install_routing(model: nn.Module, rows: Sequence[str | None]) -> None:
    """Prepare every layer and head to route row ``i`` through ``rows[i]``."""
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
    with torch.no_grad():
        for layer in layers:
            present = [n for n in names if n in layer.adapters]
            index = torch.tensor(
                [present.index(n) + 1 if n in present else 0 for n in rows], device=device
            )
            layer.routing = RowRouting(
                len(rows), _plan([layer.adapters[n] for n in present], index)
            )
    for switch in switches:
        switch.rows = list(rows)


def remove_routing(model: nn.Module) -> None:
    """Back to the active adapter or composition."""
    for _, layer in adapter_layers(model):
        layer.routing = None
    for switch in (m for m in model.modules() if isinstance(m, HeadSwitch)):
        switch.rows = None


class RowRouting:
    """One layer's prepared per-row computation."""

    def __init__(self, rows: int, steps: list[Step]) -> None:
        self.rows = rows
        self.steps = steps

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        if y.shape[0] != self.rows:
            raise ConfigError(
                f"per_row was given {self.rows} row names for a batch of {y.shape[0]} rows"
            )
        for step in self.steps:
            y = step(x, y)
        return y


def route(layer: AdaptedLayer, x: Tensor, y: Tensor) -> Tensor:
    """Add every row's own adapter to ``y`` (called by ``AdaptedLayer.forward``)."""
    assert layer.routing is not None
    return cast(RowRouting, layer.routing)(x, y)


def _plan(modules: list[nn.Module], index: Tensor) -> list[Step]:
    """Group the layer's adapters by type; each group becomes one batched step."""
    groups: dict[type, list[int]] = defaultdict(list)
    for slot, module in enumerate(modules, start=1):
        groups[type(module)].append(slot)
    steps: list[Step] = []
    for kind, slots in groups.items():
        group_index = _remap(index, slots)
        members = [modules[s - 1] for s in slots]
        if kind is SliceParts:
            fused = [cast(SliceParts, m) for m in members]
            for part in fused[0].parts:  # the same targets give the same parts
                steps += _plan([m.parts[part] for m in fused], group_index)
        elif kind in _STEPS:
            steps.append(_STEPS[kind](members, group_index))
        else:
            raise ConfigError(f"per_row cannot route {kind.__name__} adapters")
    return steps


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


def _lora_step(modules: list[LoRAModule], index: Tensor) -> Step:
    first = modules[0]
    rank = max(m.rank for m in modules)
    weight_a, weight_b = first.lora_A.weight, first.lora_B.weight
    a = weight_a.new_zeros(len(modules) + 1, rank, weight_a.shape[1])
    b = weight_b.new_zeros(len(modules) + 1, weight_b.shape[0], rank)
    for slot, m in enumerate(modules, start=1):
        a[slot, : m.rank] = m.lora_A.weight
        b[slot, :, : m.rank] = m.lora_B.weight * m.scaling
    a_rows = a[index].transpose(1, 2).contiguous()  # (B, in, r): each row's own A
    b_rows = b[index].transpose(1, 2).contiguous()  # (B, r, out_slice)
    padding = (
        (first.out_slice[0], first.total_out - first.out_slice[1]) if first.out_slice else None
    )

    def step(x: Tensor, y: Tensor) -> Tensor:
        update = torch.bmm(torch.bmm(_rows(x).to(a_rows.dtype), a_rows), b_rows)  # (B, T, w)
        if padding is not None:
            update = F.pad(update, padding)
        return y + update.reshape(y.shape).to(y.dtype)

    return step


def _bias_step(modules: list[BiasOffset], index: Tensor) -> Step:
    offsets = torch.stack(
        [torch.zeros_like(modules[0]._full_offset()), *(m._full_offset() for m in modules)]
    )
    per_row = offsets[index].unsqueeze(1)  # (B, 1, features)

    def step(x: Tensor, y: Tensor) -> Tensor:
        return (_rows(y) + per_row.to(y.dtype)).reshape(y.shape)

    return step


def _bottleneck_step(modules: list[Bottleneck], index: Tensor) -> Step:
    by_activation: dict[type, list[int]] = defaultdict(list)
    for slot, m in enumerate(modules, start=1):
        by_activation[type(m.act)].append(slot)
    steps = [
        _bottleneck_group([modules[s - 1] for s in slots], _remap(index, slots))
        for slots in by_activation.values()
    ]

    def step(x: Tensor, y: Tensor) -> Tensor:
        for group in steps:  # usually one: all adapters share an activation
            y = group(x, y)
        return y

    return step


def _bottleneck_group(members: list[Bottleneck], index: Tensor) -> Step:
    width = max(m.down.weight.shape[0] for m in members)
    down = members[0].down.weight
    features = members[0].up.weight.shape[0]
    down_w = down.new_zeros(len(members) + 1, width, features)
    down_b = down.new_zeros(len(members) + 1, width)
    up_w = down.new_zeros(len(members) + 1, features, width)
    up_b = down.new_zeros(len(members) + 1, features)
    for slot, m in enumerate(members, start=1):
        size = m.down.weight.shape[0]
        down_w[slot, :size], down_b[slot, :size] = m.down.weight, m.down.bias
        up_w[slot, :, :size], up_b[slot] = m.up.weight, m.up.bias
    down_rows, down_bias = down_w[index].transpose(1, 2).contiguous(), down_b[index].unsqueeze(1)
    up_rows, up_bias = up_w[index].transpose(1, 2).contiguous(), up_b[index].unsqueeze(1)
    activation = members[0].act

    def step(x: Tensor, y: Tensor) -> Tensor:
        y3 = _rows(y).to(down_rows.dtype)
        hidden = activation(torch.bmm(y3, down_rows) + down_bias)  # zero slots: act(0) = 0
        update = torch.bmm(hidden, up_rows) + up_bias
        return y + update.reshape(y.shape).to(y.dtype)

    return step


_STEPS: dict[type, Any] = {
    LoRAModule: _lora_step,
    BiasOffset: _bias_step,
    Bottleneck: _bottleneck_step,
}
