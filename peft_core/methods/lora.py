"""LoRA (Hu et al. 2021): a trainable low-rank update beside a frozen weight.

    h = W0 x + (alpha / r) * B A x

``A`` (r x in) is Kaiming-uniform and ``B`` (out x r) is zero, so a fresh adapter leaves the
model's outputs exactly unchanged. Parameter names ``lora_A.weight`` / ``lora_B.weight`` are those
of the PEFT file layout. A LoRA may adapt only a slice of a fused projection's outputs (q and v of
GPT-2's ``c_attn``); the delta is then zero outside that slice.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layer import ParamDelta

__all__ = ["LoRAModule"]


class LoRAModule(nn.Module):
    """``y + scaling * B(A(dropout(x)))``, optionally written into ``out_slice`` of ``y``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rank: int,
        scaling: float,
        dropout: float = 0.0,
        out_slice: tuple[int, int] | None = None,
        total_out: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.lora_A = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(rank, out_features, bias=False, device=device, dtype=dtype)
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = scaling
        self.out_slice = out_slice
        self.total_out = total_out if total_out is not None else out_features
        self.merged = False
        if device is None or device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B.weight)

    @property
    def rank(self) -> int:
        """The rank r of the update."""
        return int(self.lora_A.weight.shape[0])

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        x = x.to(self.lora_A.weight.dtype)
        update = self.lora_B(self.lora_A(self.dropout(x))) * self.scaling  # (..., out_slice)
        if self.out_slice is not None:
            start, stop = self.out_slice
            update = F.pad(update, (start, self.total_out - stop))  # zeros outside the slice
        return y + update.to(y.dtype)

    def delta(self) -> ParamDelta:
        """``scaling * B @ A`` placed at ``out_slice`` of an (out, in) weight."""
        weight = (self.lora_B.weight @ self.lora_A.weight) * self.scaling  # (out, in)
        if self.out_slice is not None:
            start, stop = self.out_slice
            weight = F.pad(weight, (0, 0, start, self.total_out - stop))
        return ParamDelta(weight=weight)
