"""BitFit (Ben-Zaken et al. 2022) as bias offsets.

Training the shared base biases in place would tie the base model to one task. Instead each BitFit
adapter is a set of offsets ``db`` (zero at the start) added to the layer output,
``y = W x + b + db``, which equals training ``b``. Merging adds ``db`` to ``b``. Several BitFit
adapters can then coexist, switch and be saved alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layer import ParamDelta

__all__ = ["BiasOffset"]


class BiasOffset(nn.Module):
    """``y + bias_offset`` with a zero-initialised offset of the layer's output width."""

    def __init__(
        self,
        features: int,
        *,
        out_slice: tuple[int, int] | None = None,
        total_out: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.bias_offset = nn.Parameter(torch.zeros(features, device=device, dtype=dtype))
        self.out_slice = out_slice
        self.total_out = total_out if total_out is not None else features
        self.merged = False

    def _full_offset(self) -> Tensor:
        if self.out_slice is None:
            return self.bias_offset
        start, stop = self.out_slice
        return F.pad(self.bias_offset, (start, self.total_out - stop))  # zeros outside the slice

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return y + self._full_offset().to(y.dtype)

    def delta(self) -> ParamDelta:
        """The offset is exactly a change of the bias."""
        return ParamDelta(bias=self._full_offset())
