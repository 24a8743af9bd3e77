"""(IA)^3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
In-Context Learning"): learned vectors that rescale activations.

    attention keys / values:   y' = l * (W x + b)          l: (out,) scales the layer's output
    feed-forward:              y' = W (l * x) + b          l: (in,)  scales the layer's input

Every ``l`` starts at one, so a fresh adapter is exactly the base. The feed-forward form is
computed as ``y + W ((l - 1) * x)``: the base output ``y`` is reused, at the cost of one extra
matrix product on those layers. Merging multiplies the weight (and, for outputs, the bias) by
``l``. Parameter ``ia3_l`` has peft's shapes, ``(out, 1)`` and ``(1, in)``, so PEFT files
load both ways.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import AdapterFormatError, ConfigError, TargetError
from ..layer import AdaptedLayer, ParamDelta
from ..offload import current_weight
from ..roles import ALL_LINEAR, Target
from ..targeting import resolve_targets
from .base import LayerSite, Method, MethodConfig, PeftImport, check_targets, require
from .lora import peft_targets
from .parts import SliceParts

if TYPE_CHECKING:
    from ..state import AdapterRecord

__all__ = ["IA3", "METHOD", "IA3Module"]

Step = Callable[[Tensor, Tensor], Tensor]
FEEDFORWARD = "feedforward"  # the role of a target whose input (not output) is rescaled


@dataclass(frozen=True)
class IA3(MethodConfig):
    """(IA)^3: rescale the outputs of ``targets`` and the inputs of ``feedforward``.

    ``targets`` (roles or patterns) must include the ``feedforward`` ones; the paper's choice is
    keys, values and the FFN's inner activation (the input of ``ffn_out``).
    """

    targets: tuple[str, ...] = ("k", "v", "ffn_out")
    feedforward: tuple[str, ...] = ("ffn_out",)
    type: Literal["ia3"] = dataclasses.field(default="ia3", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_targets(self.targets)
        require(isinstance(self.feedforward, tuple), "feedforward must be a tuple of strings")
        outside = [f for f in self.feedforward if f not in self.targets]
        every_linear = ALL_LINEAR in self.targets  # holds whatever feedforward names
        require(
            every_linear or not outside, f"feedforward {outside} must also be listed in targets"
        )


class IA3Module(nn.Module):
    """One learned scaling vector on a layer's output (or, ``feedforward``, its input)."""

    def __init__(
        self,
        base: nn.Module,
        features: int,
        *,
        feedforward: bool,
        transposed: bool,
        out_slice: tuple[int, int] | None = None,
        total_out: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        shape = (1, features) if feedforward else (features, 1)
        self.ia3_l = nn.Parameter(torch.ones(shape, device=device, dtype=dtype))
        self.feedforward = feedforward
        self.transposed = transposed
        self.out_slice = out_slice
        self.total_out = total_out if total_out is not None else features
        self.__dict__["_base"] = base  # a reference, not a submodule: the base is not ours to save
        self.merged = False

    def base_weight(self) -> Tensor:
        """The base layer's weight in (out, in) orientation."""
        weight = current_weight(self.__dict__["_base"])  # brought in if accelerate offloads it
        return weight.T if self.transposed else weight

    def output_scale(self) -> Tensor:
        """The output scale over the layer's full width (ones outside a slice)."""
        scale = self.ia3_l.reshape(-1)
        if self.out_slice is None:
            return scale
        start, stop = self.out_slice
        return F.pad(scale - 1, (start, self.total_out - stop)) + 1

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if self.feedforward:
            scaled = x.to(self.ia3_l.dtype) * (self.ia3_l.reshape(-1) - 1)  # (..., in)
            return y + F.linear(scaled, self.base_weight().to(scaled.dtype)).to(y.dtype)
        return (y.to(self.ia3_l.dtype) * self.output_scale()).to(y.dtype)

    def delta(self) -> ParamDelta:
        """``W (l - 1)`` (columns for inputs, rows and the bias for outputs), from the current W."""
        weight = self.base_weight().to(self.ia3_l.dtype)
        if self.feedforward:
            return ParamDelta(weight=weight * (self.ia3_l - 1))  # (out, in) * (1, in)
        scale = self.output_scale() - 1
        bias = cast(Tensor | None, getattr(self.__dict__["_base"], "bias", None))
        return ParamDelta(
            weight=weight * scale.unsqueeze(1),
            bias=bias.to(scale.dtype) * scale if bias is not None else None,
        )

    @staticmethod
    def batched(modules: Sequence[IA3Module], index: Tensor) -> Step:
        """Per-row scales: outputs first, then inputs (each group gathered once; slot 0 = ones)."""
        outputs = [m for m in modules if not m.feedforward]
        inputs = [m for m in modules if m.feedforward]
        slots = {id(m): slot for slot, m in enumerate(modules, start=1)}
        ones_out = modules[0].output_scale().new_ones(modules[0].total_out)

        def gather(members: list[IA3Module], vectors: list[Tensor], ones: Tensor) -> Tensor:
            table = torch.stack([ones, *vectors])  # (members + 1, features)
            position = [0] * (len(modules) + 1)  # on the host: one copy, not one per member
            for i, m in enumerate(members, start=1):
                position[slots[id(m)]] = i
            rows = torch.tensor(position, device=index.device)[index]
            return table[rows].unsqueeze(1)  # (B, 1, features)

        out_rows = (
            gather(outputs, [m.output_scale() for m in outputs], ones_out) if outputs else None
        )
        in_rows = None
        if inputs:
            vectors = [m.ia3_l.reshape(-1) for m in inputs]
            in_rows = gather(inputs, vectors, torch.ones_like(vectors[0]))

        def step(x: Tensor, y: Tensor) -> Tensor:
            rows = y.reshape(y.shape[0], -1, y.shape[-1])
            if out_rows is not None:
                rows = rows * out_rows.to(rows.dtype)
            if in_rows is not None:
                weight = inputs[0].base_weight()  # per call: an offloaded one is brought in
                x_rows = x.reshape(x.shape[0], -1, x.shape[-1]).to(in_rows.dtype)
                rows = rows + F.linear(x_rows * (in_rows - 1), weight.to(in_rows.dtype)).to(
                    rows.dtype
                )
            return rows.reshape(y.shape)

        return step


class IA3Method(Method):
    """(IA)^3: merges (the delta depends on W, so merge records it); reads and writes PEFT."""

    type = "ia3"
    order = 30
    config_class = IA3
    summary = "learned rescaling of keys, values and FFN activations (Liu et al. 2022)"
    combination = "average"  # outputs are products of scales across layers: approximate
    peft_type = "IA3"

    def targets(self, model: nn.Module, config: Any) -> list[Target]:
        ia3 = cast(IA3, config)
        feedforward = (
            {t.module_name for t in resolve_targets(model, ia3.feedforward)}
            if ia3.feedforward
            else set()
        )
        resolved = resolve_targets(model, ia3.targets)
        return [
            Target(t.module_name, t.out_slice, FEEDFORWARD) if t.module_name in feedforward else t
            for t in resolved
        ]

    def build(self, site: LayerSite, config: Any) -> nn.Module:
        site.require_matrix("ia3")
        feedforward = any(t.role == FEEDFORWARD for t in site.targets)
        if feedforward and site.sliced:
            raise TargetError(
                f"(IA)^3 rescales the whole input of feed-forward layers; {site.module_name} "
                "is a fused projection and cannot be a feed-forward target"
            )

        def one(target: Target) -> nn.Module:
            return IA3Module(
                site.base,
                site.in_features if feedforward else site.width(target),
                feedforward=feedforward,
                transposed=site.kind.transposed,
                out_slice=target.out_slice,
                total_out=site.out_features,
                device=site.device,
                dtype=site.dtype,
            )

        return site.one_or_parts(one)

    def owns_peft_key(self, key: str) -> bool:
        return key.endswith(".ia3_l")

    def to_peft(
        self, record: AdapterRecord, layers: dict[str, AdaptedLayer]
    ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        tensors: dict[str, Tensor] = {}
        feedforward: list[str] = []
        for module_name, layer in layers.items():
            adapter = layer.adapters[record.name]
            parts = list(adapter.parts.values()) if isinstance(adapter, SliceParts) else [adapter]
            modules = [cast(IA3Module, p) for p in parts]
            if modules[0].feedforward:
                feedforward.append(module_name)
                tensors[f"{module_name}.ia3_l"] = modules[0].ia3_l
            else:  # slices of a fused layer become one vector over its full width
                scale = modules[0].output_scale()
                for part in modules[1:]:
                    scale = scale * part.output_scale()
                tensors[f"{module_name}.ia3_l"] = scale.unsqueeze(1)
        # Full module names in both lists: peft wants feedforward_modules within target_modules.
        fields = {
            "target_modules": sorted(layers),
            "feedforward_modules": sorted(feedforward),
            "init_ia3_weights": True,
        }
        return fields, tensors

    def from_peft(self, peft_config: dict[str, Any], tensors: dict[str, Tensor]) -> PeftImport:
        vectors = {k.removesuffix(".ia3_l"): t for k, t in tensors.items() if self.owns_peft_key(k)}
        if not vectors:
            raise AdapterFormatError("PEFT IA3 file has no ia3_l tensors")
        rule = peft_config.get("feedforward_modules") or []
        targets = [
            Target(m, None, FEEDFORWARD if _is_feedforward(m, rule) else None)
            for m in sorted(vectors)
        ]
        for target in targets:
            shape = tuple(vectors[target.module_name].shape)
            feedforward = target.role == FEEDFORWARD
            if len(shape) != 2 or shape[0 if feedforward else 1] != 1:
                raise AdapterFormatError(
                    f"{target.module_name}: ia3_l has shape {shape}; expected "
                    f"{'(1, in)' if feedforward else '(out, 1)'}"
                )
        try:
            config = IA3(targets=peft_targets(peft_config.get("target_modules")), feedforward=())
        except ConfigError as exc:
            raise AdapterFormatError(f"PEFT IA3 config: {exc}") from exc
        ours = {f"{m}.ia3_l": t for m, t in vectors.items()}
        return PeftImport(config, targets, ours)


def _is_feedforward(module: str, rule: str | list[str]) -> bool:
    """peft's rule: a regex full match for a string, a name suffix for a list."""
    if isinstance(rule, str):
        return re.fullmatch(rule, module) is not None
    return any(module.endswith(suffix) for suffix in rule)


METHOD = IA3Method()
