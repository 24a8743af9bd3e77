"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020).

Placed on the output projection of a sub-layer (attention output, FFN output), inside the residual
and before the layer norm that follows it:

    y' = y + up(act(down(y)))

``down`` projects to the bottleneck width, ``up`` back. ``up`` starts at zero (the limit of
Houlsby's near-identity initialisation), so a fresh adapter returns exactly the base output while
``up`` still receives gradients from the first step. The non-linearity makes it impossible to merge.
The two presets are the same module with different placements and defaults.

``original_ln_before=True`` is the placement AdapterHub's ``adapters`` library uses for its
``seq_bn`` (Pfeiffer) configuration: the adapter sits on the sub-layer's LayerNorm, reads the
normalised sum and adds its update before that same LayerNorm runs again,

    s = y + residual;  out = LN(s + up(act(down(LN(s)))))

It exists so adapters trained there load with the same outputs (``peft_core.adapterhub``).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from ..errors import TargetError
from ..layer import ParamDelta
from ..roles import Target
from ..routing import remap_slots
from ..stacks import cached_stack
from ..targeting import resolve_targets
from .base import LayerSite, Method, MethodConfig, check_width, require

__all__ = ["METHOD", "Bottleneck", "Houlsby", "Pfeiffer", "PostNormBottleneck"]

Activation = Literal["relu", "gelu", "silu", "tanh"]
Step = Callable[[Tensor, Tensor], Tensor]
Update = Callable[[Tensor], Tensor]  # y -> the bottleneck's per-row update

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


@dataclass(frozen=True)
class _Bottleneck(MethodConfig):
    """Shared fields of the bottleneck presets (they differ only in placement)."""

    reduction_factor: int | None = None
    bottleneck: int | None = None
    activation: Activation = "relu"
    # AdapterHub's placement: on the sub-layer's LayerNorm instead of its output projection.
    original_ln_before: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            isinstance(self.original_ln_before, bool),
            f"original_ln_before must be true or false, got {self.original_ln_before!r:.40}",
        )
        require(
            not (self.reduction_factor is not None and self.bottleneck is not None),
            "give either reduction_factor or bottleneck, not both",
        )
        if self.reduction_factor is not None:
            require(
                self.reduction_factor >= 1,
                f"reduction_factor must be >= 1, got {self.reduction_factor}",
            )
            check_width(self.reduction_factor, "reduction_factor")
        if self.bottleneck is not None:
            require(self.bottleneck >= 1, f"bottleneck must be >= 1, got {self.bottleneck}")
            check_width(self.bottleneck, "bottleneck")
        require(
            self.activation in _ACTIVATIONS,
            f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}",
        )

    def bottleneck_size(self, hidden_size: int) -> int:
        """The bottleneck width for a layer of ``hidden_size`` features (default factor 16)."""
        if self.bottleneck is not None:
            return self.bottleneck
        return max(1, hidden_size // (self.reduction_factor or 16))

    @property
    def placements(self) -> tuple[str, ...]:
        """The roles whose outputs pass through a bottleneck."""
        raise NotImplementedError


@dataclass(frozen=True)
class Houlsby(_Bottleneck):
    """Houlsby et al. 2019: a bottleneck after the attention output and one after the FFN output."""

    activation: Activation = "gelu"
    type: Literal["houlsby"] = dataclasses.field(default="houlsby", init=False)

    @property
    def placements(self) -> tuple[str, ...]:
        """The roles whose outputs pass through a bottleneck."""
        return ("o", "ffn_out")


@dataclass(frozen=True)
class Pfeiffer(_Bottleneck):
    """Pfeiffer et al. 2020: one bottleneck after the FFN output of every layer."""

    type: Literal["pfeiffer"] = dataclasses.field(default="pfeiffer", init=False)

    @property
    def placements(self) -> tuple[str, ...]:
        """The roles whose outputs pass through a bottleneck."""
        return ("ffn_out",)


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
        return y + self.update(y)

    def update(self, y: Tensor) -> Tensor:
        """``up(act(down(y)))`` computed in the adapter's dtype, returned in ``y``'s."""
        h = y.to(self.down.weight.dtype)
        return self.up(self.act(self.down(h))).to(y.dtype)

    def delta(self) -> ParamDelta | None:
        """Not linear in the base parameters: cannot be merged."""
        return None

    @staticmethod
    def batched(modules: Sequence[Bottleneck], index: Tensor) -> Step:
        """Per-row bottlenecks, grouped by activation, zero-padded to the widest bottleneck."""
        updates = _per_row_updates(modules, index)

        def step(x: Tensor, y: Tensor) -> Tensor:
            for update in updates:  # usually one: all adapters share an activation
                y = y + update(y)
            return y

        return step


def _per_row_updates(modules: Sequence[Bottleneck], index: Tensor) -> list[Update]:
    """One per-row ``update`` function per activation among ``modules``."""
    by_activation: dict[type, list[int]] = defaultdict(list)
    for slot, m in enumerate(modules, start=1):
        by_activation[type(m.act)].append(slot)
    return [
        _bottleneck_group(
            [modules[s - 1] for s in slots], remap_slots(index, slots, slot_count=len(modules) + 1)
        )
        for slots in by_activation.values()
    ]


class PostNormBottleneck(Bottleneck):
    """A bottleneck on a LayerNorm (``original_ln_before``): ``LN(s + update(LN(s)))``.

    ``x`` is the LayerNorm's input ``s`` (projection output plus residual), ``y`` its output. The
    base LayerNorm is referenced, not owned: it stays out of the adapter's parameters and files.
    """

    def __init__(self, norm: nn.Module, features: int, bottleneck: int, **kwargs: Any) -> None:
        super().__init__(features, bottleneck, **kwargs)
        self.__dict__["norm"] = norm  # bypasses nn.Module registration on purpose

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        norm: nn.Module = self.__dict__["norm"]
        out: Tensor = norm(x + self.update(y))
        return out

    @staticmethod
    def batched(modules: Sequence[Bottleneck], index: Tensor) -> Step:
        """Per-row: rows with an adapter get ``LN(s + update(y))``, the others keep ``y``."""
        norm: nn.Module = modules[0].__dict__["norm"]
        updates = _per_row_updates(modules, index)

        def step(x: Tensor, y: Tensor) -> Tensor:
            total = sum(update(y) for update in updates)
            rows = (index > 0).reshape(-1, *([1] * (y.dim() - 1)))
            return torch.where(rows, norm(x + total), y)

        return step


def _bottleneck_group(members: list[Bottleneck], index: Tensor) -> Update:
    down_w, down_b, up_w, up_b = cached_stack(
        members, lambda: _bottleneck_stack(members), "bottleneck", _bottleneck_weights
    )
    down_rows, down_bias = down_w[index], down_b[index].unsqueeze(1)
    up_rows, up_bias = up_w[index], up_b[index].unsqueeze(1)
    activation = members[0].act

    def update(y: Tensor) -> Tensor:
        y3 = y.reshape(y.shape[0], -1, y.shape[-1]).to(down_rows.dtype)
        hidden = activation(torch.bmm(y3, down_rows) + down_bias)  # zero slots: act(0) = 0
        return (torch.bmm(hidden, up_rows) + up_bias).reshape(y.shape).to(y.dtype)

    return update


@torch.no_grad()
def _bottleneck_stack(members: list[Bottleneck]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Every member's down and up projections in one tensor each (slot 0 all zeros), zero-padded
    to the widest bottleneck, row-major: (slot, features, width) and (slot, width, features), so
    a row's weights are one gather."""
    width = max(m.down.weight.shape[0] for m in members)
    down = members[0].down.weight
    features = members[0].up.weight.shape[0]
    down_w = down.new_zeros(len(members) + 1, features, width)
    down_b = down.new_zeros(len(members) + 1, width)
    up_w = down.new_zeros(len(members) + 1, width, features)
    up_b = down.new_zeros(len(members) + 1, features)
    for slot, m in enumerate(members, start=1):
        size = m.down.weight.shape[0]
        down_w[slot, :, :size], down_b[slot, :size] = m.down.weight.t(), m.down.bias
        up_w[slot, :size], up_b[slot] = m.up.weight.t(), m.up.bias
    return down_w, down_b, up_w, up_b


def _bottleneck_weights(module: nn.Module) -> tuple[Tensor, ...]:
    """What :func:`_bottleneck_stack` reads of a bottleneck (see ``lora._lora_weights``)."""
    children = module._modules
    down, up = children["down"]._parameters, children["up"]._parameters  # type: ignore[union-attr]
    return down["weight"], down["bias"], up["weight"], up["bias"]  # type: ignore[return-value]


class _BottleneckMethod(Method):
    mergeable = False
    why_not_mergeable = (
        "its non-linear bottleneck has no weight delta, so it cannot be merged (LoRA, DoRA, IA3 "
        "and BitFit merge for zero-cost serving)"
    )
    fusable = True
    combination = "average"  # approximate: the bottleneck is non-linear

    def targets(self, model: nn.Module, config: Any) -> list[Target]:
        preset = cast(_Bottleneck, config)
        found = resolve_targets(model, preset.placements)
        if not preset.original_ln_before:
            return found
        return [_norm_after(model, target, preset.type) for target in found]

    def build(self, site: LayerSite, config: Any) -> nn.Module:
        preset = cast(_Bottleneck, config)
        size = preset.bottleneck_size(site.out_features)
        if preset.original_ln_before:
            if not isinstance(site.base, nn.LayerNorm):
                raise TargetError(
                    f"{preset.type} with original_ln_before adapts LayerNorms, but "
                    f"{site.module_name} is a {site.kind.name}"
                )
            return PostNormBottleneck(
                site.base,
                site.out_features,
                size,
                activation=preset.activation,
                device=site.device,
                dtype=site.dtype,
            )
        site.require_matrix(preset.type)
        return Bottleneck(
            site.out_features,
            size,
            activation=preset.activation,
            device=site.device,
            dtype=site.dtype,
        )


def _norm_after(model: nn.Module, projection: Target, method: str) -> Target:
    """The LayerNorm that follows a sub-layer's output projection (``output.dense`` ->
    ``output.LayerNorm`` in the BERT family): where ``original_ln_before`` places the adapter."""
    parent = projection.module_name.rsplit(".", 1)[0]
    name = f"{parent}.LayerNorm"
    try:
        norm = model.get_submodule(name)
    except AttributeError:
        norm = None
    norm = getattr(norm, "base_layer", norm)  # already wrapped by another adapter
    if not isinstance(norm, nn.LayerNorm):
        raise TargetError(
            f"{method} with original_ln_before needs a LayerNorm beside {projection.module_name} "
            f"(a post-norm block like BERT's); {name} is not one. Use original_ln_before: false"
        )
    return Target(name, role=projection.role)


class HoulsbyMethod(_BottleneckMethod):
    """Houlsby: bottlenecks after attention and after the FFN."""

    type = "houlsby"
    order = 50
    config_class = Houlsby
    summary = "bottlenecks after attention and FFN outputs (Houlsby et al. 2019)"


class PfeifferMethod(_BottleneckMethod):
    """Pfeiffer: one bottleneck after the FFN."""

    type = "pfeiffer"
    order = 60
    config_class = Pfeiffer
    summary = "one bottleneck after the FFN output (Pfeiffer et al. 2020)"


METHOD = (HoulsbyMethod(), PfeifferMethod())
