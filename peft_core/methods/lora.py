"""LoRA (Hu et al. 2021): a trainable low-rank update beside a frozen weight.

    h = W0 x + (alpha / r) * B A x

``A`` (r x in) is Kaiming-uniform and ``B`` (out x r) is zero, so a fresh adapter leaves the
model's outputs exactly unchanged. Parameter names ``lora_A.weight`` / ``lora_B.weight`` are those
of the PEFT file layout. A LoRA may adapt only a slice of a fused projection's outputs (q and v of
GPT-2's ``c_attn``); the delta is then zero outside that slice.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import AdapterFormatError, ConfigError
from ..layer import AdaptedLayer, ParamDelta
from ..offload import current_weight
from ..quantize import dequantized, is_quantized
from ..roles import Target
from ..stacks import cached_stack
from ..state import adapter_layers
from .base import (
    LayerSite,
    Method,
    MethodConfig,
    PeftImport,
    check_targets,
    check_width,
    finite,
    require,
)
from .hf_peft import base_rewriting_init
from .parts import SliceParts

if TYPE_CHECKING:
    from ..state import AdapterRecord

__all__ = [
    "METHOD",
    "LoRA",
    "LoRAMethod",
    "LoRAModule",
    "LowRankConfig",
    "lora_parts",
    "lora_scaling",
    "with_one_rank",
]

Step = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class LowRankConfig(MethodConfig):
    """Fields shared by LoRA and its variants (DoRA)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "v")
    use_rslora: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.rank >= 1, f"{type(self).__name__} rank must be >= 1, got {self.rank}")
        check_width(self.rank, f"{type(self).__name__} rank")
        finite(self.alpha, f"{type(self).__name__} alpha")
        require(self.alpha > 0, f"{type(self).__name__} alpha must be > 0, got {self.alpha}")
        require(
            0.0 <= self.dropout < 1.0,
            f"{type(self).__name__} dropout must be in [0, 1), got {self.dropout}",
        )
        check_targets(self.targets)

    @property
    def scaling(self) -> float:
        """The factor applied to ``B A x``."""
        return lora_scaling(self.rank, self.alpha, self.use_rslora)


LoRAInit = Literal["default", "pissa", "olora"]


@dataclass(frozen=True)
class LoRA(LowRankConfig):
    """Low-rank adaptation (Hu et al. 2021): ``h = W0 x + (alpha / rank) * B A x``.

    ``targets`` are roles (``q``, ``k``, ``v``, ``o``, ``ffn_in``, ``ffn_out``) resolved per model
    family, or module-name patterns (a suffix such as ``"query"`` or a full regular expression).
    ``use_rslora`` scales by ``alpha / sqrt(rank)`` instead (Kalajdzievski 2023), as peft does.
    ``init``: ``default`` (B = 0), or ``pissa`` (Meng et al. 2024: B A starts as the weight's
    top-``rank`` singular directions) or ``olora`` (Büyükakyüz 2024: its QR factors), which
    train on what peft trains on but leave the frozen base untouched (see :class:`LoRAModule`).
    """

    init: LoRAInit = "default"
    # pissa: 0 = an exact SVD; N > 0 = a randomised one with N subspace iterations (peft's
    # pissa_niter_N), for a large model's wide layers, where an exact SVD is slow
    init_iterations: int = 0
    type: Literal["lora"] = dataclasses.field(default="lora", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()  # init is one of LoRAInit's (its annotation)
        require(
            isinstance(self.init_iterations, int) and 0 <= self.init_iterations <= 100,
            f"LoRA init_iterations must be a whole number from 0 to 100, got "
            f"{self.init_iterations!r:.40}",
        )
        require(
            self.init_iterations == 0 or self.init == "pissa",
            "LoRA init_iterations is for init: pissa (a randomised SVD); remove it",
        )


def lora_scaling(rank: int, alpha: float, use_rslora: bool) -> float:
    """``alpha / rank``, or ``alpha / sqrt(rank)`` for rsLoRA."""
    return alpha / (rank**0.5 if use_rslora else rank)


class LoRAModule(nn.Module):
    """``y + scaling * B(A(dropout(x)))``, optionally written into ``out_slice`` of ``y``.

    A LoRA started from the weight (PiSSA, OLoRA) has a *frozen start*: peft subtracts the
    starting ``B0 A0`` from the base weight, which here stays frozen and shared by every adapter.
    Instead the module is a LoRA of twice the rank, ``[B, -B0] [A; A0]``, whose second half is
    held at the start (no gradient; restored after each optimiser step, which a weight decay
    would move): it computes ``W x + s (B A - B0 A0) x``, what peft's ``W_res x + s B A x`` is,
    with the same gradients, and everything else (merge, files, per-row batches) sees a plain
    LoRA of rank ``2r`` — what peft's conversion of a PiSSA adapter writes too.
    """

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
        self.frozen_rank = 0  # the trailing ranks held at a frozen start (PiSSA, OLoRA)
        if device is None or device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B.weight)

    @property
    def rank(self) -> int:
        """The rank r of the update."""
        return int(self.lora_A.weight.shape[0])

    @torch.no_grad()
    def start_from(self, a: Tensor, b: Tensor) -> None:
        """Train from ``B A = b a`` (rank half of this module's) while computing nothing at the
        start: the second half is ``[-b, a]``, frozen."""
        half = a.shape[0]
        if 2 * half != self.rank:
            raise ConfigError(f"a start of rank {half} needs a module of rank {2 * half}")
        self.lora_A.weight.copy_(torch.cat([a, a]))
        self.lora_B.weight.copy_(torch.cat([b, -b], dim=1))
        self.frozen_rank = half
        dtype = self.lora_A.weight.dtype
        self.register_buffer("start_A", a.to(dtype).clone(), persistent=False)
        self.register_buffer("start_B", (-b).to(dtype).clone(), persistent=False)

    def frozen_numel(self) -> int:
        """Elements of the trainable weights held at the start: they take no gradient, so a
        count of what trains leaves them out."""
        if not self.lora_A.weight.requires_grad:
            return 0
        return self.frozen_rank * (self.lora_A.weight.shape[1] + self.lora_B.weight.shape[0])

    @torch.no_grad()
    def hold_start(self) -> None:
        """Put the frozen half back where it started (after an optimiser step). Under FSDP2
        each process holds some rows of A and B (a DTensor split on dim 0) and puts back its
        own part of the start."""
        if not getattr(self, "frozen_rank", 0):
            return
        trained = self.rank - self.frozen_rank
        a, first_row = _local_rows(self.lora_A.weight)
        low, high = max(first_row, trained), min(first_row + a.shape[0], self.rank)
        if low < high:  # the rows of A's start this process holds
            a[low - first_row : high - first_row].copy_(
                cast(Tensor, self.start_A)[low - trained : high - trained]
            )
        b, first_row = _local_rows(self.lora_B.weight)
        b[:, trained:].copy_(cast(Tensor, self.start_B)[first_row : first_row + b.shape[0]])

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        x = x.to(self.lora_A.weight.dtype)
        if self.frozen_rank and torch.is_grad_enabled():
            update = self._with_frozen_start(x) * self.scaling
        else:
            update = self.lora_B(self.lora_A(self.dropout(x))) * self.scaling  # (..., out_slice)
        if self.out_slice is not None:
            start, stop = self.out_slice
            update = F.pad(update, (start, self.total_out - stop))  # zeros outside the slice
        return y + update.to(y.dtype)

    def _with_frozen_start(self, x: Tensor) -> Tensor:
        """``B A dropout(x) - B0 A0 x``: the start takes no gradient and, like the residual
        weight peft leaves in the base, sees no dropout."""
        trained = self.rank - self.frozen_rank
        a, b = self.lora_A.weight, self.lora_B.weight
        hidden = torch.cat(
            [F.linear(self.dropout(x), a[:trained]), F.linear(x, a[trained:].detach())], dim=-1
        )
        return F.linear(hidden, torch.cat([b[:, :trained], b[:, trained:].detach()], dim=1))

    def delta(self) -> ParamDelta:
        """``scaling * B @ A`` placed at ``out_slice`` of an (out, in) weight."""
        weight = (self.lora_B.weight @ self.lora_A.weight) * self.scaling  # (out, in)
        if self.out_slice is not None:
            start, stop = self.out_slice
            weight = F.pad(weight, (0, 0, start, self.total_out - stop))
        return ParamDelta(weight=weight)

    @staticmethod
    def batched(modules: Sequence[LoRAModule], index: Tensor) -> Step:
        """One step for a batch whose row ``i`` uses ``modules[index[i] - 1]`` (0: none).

        The adapters' weights are stacked once (slot 0 all zeros), LoRAs of lower rank
        zero-padded to the largest rank: zero rows and columns add exactly nothing.
        """
        first = modules[0]
        a, b = cached_stack(modules, lambda: _row_major_stack(modules), parameters=_lora_weights)
        a_rows, b_rows = a[index], b[index]  # (B, in, r) and (B, r, out_slice): each row's own
        padding = (
            (first.out_slice[0], first.total_out - first.out_slice[1]) if first.out_slice else None
        )

        def step(x: Tensor, y: Tensor) -> Tensor:
            rows = x.reshape(x.shape[0], -1, x.shape[-1]).to(a_rows.dtype)
            update = torch.bmm(torch.bmm(rows, a_rows), b_rows)  # (B, T, w)
            if padding is not None:
                update = F.pad(update, padding)
            return y + update.reshape(y.shape).to(y.dtype)

        return step

    @staticmethod
    def segmented(modules: Sequence[LoRAModule], index: Tensor) -> Step:
        """Like :meth:`batched`, SGMV-style: the rows sorted by adapter, and each adapter's rows
        one matrix product with its own weights (``torch._grouped_mm``: one grouped-GEMM kernel
        for every adapter on Hopper GPUs). Nothing is gathered per row; on a CUDA device the
        products run in the activations' half precision (the kernel's inputs; it accumulates
        in float32), elsewhere in the adapter's dtype.
        """
        first = modules[0]
        order = torch.argsort(index, stable=True)  # rows grouped by slot, slot order
        inverse = torch.argsort(order)
        rows_per_slot = torch.bincount(index, minlength=len(modules) + 1)
        padding = (
            (first.out_slice[0], first.total_out - first.out_slice[1]) if first.out_slice else None
        )

        # Looked up once per block, not per call: generate calls every layer once per new token,
        # and gather's per-row weights are likewise fixed when the block is entered.
        stacks: dict[torch.dtype, tuple[Tensor, Tensor]] = {}
        ends_for: dict[int, Tensor] = {}  # tokens per row -> each slot's end row, cumulative

        def step(x: Tensor, y: Tensor) -> Tensor:
            dtype = x.dtype if x.is_cuda and x.dtype != torch.float32 else first.lora_A.weight.dtype
            if dtype not in stacks:
                stacks[dtype] = cached_stack(
                    modules, lambda: _grouped_stack(modules, dtype), dtype, _lora_weights
                )
            a, b = stacks[dtype]
            rows = x.reshape(x.shape[0], -1, x.shape[-1])
            tokens = rows.shape[1]
            sorted_rows = rows[order].reshape(-1, rows.shape[-1]).to(dtype)
            if tokens not in ends_for:
                ends_for[tokens] = (rows_per_slot * tokens).cumsum(0).to(torch.int32)
            ends = ends_for[tokens]
            low_rank = torch._grouped_mm(sorted_rows, a, offs=ends)  # (N, r)
            update = torch._grouped_mm(low_rank, b, offs=ends)  # (N, out_slice)
            update = update.reshape(rows.shape[0], tokens, -1)[inverse]
            if padding is not None:
                update = F.pad(update, padding)
            return y + update.reshape(y.shape).to(y.dtype)

        return step

    @staticmethod
    def triton(modules: Sequence[LoRAModule], slots: list[int], device: torch.device) -> Step:
        """Like :meth:`segmented`, through :mod:`peft_core.lora_triton`'s kernels: rows stay in
        place, float32 weights and low-rank intermediate, the update added into ``y``.
        ``slots`` is :meth:`batched`'s index as a host list."""
        from ..lora_triton import segments, shrink_expand  # noqa: PLC0415 (triton is optional)

        first = modules[0]
        column = first.out_slice[0] if first.out_slice else 0
        a, b = cached_stack(modules, lambda: _row_major_stack(modules), parameters=_lora_weights)
        routed = tuple(slots)

        def step(x: Tensor, y: Tensor) -> Tensor:
            tokens_per_row = x.numel() // max(1, x.shape[0] * x.shape[-1])
            where = segments(routed, tokens_per_row, device)
            return shrink_expand(x, y, a, b, where, column=column)

        return step


def _lora_weights(module: nn.Module) -> tuple[Tensor, Tensor]:
    """What :func:`_stack` reads of a LoRA module (its ``scaling`` changes only with them).
    Plain dict lookups: ``nn.Module`` attributes are a Python call each, and this runs for every
    adapter of every layer whenever ``per_row`` is entered."""
    children = module._modules
    return children["lora_A"]._parameters["weight"], children["lora_B"]._parameters["weight"]  # type: ignore[union-attr,return-value]


@torch.no_grad()
def _row_major_stack(modules: Sequence[LoRAModule]) -> tuple[Tensor, Tensor]:
    """:func:`_stack` as (slot, in, r) and (slot, r, out), contiguous: a row's gathered weights
    are then ready for ``bmm`` with no copy of their own."""
    a, b = _stack(modules)
    return a.transpose(1, 2).contiguous(), b.transpose(1, 2).contiguous()


@torch.no_grad()
def _grouped_stack(modules: Sequence[LoRAModule], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """:func:`_stack`'s weights as ``_grouped_mm``'s right-hand sides, (slot, in, r) and
    (slot, r, out), in ``dtype``: transposed views of the (out, in) stacks, the column-major
    layout the grouped kernels take (as for MoE experts' weights)."""
    a, b = _stack(modules)
    # every stride a multiple of 16 bytes (the kernels' rule): zero ranks pad, adding nothing
    extra = -a.shape[1] % (16 // a.new_empty((), dtype=dtype).element_size())
    a, b = F.pad(a, (0, 0, 0, extra)), F.pad(b, (0, extra))
    return a.to(dtype).transpose(1, 2), b.to(dtype).transpose(1, 2)


@torch.no_grad()
def _stack(modules: Sequence[LoRAModule]) -> tuple[Tensor, Tensor]:
    """Every adapter's A and scaled B in one tensor each (slot 0 all zeros), zero-padded to the
    largest rank."""
    rank = max(m.rank for m in modules)
    weight_a, weight_b = modules[0].lora_A.weight, modules[0].lora_B.weight
    a = weight_a.new_zeros(len(modules) + 1, rank, weight_a.shape[1])
    b = weight_b.new_zeros(len(modules) + 1, weight_b.shape[0], rank)
    for slot, m in enumerate(modules, start=1):
        a[slot, : m.rank] = m.lora_A.weight
        b[slot, :, : m.rank] = m.lora_B.weight * m.scaling
    return a, b


def lora_parts(adapter: nn.Module) -> list[LoRAModule]:
    """The LoRA modules of one layer's adapter (one, or one per slice of a fused layer)."""
    modules = list(adapter.parts.values()) if isinstance(adapter, SliceParts) else [adapter]
    return [cast(LoRAModule, m) for m in modules]


class LoRAMethod(Method):
    """LoRA: merges exactly, combines exactly by concatenation, reads and writes PEFT files."""

    config_class: ClassVar[type[Any]] = LoRA
    type = "lora"
    order = 10
    summary = "low-rank update B A beside a frozen weight (Hu et al. 2021)"
    combination: ClassVar[Literal["exact", "average"] | None] = "exact"
    peft_type = "LORA"
    # PEFT tensor keys this method owns: <module>.lora_A[.<adapter>].weight and the like.
    peft_key: ClassVar[re.Pattern[str]] = re.compile(
        r"^(?P<module>.+)\.(?P<param>lora_[AB])(?:\.[^.]+)?\.weight$"
    )

    def build(self, site: LayerSite, config: Any) -> nn.Module:
        lora = cast(LowRankConfig, config)
        site.require_matrix(lora.type)
        rank, alpha = site.rank_alpha or (lora.rank, lora.alpha)
        scaling = lora_scaling(rank, alpha, lora.use_rslora)
        init = getattr(lora, "init", "default")
        if init != "default":
            _check_startable(site, init)

        def one(target: Target) -> nn.Module:
            module = LoRAModule(
                site.in_features,
                site.width(target),
                rank=rank if init == "default" else 2 * rank,
                scaling=scaling,
                dropout=lora.dropout,
                out_slice=target.out_slice,
                total_out=site.out_features,
                device=site.device,
                dtype=site.dtype,
            )
            if init != "default" and site.device.type != "meta":
                iterations = getattr(lora, "init_iterations", 0)
                weight = _weight_rows(site, target)
                module.start_from(*_start(weight, rank, scaling, init, iterations))
            elif init != "default":  # a plan on the meta device: the shapes, no decomposition
                module.frozen_rank = rank
            return module

        return site.one_or_parts(one)

    def saved_config(self, config: Any) -> Any:
        """A LoRA started from the weight is saved as what it is: a plain LoRA of twice the
        rank (the same scaling), which loads without the weight's decomposition."""
        if getattr(config, "init", "default") == "default":
            return config
        lora = cast(LoRA, config)
        rank = _stored_rank(lora)
        alpha = lora.scaling * (rank**0.5 if lora.use_rslora else rank)
        return dataclasses.replace(lora, rank=rank, alpha=alpha, init="default")

    def after_optimizer_step(self, model: nn.Module, name: str, step: int) -> None:
        """A frozen start goes back where it was (a weight decay moves every parameter)."""
        for _, layer in adapter_layers(model, name):
            for part in lora_parts(layer.adapters[name]):
                part.hold_start()

    # -- combine_adapters -------------------------------------------------------------------------

    def combined_config(self, configs: Sequence[Any], *, how: str, rank: int | None) -> Any:
        """``cat``: the sum of ranks, scaling 1 (scalings folded into B); ``svd``: ``rank``."""
        if how not in ("cat", "svd"):
            raise ConfigError(f"unknown how={how!r}; expected 'cat' or 'svd'")
        ranks = [cast(LowRankConfig, self.saved_config(c)).rank for c in configs]
        new_rank = rank if how == "svd" else sum(ranks)
        assert new_rank is not None
        first = cast(LowRankConfig, self.saved_config(configs[0]))  # a plain LoRA, no start
        return dataclasses.replace(first, rank=new_rank, alpha=float(new_rank), use_rslora=False)

    def combined_ranks(
        self,
        config: Any,
        sources_at: Mapping[str, Sequence[AdapterRecord]],
        *,
        how: str,
        uniform: bool = False,
    ) -> tuple[Any, dict[str, tuple[int, float]]]:
        """``cat``: each module's rank is the sum of the ranks of the sources there (scaling 1,
        so alpha = rank); the most common one is the config's, the rest are overrides
        (``uniform``: the largest everywhere, the rest zero-padded)."""
        if how != "cat":
            return config, {}
        ranks = {m: sum(_rank_at(r, m) for r in present) for m, present in sources_at.items()}
        if uniform:
            ranks = dict.fromkeys(ranks, max(ranks.values()))
        common, _ = Counter(ranks.values()).most_common(1)[0]
        config = dataclasses.replace(config, rank=common, alpha=float(common))
        return config, {m: (rank, float(rank)) for m, rank in ranks.items() if rank != common}

    @torch.no_grad()
    def combine_modules(
        self, target: nn.Module, sources: Sequence[nn.Module], factors: Sequence[float], how: str
    ) -> float:
        """``cat`` (exact): A stacks the A's, B stacks ``w_i * scaling_i * B_i``.
        ``svd`` (lossy): ``sum_i w_i delta_i`` truncated by SVD; returns the relative error."""
        worst = 0.0
        for position, part in enumerate(lora_parts(target)):
            parts = [lora_parts(s)[position] for s in sources]
            if how == "cat":  # ranks beyond the sources' sum (a uniform rank) stay zero
                a = torch.cat([p.lora_A.weight for p in parts])
                b = torch.cat(
                    [w * p.scaling * p.lora_B.weight for w, p in zip(factors, parts, strict=True)],
                    dim=1,
                )
                part.lora_A.weight.zero_()
                part.lora_B.weight.zero_()
                part.lora_A.weight[: a.shape[0]].copy_(a)
                part.lora_B.weight[:, : b.shape[1]].copy_(b)
                part.scaling = 1.0
            else:
                worst = max(worst, _svd_into(part, parts, factors))
        return worst

    def combination_name(self, how: str, rank: int | None) -> str:
        return "concatenation" if how == "cat" else f"svd rank {rank}"

    # -- the PEFT layout --------------------------------------------------------------------------

    def reads_peft(self, peft_config: dict[str, Any]) -> bool:
        return peft_config.get("peft_type") == "LORA" and not peft_config.get("use_dora")

    def owns_peft_key(self, key: str) -> bool:
        return self.peft_key.match(key) is not None

    def to_peft(
        self, record: AdapterRecord, layers: dict[str, AdaptedLayer]
    ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """GPT-2's sliced q/v LoRAs become one LoRA of rank ``2r`` on ``c_attn`` whose ``B`` is
        block-structured (zero rows for k): the same delta, exactly."""
        config = cast(LowRankConfig, record.config)
        tensors: dict[str, Tensor] = {}
        ranks: dict[str, tuple[int, float]] = {}
        for module_name, layer in layers.items():
            a, b, scaling = _as_single_lora(layer.adapters[record.name])
            tensors[f"{module_name}.lora_A.weight"] = a
            tensors[f"{module_name}.lora_B.weight"] = b
            rank = int(a.shape[0])
            ranks[module_name] = (rank, scaling * (rank**0.5 if config.use_rslora else rank))
        (default_rank, default_alpha), _ = Counter(ranks.values()).most_common(1)[0]
        fields = {
            "r": default_rank,
            "lora_alpha": default_alpha,
            "lora_dropout": config.dropout,
            "bias": "none",
            "use_rslora": config.use_rslora,
            "use_dora": False,
            "init_lora_weights": True,
            "rank_pattern": {re.escape(m): r for m, (r, _) in ranks.items() if r != default_rank},
            "alpha_pattern": {re.escape(m): a for m, (_, a) in ranks.items() if a != default_alpha},
            "layers_to_transform": None,
            "layers_pattern": None,
        }
        return fields, tensors

    def from_peft(self, peft_config: dict[str, Any], tensors: dict[str, Tensor]) -> PeftImport:
        rewrite = base_rewriting_init(peft_config)
        if rewrite:  # peft's conversion writes init_lora_weights: true
            raise AdapterFormatError(
                f"this LoRA was saved with init_lora_weights {rewrite!r} and not converted: its "
                "weights assume a base with the adapter's starting value subtracted, not the "
                "real base. Save it again with peft's save_pretrained(..., "
                "path_initial_model_for_weight_conversion=<the initial adapter>), which writes "
                "an equivalent LoRA for the real base"
            )
        unsupported = [k for k in ("lora_bias",) if peft_config.get(k)]
        if peft_config.get("bias", "none") != "none":
            unsupported.append(f"bias={peft_config['bias']!r}")
        if unsupported:
            raise AdapterFormatError(f"PEFT LoRA options not supported: {unsupported}")
        lora: dict[tuple[str, str], Tensor] = {}
        for key, tensor in tensors.items():
            match = self.peft_key.match(key)
            if match:
                lora[(match["module"], match["param"])] = tensor
        modules = sorted({m for m, _ in lora})
        if not modules:
            raise AdapterFormatError("PEFT file has no lora_A/lora_B tensors")
        missing = [m for m in modules if (m, "lora_A") not in lora or (m, "lora_B") not in lora]
        if missing:
            raise AdapterFormatError(
                f"PEFT file has lora_A without lora_B (or back) for {missing[:3]}"
            )
        config = self.config_class(
            rank=int(peft_config["r"]),
            alpha=float(peft_config["lora_alpha"]),
            dropout=float(peft_config.get("lora_dropout") or 0.0),
            targets=peft_targets(peft_config.get("target_modules")),
            use_rslora=bool(peft_config.get("use_rslora", False)),
        )
        ours = {f"{m}.{param}.weight": t for (m, param), t in lora.items()}
        return PeftImport(
            config, [Target(m) for m in modules], ours, _module_ranks(peft_config, lora)
        )


def _local_rows(weight: Tensor) -> tuple[Tensor, int]:
    """The part of ``weight`` this process holds and the index of its first row: all of it,
    or an FSDP2 shard (a DTensor split on dim 0 the way ``torch.chunk`` splits it)."""
    tensor_module = sys.modules.get("torch.distributed.tensor")  # not imported: no shards
    if tensor_module is None or not isinstance(weight, tensor_module.DTensor):
        return weight, 0
    if len(weight.placements) != 1 or weight.placements[0] != tensor_module.Shard(0):
        raise ConfigError(
            f"a LoRA start cannot be held on weights placed as {weight.placements}: FSDP2 "
            "(train.sharding: fsdp) splits them on dim 0"
        )
    rows_per_process = math.ceil(weight.shape[0] / weight.device_mesh.size())
    return weight.to_local(), rows_per_process * weight.device_mesh.get_local_rank()


def _check_startable(site: LayerSite, init: str) -> None:
    weight = getattr(site.base, "weight", None)
    if is_quantized(weight):
        return  # started from the values the quantised layer computes with
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        raise ConfigError(
            f"LoRA init {init!r} starts from the weight of {site.module_name}, which holds no "
            f"floating-point values ({type(weight).__name__}): use init: default"
        )


def _weight_rows(site: LayerSite, target: Target) -> Tensor:
    """The (out, in) float32 weight rows ``target`` adapts (a quantised weight's values)."""
    stored = current_weight(site.base).detach()  # brought in if accelerate offloads it
    weight = dequantized(stored) if is_quantized(stored) else stored.float()
    weight = weight.T if site.kind.transposed else weight
    if target.out_slice is not None:
        weight = weight[target.out_slice[0] : target.out_slice[1]]
    return weight


def _start(
    weight: Tensor, rank: int, scaling: float, init: str, iterations: int = 0
) -> tuple[Tensor, Tensor]:
    """``(A0, B0)`` with ``scaling * B0 A0`` the weight's top-``rank`` part: its singular
    directions (PiSSA, as peft's ``pissa_init``; ``iterations`` > 0: torch's randomised
    ``svd_lowrank``, as ``pissa_niter_N``) or its QR factors (OLoRA, ``olora_init``)."""
    if init == "pissa":
        if iterations:
            v, singular, u = torch.svd_lowrank(weight, q=rank, niter=iterations)
            uh = u.T
        else:
            v, singular, uh = torch.linalg.svd(weight, full_matrices=False)
        root = torch.sqrt(singular[:rank] / scaling)
        return root[:, None] * uh[:rank], v[:, :rank] * root[None, :]
    q, r = torch.linalg.qr(weight)
    return r[:rank], q[:, :rank]


def _rank_at(record: AdapterRecord, module_name: str) -> int:
    """The rank adapter ``record`` has at ``module_name`` (a PEFT rank_pattern may change it)."""
    override = record.lora_overrides.get(module_name)
    return override[0] if override else _stored_rank(cast(LowRankConfig, record.config))


def _stored_rank(config: LowRankConfig) -> int:
    """The rank of the modules a config builds: twice its rank for a LoRA started from the
    weights (the held start beside the trained half, see :class:`LoRAModule`)."""
    started = getattr(config, "init", "default") != "default"
    return config.rank * (2 if started else 1)


def _svd_into(target: LoRAModule, parts: list[LoRAModule], factors: Sequence[float]) -> float:
    delta = sum(
        w * p.scaling * (p.lora_B.weight @ p.lora_A.weight)
        for w, p in zip(factors, parts, strict=True)
    )
    assert isinstance(delta, Tensor)
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    k = min(target.rank, s.shape[0])
    b = u[:, :k] * s[:k]  # (out, k)
    a = vh[:k]  # (k, in)
    target.lora_B.weight.zero_()
    target.lora_A.weight.zero_()
    target.lora_B.weight[:, :k] = b.to(target.lora_B.weight.dtype)
    target.lora_A.weight[:k] = a.to(target.lora_A.weight.dtype)
    target.scaling = 1.0
    norm = float(delta.norm())
    return float((delta - b @ a).norm()) / norm if norm > 0 else 0.0


def _as_single_lora(adapter: nn.Module) -> tuple[Tensor, Tensor, float]:
    """``(A, B, scaling)`` of one LoRA equal to ``adapter`` (slices become a block-structured B)."""
    if isinstance(adapter, LoRAModule) and adapter.out_slice is None:
        return adapter.lora_A.weight, adapter.lora_B.weight, adapter.scaling
    parts = lora_parts(adapter)
    first = parts[0]
    a = torch.cat([p.lora_A.weight for p in parts])  # (n*r, in)
    b = a.new_zeros(first.total_out, a.shape[0])  # (out, n*r)
    offset = 0
    for part in parts:
        start, stop = part.out_slice or (0, part.total_out)
        b[start:stop, offset : offset + part.rank] = part.lora_B.weight
        offset += part.rank
    return a, b, first.scaling


def with_one_rank(
    peft_config: dict[str, Any], tensors: dict[str, Tensor]
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The same LoRA in PEFT files with one rank and one alpha for every module, for engines
    that read ``r`` and ``lora_alpha`` alone (vLLM drops ``rank_pattern``/``alpha_pattern``).

    Lower-rank modules are zero-padded (zero rows of ``A``, columns of ``B``: they add nothing),
    and a module whose scaling differs from the largest-rank modules' has it folded into its
    ``B``. Modules already at that rank and scaling keep their tensors bit for bit.
    """
    if not peft_config.get("rank_pattern") and not peft_config.get("alpha_pattern"):
        return peft_config, tensors
    matches = {key: LoRAMethod.peft_key.match(key) for key in tensors}
    lora = {(m["module"], m["param"]): tensors[key] for key, m in matches.items() if m}
    rank, alpha = int(peft_config["r"]), float(peft_config["lora_alpha"])
    rslora = bool(peft_config.get("use_rslora"))
    per_module = {m: (rank, alpha) for m, _ in lora} | _module_ranks(peft_config, lora)
    widest = max(r for r, _ in per_module.values())
    kept = Counter(a for r, a in per_module.values() if r == widest).most_common(1)[0][0]
    target_scaling = lora_scaling(widest, kept, rslora)
    out = dict(tensors)
    for key, tensor in tensors.items():
        match = matches[key]
        if not match:
            continue
        module_rank, module_alpha = per_module[match["module"]]
        factor = lora_scaling(module_rank, module_alpha, rslora) / target_scaling
        missing = widest - module_rank
        if match["param"] == "lora_A":
            out[key] = F.pad(tensor, (0, 0, 0, missing)) if missing else tensor
        else:
            scaled = (tensor.float() * factor).to(tensor.dtype) if factor != 1.0 else tensor
            out[key] = F.pad(scaled, (0, missing)) if missing else scaled
    config = {**peft_config, "r": widest, "lora_alpha": kept, "rank_pattern": {}}
    return config | {"alpha_pattern": {}}, out


def _module_ranks(
    config: dict[str, Any], lora: dict[tuple[str, str], Tensor]
) -> dict[str, tuple[int, float]]:
    """Per-module ``(rank, alpha)`` where ``rank_pattern``/``alpha_pattern`` set other values."""
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    overrides: dict[str, tuple[int, float]] = {}
    for module in sorted({m for m, _ in lora}):
        module_rank = int(_pattern_value(config.get("rank_pattern") or {}, module, rank))
        module_alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, alpha))
        if lora[(module, "lora_A")].shape[0] != module_rank:
            raise AdapterFormatError(
                f"{module}: lora_A has rank {lora[(module, 'lora_A')].shape[0]} but the config "
                f"says {module_rank}"
            )
        if (module_rank, module_alpha) != (rank, alpha):
            overrides[module] = (module_rank, module_alpha)
    return overrides


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's rule: the first pattern ``p`` with ``re.match(rf"(.*\\.)?({p})$", module)``."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def peft_targets(target_modules: Any) -> tuple[str, ...]:
    """A PEFT ``target_modules`` value as our ``targets`` (informational once loaded)."""
    if isinstance(target_modules, str):
        return (target_modules,)
    if isinstance(target_modules, list | tuple) and target_modules:
        return tuple(str(t) for t in target_modules)
    return ("<from file>",)


METHOD = LoRAMethod()
