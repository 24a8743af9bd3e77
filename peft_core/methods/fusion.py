"""AdapterFusion (Pfeiffer et al. 2020a): a trained attention over frozen adapters' outputs.

    alpha_i = softmax_i((Q y) . (K o_i) / T)       y: the layer's output, o_i: member i's output
    out     = sum_i alpha_i * (V o_i)

``Q`` and ``K`` start at zero (uniform attention) and ``V`` at the identity, so a fresh fusion is
the plain average of its members; with one member it is exactly that member.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layer import ParamDelta

__all__ = ["FusionModule"]


class FusionModule(nn.Module):
    """Attention over the outputs of ``members`` in one layer."""

    def __init__(
        self,
        features: int,
        members: tuple[str, ...],
        *,
        temperature: float = 1.0,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.members = members
        self.temperature = temperature
        self.query = nn.Linear(features, features, bias=False, device=device, dtype=dtype)
        self.key = nn.Linear(features, features, bias=False, device=device, dtype=dtype)
        self.value = nn.Linear(features, features, bias=False, device=device, dtype=dtype)
        self.merged = False
        if device is None or device.type != "meta":
            nn.init.zeros_(self.query.weight)
            nn.init.normal_(self.key.weight, std=0.02)
            with torch.no_grad():
                self.value.weight.copy_(torch.eye(features, dtype=self.value.weight.dtype))

    def fuse(self, y: Tensor, outputs: list[Tensor]) -> Tensor:
        """Combine the members' outputs ``outputs`` (same shape as ``y``)."""
        stacked = torch.stack(outputs, dim=-2)  # (..., members, features)
        query = self.query(y).unsqueeze(-2)  # (..., 1, features)
        scores = (query * self.key(stacked)).sum(-1) / self.temperature  # (..., members)
        weights = scores.softmax(-1).unsqueeze(-1)
        return (weights * self.value(stacked)).sum(-2)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        raise RuntimeError(
            "a fusion runs through AdaptedLayer, which supplies its members' outputs"
        )

    def delta(self) -> ParamDelta | None:
        """Not a weight delta: cannot be merged."""
        return None
