"""The extension point: what a PEFT method tells peft_core about itself.

A method is one module in ``peft_core/methods/`` that defines its configuration (a frozen
dataclass), its adapter module (placed in an ``AdaptedLayer``) and a ``METHOD`` object, an
instance of a :class:`Method` subclass, which answers every question the rest of peft_core asks:

- which modules it adapts (``targets``), and what it builds there (``build``);
- whether and how it merges (the module's ``delta()``; ``mergeable``);
- how adapters of the method combine into a new one (``combine_modules``);
- how its modules run with a different adapter per row (the module class's ``batched``);
- how it reads and writes the Hugging Face PEFT layout (``to_peft``/``from_peft``).

``peft_core.methods`` finds every such module by itself, and other packages add methods through
the ``peft_core.methods`` entry-point group or :func:`peft_core.methods.register_method`. Adding a
method therefore touches one file (plus its tests).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ..errors import ConfigError, TargetError
from ..layer import AdaptedLayer, LayerKind
from ..offload import execution_device
from ..roles import Target
from ..targeting import resolve_targets
from .field_types import check_field_types, plain_values

if TYPE_CHECKING:
    from ..state import AdapterRecord

__all__ = [
    "CombineReport",
    "LayerSite",
    "MergeReport",
    "Method",
    "MethodConfig",
    "PeftImport",
    "check_targets",
    "check_width",
    "finite",
    "require",
]


class MethodConfig:
    """Base of every method configuration: a frozen dataclass with a ``type`` tag field.

    A subclass's ``__post_init__`` calls this one first: then its own range checks see values
    of the types its fields are annotated with."""

    type: str

    def __post_init__(self) -> None:
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}  # type: ignore[arg-type]
        fields = plain_values(type(self), given)
        for key, value in fields.items():
            if value is not given[key]:
                object.__setattr__(self, key, value)  # frozen: set as dataclasses' __init__ does
        check_field_types(type(self).__name__, type(self), fields)


@dataclass(frozen=True)
class CombineReport:
    """What ``combine_adapters`` built and how exact it is."""

    name: str
    algorithm: str
    exact: bool
    relative_error: float  # worst relative Frobenius error of a module's delta (0 when exact)


MergeReport = CombineReport  # the old name (combining is not merging into the base)


@dataclass(frozen=True)
class LayerSite:
    """One base layer an adapter module is being built for."""

    module_name: str
    base: nn.Module
    kind: LayerKind
    targets: tuple[Target, ...]
    rank_alpha: tuple[int, float] | None = None  # a per-module (rank, alpha) from a PEFT file
    keep_base_dtype: bool = False  # adapters in the base's dtype, even a half-precision one

    @property
    def device(self) -> torch.device:
        """Where the base layer runs (adapters are built there): its weights' device, or the
        execution device of a layer accelerate offloads (its weights wait on ``meta``)."""
        weight_device = next(self.base.parameters()).device
        if weight_device.type == "meta":
            return execution_device(self.base) or weight_device
        return weight_device

    @property
    def dtype(self) -> torch.dtype:
        """The adapter's dtype: float32 on a half-precision or quantised base (half-precision
        trainable weights lose small AdamW updates and over/underflow; peft does the same),
        else the base layer's; ``keep_base_dtype`` keeps a half-precision base's dtype."""
        dtype = next(self.base.parameters()).dtype
        if not dtype.is_floating_point:
            return torch.float32
        if dtype.itemsize < 4 and not self.keep_base_dtype:
            return torch.float32
        return dtype

    @property
    def in_features(self) -> int:
        """Input width of the base layer."""
        return self.kind.in_features(self.base)

    @property
    def out_features(self) -> int:
        """Output width of the base layer."""
        return self.kind.out_features(self.base)

    @property
    def sliced(self) -> bool:
        """Whether the targets are slices of a fused projection (GPT-2's ``c_attn``)."""
        return any(t.out_slice is not None for t in self.targets)

    def width(self, target: Target) -> int:
        """Output features ``target`` covers."""
        if target.out_slice is None:
            return self.out_features
        return target.out_slice[1] - target.out_slice[0]

    def one_or_parts(self, build: Callable[[Target], nn.Module]) -> nn.Module:
        """One module for a whole layer; a :class:`SliceParts` for slices of a fused layer."""
        from .parts import SliceParts  # noqa: PLC0415 - parts.py builds on this module

        if len(self.targets) == 1 and self.targets[0].out_slice is None:
            return build(self.targets[0])
        return SliceParts({t.role or f"part{i}": build(t) for i, t in enumerate(self.targets)})

    def require_matrix(self, method: str) -> None:
        """Refuse a layer without a weight matrix (a LayerNorm) for a matrix method."""
        if not self.kind.has_weight_matrix:
            raise TargetError(
                f"{method} cannot adapt {self.module_name} ({self.kind.name}): no weight matrix"
            )

    def whole_layer(self, method: str) -> None:
        """Refuse slices of a fused projection for a method that adapts whole layers only."""
        if self.sliced:
            raise TargetError(
                f"{method} adapts whole layers, but {self.module_name} is a fused projection and "
                f"the targets ask for slices of it ({[t.role for t in self.targets]}); target the "
                f"whole module by name (e.g. {self.module_name.rsplit('.', 1)[-1]!r})"
            )


@dataclass
class PeftImport:
    """A PEFT adapter translated into peft_core terms, ready to be prepared and loaded."""

    config: MethodConfig
    targets: list[Target]
    tensors: dict[str, Tensor]  # keyed "<module>.<parameter>" as our adapter modules name them
    lora_overrides: dict[str, tuple[int, float]] = dataclasses.field(default_factory=dict)


class Method:
    """Everything peft_core needs to know about one method; subclass it once per method.

    The class attributes describe the method; the hooks have defaults that fit most methods.
    """

    config_class: ClassVar[type[Any]]
    type: ClassVar[str]  # the tag in configs, specs, files and the registry ("lora")
    summary: ClassVar[str]  # one line for `adapterops methods` and the README
    mergeable: ClassVar[bool] = True
    why_not_mergeable: ClassVar[str] = ""
    merge_scope: ClassVar[str | None] = None  # which configurations merge, when only some do
    trains_whole_model: ClassVar[bool] = False  # full fine-tuning: no adapter modules, no head copy
    fusable: ClassVar[bool] = False  # may be a member of an AdapterFusion
    # combine_adapters over modules of this method: "exact" (a weighted sum equals the weighted sum
    # of outputs), "average" (a parameter average, approximate) or None (refused).
    combination: ClassVar[Literal["exact", "average"] | None] = None
    peft_type: ClassVar[str | None] = None  # the peft_type it reads and writes, if any
    order: ClassVar[int] = 100  # where it is listed (`adapterops methods`, the README)

    # A method that places its own modules in the model (``peft``: Hugging Face peft runs it)
    # instead of one module per AdaptedLayer. The hooks below then replace the per-layer
    # machinery (merging too); per-row routing and combining are refused for it.
    places_itself: ClassVar[bool] = False

    def saved_config(self, config: Any) -> Any:
        """The configuration an adapter of ``config`` is saved (and reloads) with: ``config``
        itself, unless training set it up in a way loading must not repeat (a LoRA started
        from the weight's decomposition is saved as the plain LoRA it then is)."""
        return config

    def why_not_mergeable_for(self, config: Any) -> str | None:
        """Why adapters of ``config`` cannot merge; ``None`` when they can."""
        return None if self.mergeable else self.why_not_mergeable

    def place(self, model: nn.Module, record: AdapterRecord) -> None:
        """Put adapter ``record`` into ``model`` (``places_itself`` methods only)."""
        raise NotImplementedError

    def switch(self, model: nn.Module, on: Sequence[str]) -> None:
        """Turn this method's adapters named in ``on`` on and all others off."""
        raise NotImplementedError

    def own_parameters(self, model: nn.Module, name: str) -> list[nn.Parameter]:
        """The trainable parameters of adapter ``name``."""
        raise NotImplementedError

    def own_state(self, model: nn.Module, name: str) -> dict[str, Tensor]:
        """Adapter ``name``'s tensors as its files hold them."""
        raise NotImplementedError

    def load_own_state(self, model: nn.Module, name: str, tensors: dict[str, Tensor]) -> None:
        """Fill placed adapter ``name`` from ``tensors`` (keys and shapes already checked)."""
        raise NotImplementedError

    def remove(self, model: nn.Module, name: str) -> None:
        """Take adapter ``name`` out of ``model``, giving its layers back."""
        raise NotImplementedError

    def peft_files(
        self, model: nn.Module, record: AdapterRecord
    ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """The whole ``adapter_config.json`` and the tensors (no prefix, no head)."""
        raise NotImplementedError

    def merge_placed(self, model: nn.Module, name: str) -> bool:
        """Merge placed adapter ``name`` into the base weights, keeping what restores them bit
        for bit; False, changing nothing, when it is merged already."""
        raise NotImplementedError

    def unmerge_placed(self, model: nn.Module, name: str) -> bool:
        """Restore the base weights placed adapter ``name`` was merged into; False when it is
        not merged."""
        raise NotImplementedError

    def is_merged_placed(self, model: nn.Module, name: str) -> bool:
        """Whether placed adapter ``name`` is merged into the base weights."""
        return False

    # Training hooks (any method): how the adapter being trained is run and stepped.

    def training_forward(self, model: nn.Module, name: str) -> Callable[..., Any] | None:
        """A callable to run training batches through instead of ``model`` (``None``: the model).

        For methods whose loss has a term the model's forward does not compute.
        """
        return None

    def after_optimizer_step(self, model: nn.Module, name: str, step: int) -> None:
        """Called after each optimiser step, before gradients are cleared."""

    def check_model(self, model: nn.Module, config: Any) -> None:
        """Anything the model must hold before the adapter can be built (a fusion's members)."""

    def targets(self, model: nn.Module, config: Any) -> list[Target]:
        """The modules to adapt: by default ``config.targets`` roles and patterns."""
        return resolve_targets(model, config.targets)

    def build(self, site: LayerSite, config: Any) -> nn.Module:
        """The adapter module for one base layer (validating the layer first); mutates nothing."""
        raise NotImplementedError

    def combined_config(self, configs: Sequence[Any], *, how: str, rank: int | None) -> Any:
        """The configuration of an adapter that combines adapters of ``configs``."""
        return configs[0]

    def combined_ranks(
        self,
        config: Any,
        sources_at: Mapping[str, Sequence[AdapterRecord]],
        *,
        how: str,
        uniform: bool = False,
    ) -> tuple[Any, dict[str, tuple[int, float]]]:
        """The combined adapter's configuration and per-module ``(rank, alpha)`` overrides, given
        the sources at each module (``uniform``: one rank everywhere; methods without a rank:
        ``config`` and no overrides)."""
        return config, {}

    def combine_modules(
        self, target: nn.Module, sources: Sequence[nn.Module], factors: Sequence[float], how: str
    ) -> float:
        """Fill ``target`` from ``sources``; returns the relative error (0 when exact)."""
        average_parameters(target, sources, factors)
        return 0.0

    def combination_name(self, how: str, rank: int | None) -> str:
        """How ``combine_adapters`` describes what it did."""
        return "weighted sum" if self.combination == "exact" else "parameter average"

    def reads_peft(self, peft_config: dict[str, Any]) -> bool:
        """Whether a PEFT ``adapter_config.json`` is this method's."""
        return self.peft_type is not None and peft_config.get("peft_type") == self.peft_type

    def owns_peft_key(self, key: str) -> bool:
        """Whether a PEFT tensor key (prefix removed) is this method's (the rest is the head)."""
        return False

    def to_peft(
        self, record: AdapterRecord, layers: dict[str, AdaptedLayer]
    ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """PEFT config fields (beyond the shared ones) and tensors keyed by module name."""
        raise ConfigError(
            f"the PEFT format has no {self.type} adapters; save it with format='adapterops'"
        )

    def from_peft(self, peft_config: dict[str, Any], tensors: dict[str, Tensor]) -> PeftImport:
        """Translate a PEFT adapter of this method (tensor keys without the PEFT prefix)."""
        raise ConfigError(f"{self.type} cannot read PEFT files")


@torch.no_grad()
def average_parameters(
    target: nn.Module, sources: Sequence[nn.Module], factors: Sequence[float]
) -> None:
    """``target``'s parameters = the ``factors``-weighted sum of the sources' parameters."""
    source_params = [dict(s.named_parameters()) for s in sources]
    for key, param in target.named_parameters():
        total = sum(w * p[key] for w, p in zip(factors, source_params, strict=True))
        param.copy_(total)  # type: ignore[arg-type]


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def finite(value: float, name: str) -> None:
    """Refuse NaN and infinities for a numeric field."""
    require(
        isinstance(value, int | float) and math.isfinite(value),
        f"{name} must be a finite number, got {value!r:.40}",
    )


# Caps on sizes a configuration may ask for: far above any real model (the widest layers have
# tens of thousands of features), far below what would exhaust the machine a CI build runs on.
MAX_WIDTH = 65_536  # rank, bottleneck width, reduction factor
MAX_TARGETS = 256
MAX_TARGET_LENGTH = 512


def check_targets(targets: tuple[str, ...]) -> None:
    """Targets are a non-empty tuple of at most 256 non-empty strings (512 characters each)."""
    require(isinstance(targets, tuple), f"targets must be a tuple of strings, got {targets!r:.80}")
    require(len(targets) > 0, "targets must name at least one role or module pattern")
    require(
        len(targets) <= MAX_TARGETS,
        f"targets lists {len(targets)} entries; at most {MAX_TARGETS} (use a regular expression)",
    )
    for target in targets:
        require(isinstance(target, str) and target != "", f"invalid target {target!r:.80}")
        require(
            len(target) <= MAX_TARGET_LENGTH,
            f"target {target[:40]!r}... is {len(target)} characters; at most {MAX_TARGET_LENGTH}",
        )


def check_width(value: int, name: str) -> None:
    """An integer size from 1 to :data:`MAX_WIDTH`."""
    require(
        isinstance(value, int) and 1 <= value <= MAX_WIDTH,
        f"{name} must be a whole number from 1 to {MAX_WIDTH}, got {value!r:.40}",
    )
