"""BitFit (Ben-Zaken et al. 2022) as bias offsets.

Training the shared base biases in place would tie the base model to one task. Instead each BitFit
adapter is a set of offsets ``db`` (zero at the start) added to the layer output,
``y = W x + b + db``, which equals training ``b``. Merging adds ``db`` to ``b``. Several BitFit
adapters can then coexist, switch and be saved alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import TargetError
from ..layer import ParamDelta
from ..roles import Target
from ..targeting import all_biases, resolve_targets
from .base import LayerSite, Method, MethodConfig, check_targets

__all__ = ["METHOD", "BiasOffset", "BitFit"]

Step = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class BitFit(MethodConfig):
    """BitFit (Ben-Zaken et al. 2022): train only bias terms.

    The shared base biases are never changed in place: the adapter is a set of bias offsets that
    start at zero and are added to the layer outputs (merging adds them to the biases). ``targets``
    ``None`` means every bias of the model body (linear layers and layer norms); a tuple of roles or
    patterns selects a subset, e.g. the paper's best subset ``("q", "ffn_in")``.
    """

    targets: tuple[str, ...] | None = None
    type: Literal["bitfit"] = dataclasses.field(default="bitfit", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.targets is not None:
            check_targets(self.targets)


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

    @staticmethod
    def batched(modules: Sequence[BiasOffset], index: Tensor) -> Step:
        """Each row adds its own adapter's offsets (slot 0: zeros)."""
        offsets = torch.stack(
            [torch.zeros_like(modules[0]._full_offset()), *(m._full_offset() for m in modules)]
        )
        per_row = offsets[index].unsqueeze(1)  # (B, 1, features)

        def step(x: Tensor, y: Tensor) -> Tensor:
            rows = y.reshape(y.shape[0], -1, y.shape[-1])
            return (rows + per_row.to(y.dtype)).reshape(y.shape)

        return step


class BitFitMethod(Method):
    """BitFit: linear in its parameters, so it merges and combines exactly."""

    type = "bitfit"
    order = 40
    config_class = BitFit
    summary = "bias offsets only (Ben-Zaken et al. 2022)"
    combination = "exact"

    def targets(self, model: nn.Module, config: Any) -> list[Target]:
        bitfit = cast(BitFit, config)
        if bitfit.targets is None:
            return all_biases(model)
        return resolve_targets(model, bitfit.targets)

    def build(self, site: LayerSite, config: Any) -> nn.Module:
        if getattr(site.base, "bias", None) is None:
            raise TargetError(f"BitFit target {site.module_name} has no bias term")

        def offset(target: Target) -> nn.Module:
            return BiasOffset(
                site.width(target),
                out_slice=target.out_slice,
                total_out=site.out_features,
                device=site.device,
                dtype=site.dtype,
            )

        return site.one_or_parts(offset)


METHOD = BitFitMethod()
