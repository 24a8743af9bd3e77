"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020).

Placed on the output projection of a sub-layer (attention output, FFN output), inside the residual
and before the layer norm that follows it:

    y' = y + up(act(down(y)))

``down`` projects to the bottleneck width, ``up`` back. ``up`` starts at zero (the limit of
Houlsby's near-identity initialisation), so a fresh adapter returns exactly the base output while
``up`` still receives gradients from the first step. The non-linearity makes it impossible to merge.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layer import ParamDelta

__all__ = ["Bottleneck"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


class Bottleneck(nn.Module):
    """``y + up(act(down(y)))`` on a layer's output."""

    def __init__(
        self,
        features: int,
        bottleneck: int,
        *,
        activation: str = "relu",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.down = nn.Linear(features, bottleneck, device=device, dtype=dtype)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, features, device=device, dtype=dtype)
        self.merged = False
        if device is None or device.type != "meta":
            nn.init.normal_(self.down.weight, std=0.02)  # BERT's initializer range
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = y.to(self.down.weight.dtype)
        return y + self.up(self.act(self.down(h))).to(y.dtype)

    def delta(self) -> ParamDelta | None:
        """Not linear in the base parameters: cannot be merged."""
        return None
