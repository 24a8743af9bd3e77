"""Adding a delta to a weight and taking it back out, bit for bit, in any dtype.

In bf16 or fp16, ``w + d - d`` is not ``w``: each operation rounds, and on a bf16 model merge then
unmerge moved logits by up to 0.087 (peft and bitsandbytes drift the same way). Here the sum is
computed in fp32 and rounded once; what the weight actually received (``merged - w``, in fp32)
is kept, and undoing subtracts it in fp32 and rounds once more. The few elements where that still
does not give ``w`` back (where fp32 cannot hold the difference exactly) are kept as they were, so
unmerge restores every bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Undo", "add_exactly", "take_back"]

_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class Undo:
    """How to take one merged delta back out of one parameter."""

    applied: Tensor  # what the parameter received, in fp32 (same shape)
    positions: Tensor  # flat indices where subtracting ``applied`` does not round back
    originals: Tensor  # the parameter's values there, before the merge


@torch.no_grad()
def add_exactly(parameter: Tensor, delta: Tensor) -> Undo:
    """``parameter += delta`` computed in fp32 and rounded once; returns how to undo it."""
    original = parameter.detach().clone()
    merged = (original.float() + delta.float()).to(original.dtype)
    applied = merged.float() - original.float()
    back = (merged.float() - applied).to(original.dtype)
    differs = _bits(back) != _bits(original)  # bits, not values: -0.0 and NaN count too
    positions = differs.flatten().nonzero().squeeze(1)
    parameter.copy_(merged)
    return Undo(applied, positions, original.flatten()[positions])


@torch.no_grad()
def take_back(parameter: Tensor, undo: Undo) -> None:
    """Restore ``parameter`` to its value before :func:`add_exactly`, bit for bit."""
    restored = (parameter.float() - undo.applied).to(parameter.dtype).flatten()
    restored[undo.positions] = undo.originals
    parameter.copy_(restored.view_as(parameter))


def _bits(tensor: Tensor) -> Tensor:
    return tensor.contiguous().view(_BITS[tensor.element_size()])
