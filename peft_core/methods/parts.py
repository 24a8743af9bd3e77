"""Several adapters on disjoint output slices of one fused projection (GPT-2's ``c_attn``)."""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn

from ..layer import AdapterModule, ParamDelta

__all__ = ["SliceParts"]


class SliceParts(nn.Module):
    """Applies each part in turn; its delta is the sum of the parts' deltas (disjoint slices)."""

    def __init__(self, parts: dict[str, nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(parts)
        self.merged = False

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        for part in self.parts.values():
            y = part(x, y)
        return y

    def delta(self) -> ParamDelta:
        """Sum of the parts' weight and bias deltas."""
        maybe = [cast(AdapterModule, part).delta() for part in self.parts.values()]
        deltas = [d for d in maybe if d is not None]
        weights = [d.weight for d in deltas if d.weight is not None]
        biases = [d.bias for d in deltas if d.bias is not None]
        return ParamDelta(
            weight=sum(weights[1:], weights[0]) if weights else None,
            bias=sum(biases[1:], biases[0]) if biases else None,
        )
