"""AdapterFusion (Pfeiffer et al. 2020a): a trained attention over frozen adapters' outputs.

    alpha_i = softmax_i((Q y) . (K o_i) / T)       y: the layer's output, o_i: member i's output
    out     = sum_i alpha_i * (V o_i)

``Q`` and ``K`` start at zero (uniform attention) and ``V`` at the identity, so a fresh fusion is
the plain average of its members; with one member it is exactly that member.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from ..errors import TargetError
from ..layer import ParamDelta
from ..roles import Target
from ..state import get_record
from .base import LayerSite, Method, MethodConfig, finite, require

__all__ = ["METHOD", "Fusion", "FusionModule"]


@dataclass(frozen=True)
class Fusion(MethodConfig):
    """AdapterFusion (Pfeiffer et al. 2020a) over frozen bottleneck adapters ``members``.

    In every layer that holds all members: the ``softmax_i(Q y . K o_i / temperature)``-weighted
    sum of ``V o_i``, where ``o_i`` is member i's output. ``V`` starts as the identity and ``Q`` at
    zero, so a fresh fusion returns the plain average of its members' outputs.
    """

    members: tuple[str, ...] = ()
    temperature: float = 1.0
    type: Literal["fusion"] = dataclasses.field(default="fusion", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(len(self.members) >= 1, "a Fusion needs at least one member adapter")
        require(len(set(self.members)) == len(self.members), f"duplicate members in {self.members}")
        finite(self.temperature, "temperature")
        require(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")


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


class FusionMethod(Method):
    """AdapterFusion: placed where all its members are; neither merges nor combines."""

    type = "fusion"
    order = 70
    config_class = Fusion
    summary = "attention over frozen bottleneck adapters (Pfeiffer et al. 2020a)"
    mergeable = False
    why_not_mergeable = "it is an AdapterFusion: it has no weight delta"

    def check_model(self, model: nn.Module, config: Any) -> None:
        for member in cast(Fusion, config).members:
            get_record(model, member)  # a fusion needs its members in the model first

    def targets(self, model: nn.Module, config: Any) -> list[Target]:
        """The layers that hold every member; members must be fusable (bottleneck) adapters."""
        from . import method_of  # noqa: PLC0415 - the table imports this module

        fusion = cast(Fusion, config)
        records = [get_record(model, member) for member in fusion.members]
        wrong = [r.name for r in records if not method_of(r.config).fusable]
        if wrong:
            raise TargetError(
                f"Fusion combines bottleneck adapters (Houlsby, Pfeiffer); {wrong} are not"
            )
        shared = set.intersection(*({t.module_name for t in r.targets} for r in records))
        if not shared:
            raise TargetError(f"members {list(fusion.members)} share no layer: nothing to fuse")
        return [t for t in records[0].targets if t.module_name in shared]

    def build(self, site: LayerSite, config: Any) -> nn.Module:
        fusion = cast(Fusion, config)
        return FusionModule(
            site.out_features,
            fusion.members,
            temperature=fusion.temperature,
            device=site.device,
            dtype=site.dtype,
        )


METHOD = FusionMethod()
