"""DoRA (Liu et al. 2024): LoRA with the weight split into magnitude and direction.

    W' = m * (W0 + s B A) / ||W0 + s B A||_row        s = alpha / rank, m a trainable vector

``m`` starts at ``||W0||_row`` and ``B`` at zero, so a fresh adapter is exactly the base. As the
paper (section 4.3) and peft do, the norm is treated as a constant in the backward pass. The
forward pass adds ``(m / norm - 1) * W0 x + (m / norm) * s B A x`` to the base output ``W0 x + b``,
which equals ``W' x + b`` without forming ``W'``. Parameter names (``lora_A``, ``lora_B``,
``lora_magnitude_vector``) are the PEFT layout's. DoRA adapts whole layers (no slices of GPT-2's
fused ``c_attn``), and needs its base weight at run time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import AdapterFormatError, ConfigError
from ..layer import AdaptedLayer, ParamDelta
from ..offload import is_offloaded, offloaded_weight_message
from ..stacks import cached_stack
from .base import LayerSite, PeftImport
from .lora import LoRAMethod, LoRAModule, LowRankConfig, lora_scaling

if TYPE_CHECKING:
    from ..state import AdapterRecord

__all__ = ["METHOD", "DoRA", "DoRAModule"]

Step = Callable[[Tensor, Tensor], Tensor]
MAGNITUDE = "lora_magnitude_vector"


@dataclass(frozen=True)
class DoRA(LowRankConfig):
    """Weight-decomposed low-rank adaptation (Liu et al. 2024); LoRA's fields, plus a magnitude."""

    type: Literal["dora"] = dataclasses.field(default="dora", init=False)


class DoRAModule(LoRAModule):
    """A LoRA whose output is rescaled row by row to the learned magnitude."""

    def __init__(
        self,
        base: nn.Module,
        *,
        transposed: bool,
        rank: int,
        scaling: float,
        dropout: float = 0.0,
        dtype: torch.dtype | None = None,
    ) -> None:
        weight = cast(Tensor, base.weight)
        out_features, in_features = weight.shape[::-1] if transposed else weight.shape
        super().__init__(
            in_features,
            out_features,
            rank=rank,
            scaling=scaling,
            dropout=dropout,
            device=weight.device,
            dtype=dtype,
        )
        self.__dict__["_base"] = base  # a reference, not a submodule: the base is not ours to save
        self.transposed = transposed
        with torch.no_grad():
            magnitude = self.base_weight().to(dtype).norm(dim=1)  # B = 0: ||W0 + sBA|| = ||W0||
        self.lora_magnitude_vector = nn.Parameter(magnitude)

    def base_weight(self) -> Tensor:
        """The base layer's weight in (out, in) orientation."""
        weight = cast(Tensor, self.__dict__["_base"].weight)
        return weight.T if self.transposed else weight

    def _scale(self) -> Tensor:
        """``m / ||W0 + s B A||_row``, the norm detached (a constant for the gradient)."""
        weight = self.base_weight().to(self.lora_A.weight.dtype)
        lora_weight = (self.lora_B.weight @ self.lora_A.weight).detach()  # (out, in)
        norm = (weight + self.scaling * lora_weight).norm(dim=1).detach()
        return self.lora_magnitude_vector / norm

    def _bias(self) -> Tensor | None:
        bias = getattr(self.__dict__["_base"], "bias", None)
        return cast(Tensor | None, bias)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        x = x.to(self.lora_A.weight.dtype)
        scale = self._scale()  # (out,)
        dropped = self.dropout(x)
        lora = self.lora_B(self.lora_A(dropped))
        if isinstance(self.dropout, nn.Identity) or not self.training:
            bias = self._bias()
            base_out = y.to(x.dtype) - (bias.to(x.dtype) if bias is not None else 0.0)
        else:  # dropout changes the input: the base term must see the same dropped input
            base_out = F.linear(dropped, self.base_weight().to(x.dtype))
        update = (scale - 1) * base_out + scale * lora * self.scaling
        return y + update.to(y.dtype)

    def delta(self) -> ParamDelta:
        """``m / norm * (W0 + s B A) - W0``, from the current base weight (merge records it)."""
        weight = self.base_weight().to(self.lora_A.weight.dtype)
        scale = self._scale().unsqueeze(1)  # (out, 1)
        lora_weight = self.lora_B.weight @ self.lora_A.weight
        return ParamDelta(weight=(scale - 1) * weight + scale * self.scaling * lora_weight)

    @staticmethod
    def batched(modules: Sequence[LoRAModule], index: Tensor) -> Step:
        """Per-row DoRA: each row's scale and low-rank update, gathered once (slot 0: identity)."""
        doras = [cast(DoRAModule, m) for m in modules]
        lora_step = LoRAModule.batched(doras, index)
        table = cached_stack(doras, lambda: _scale_table(doras), "dora-scales", _dora_tensors)
        scales = table[index].unsqueeze(1)  # (B, 1, out)
        bias = doras[0]._bias()

        def step(x: Tensor, y: Tensor) -> Tensor:
            rows = y.reshape(y.shape[0], -1, y.shape[-1]).to(scales.dtype)
            base_out = rows - (bias.to(rows.dtype) if bias is not None else 0.0)
            # lora_step adds s B A x; DoRA adds scale * sBAx + (scale - 1)(y - b)
            lora = lora_step(x, torch.zeros_like(y)).reshape(rows.shape).to(rows.dtype)
            update = (scales - 1) * base_out + scales * lora
            return y + update.reshape(y.shape).to(y.dtype)

        return step


@torch.no_grad()
def _scale_table(doras: list[DoRAModule]) -> Tensor:
    """Each adapter's row scales (a norm over its whole weight each) in one tensor, slot 0 ones."""
    ones = torch.ones_like(doras[0].lora_magnitude_vector)
    return torch.stack([ones, *(m._scale() for m in doras)])


def _dora_tensors(module: nn.Module) -> tuple[Tensor, ...]:
    """What a DoRA module's scales read: its own weights and the base weight (which a merge
    changes in place). A quantised base weight (a tensor subclass without a storage of its own)
    is left out: nothing merges into it."""
    dora = cast(DoRAModule, module)
    own = (dora.lora_A.weight, dora.lora_B.weight, dora.lora_magnitude_vector)
    base = dora.base_weight()
    return (*own, base) if type(base) in (Tensor, nn.Parameter) else own


class DoRAMethod(LoRAMethod):
    """DoRA: a LoRA variant; merges (not linear: merge records the delta it applied)."""

    config_class: ClassVar[type[Any]] = DoRA
    type = "dora"
    order = 20
    summary = "LoRA with a learned per-row magnitude (Liu et al. 2024)"
    combination = None  # the magnitude normalisation is not linear in the parameters

    def build(self, site: LayerSite, config: Any) -> nn.Module:
        dora = cast(DoRA, config)
        site.require_matrix(dora.type)
        site.whole_layer("DoRA")
        if is_offloaded(site.base):  # its forward normalises by the base weight's row norms
            raise ConfigError(offloaded_weight_message(site.module_name, "DoRA"))
        rank, alpha = site.rank_alpha or (dora.rank, dora.alpha)
        return DoRAModule(
            site.base,
            transposed=site.kind.transposed,
            rank=rank,
            scaling=lora_scaling(rank, alpha, dora.use_rslora),
            dropout=dora.dropout,
            dtype=site.dtype,
        )

    def reads_peft(self, peft_config: dict[str, Any]) -> bool:
        return peft_config.get("peft_type") == "LORA" and bool(peft_config.get("use_dora"))

    def to_peft(
        self, record: AdapterRecord, layers: dict[str, AdaptedLayer]
    ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        fields, tensors = super().to_peft(record, layers)
        for module_name, layer in layers.items():
            module = cast(DoRAModule, layer.adapters[record.name])
            tensors[f"{module_name}.{MAGNITUDE}"] = module.lora_magnitude_vector
        return fields | {"use_dora": True}, tensors

    def from_peft(self, peft_config: dict[str, Any], tensors: dict[str, Tensor]) -> PeftImport:
        imported = super().from_peft(peft_config, tensors)
        for target in imported.targets:
            key = f"{target.module_name}.{MAGNITUDE}"
            if key not in tensors:
                raise AdapterFormatError(
                    f"PEFT DoRA file has no {MAGNITUDE} for {target.module_name}"
                )
            imported.tensors[key] = tensors[key]
        return imported

    def owns_peft_key(self, key: str) -> bool:
        return super().owns_peft_key(key) or key.endswith(f".{MAGNITUDE}")


METHOD = DoRAMethod()
