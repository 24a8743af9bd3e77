"""Method configurations: small, frozen, validated on construction.

A configuration describes *what* to inject; ``peft_core.add_adapter`` does the injection. Each
class serialises to a plain dict with a ``type`` key (``to_dict``/``config_from_dict``) so specs,
saved adapters and the registry share one spelling.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ConfigError

__all__ = [
    "BitFit",
    "FullFineTune",
    "Fusion",
    "Houlsby",
    "LoRA",
    "MethodConfig",
    "Pfeiffer",
    "config_from_dict",
    "config_to_dict",
]

Activation = Literal["relu", "gelu", "silu", "tanh"]


@dataclass(frozen=True)
class LoRA:
    """Low-rank adaptation (Hu et al. 2021): ``h = W0 x + (alpha / rank) * B A x``.

    ``targets`` are roles (``q``, ``k``, ``v``, ``o``, ``ffn_in``, ``ffn_out``) resolved per model
    family, or module-name patterns (a suffix such as ``"query"`` or a full regular expression).
    ``use_rslora`` scales by ``alpha / sqrt(rank)`` instead (Kalajdzievski 2023), as peft does.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "v")
    use_rslora: bool = False
    type: Literal["lora"] = dataclasses.field(default="lora", init=False)

    def __post_init__(self) -> None:
        _require(self.rank >= 1, f"LoRA rank must be >= 1, got {self.rank}")
        _require(self.alpha > 0, f"LoRA alpha must be > 0, got {self.alpha}")
        _require(0.0 <= self.dropout < 1.0, f"LoRA dropout must be in [0, 1), got {self.dropout}")
        _check_targets(self.targets)

    @property
    def scaling(self) -> float:
        """The factor applied to ``B A x``."""
        return self.alpha / (self.rank**0.5 if self.use_rslora else self.rank)


@dataclass(frozen=True)
class BitFit:
    """BitFit (Ben-Zaken et al. 2022): train only bias terms.

    The shared base biases are never changed in place: the adapter is a set of bias offsets that
    start at zero and are added to the layer outputs (merging adds them to the biases). ``targets``
    ``None`` means every bias of the model body (linear layers and layer norms); a tuple of roles or
    patterns selects a subset, e.g. the paper's best subset ``("q", "ffn_in")``.
    """

    targets: tuple[str, ...] | None = None
    type: Literal["bitfit"] = dataclasses.field(default="bitfit", init=False)

    def __post_init__(self) -> None:
        if self.targets is not None:
            _check_targets(self.targets)


@dataclass(frozen=True)
class _Bottleneck:
    """Shared fields of the bottleneck presets (they differ only in placement)."""

    reduction_factor: int | None = None
    bottleneck: int | None = None
    activation: Activation = "relu"

    def __post_init__(self) -> None:
        _require(
            not (self.reduction_factor is not None and self.bottleneck is not None),
            "give either reduction_factor or bottleneck, not both",
        )
        if self.reduction_factor is not None:
            _require(
                self.reduction_factor >= 1,
                f"reduction_factor must be >= 1, got {self.reduction_factor}",
            )
        if self.bottleneck is not None:
            _require(self.bottleneck >= 1, f"bottleneck must be >= 1, got {self.bottleneck}")

    def bottleneck_size(self, hidden_size: int) -> int:
        """The bottleneck width for a layer of ``hidden_size`` features (default factor 16)."""
        if self.bottleneck is not None:
            return self.bottleneck
        return max(1, hidden_size // (self.reduction_factor or 16))


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


@dataclass(frozen=True)
class FullFineTune:
    """Every weight trains: the baseline the PEFT methods are measured against."""

    type: Literal["full"] = dataclasses.field(default="full", init=False)


@dataclass(frozen=True)
class Fusion:
    """AdapterFusion (Pfeiffer et al. 2020a) over frozen bottleneck adapters ``members``.

    In every layer that holds all members: the ``softmax_i(Q y . K o_i / temperature)``-weighted
    sum of ``V o_i``, where ``o_i`` is member i's output. ``V`` starts as the identity and ``Q`` at
    zero, so a fresh fusion returns the plain average of its members' outputs.
    """

    members: tuple[str, ...] = ()
    temperature: float = 1.0
    type: Literal["fusion"] = dataclasses.field(default="fusion", init=False)

    def __post_init__(self) -> None:
        _require(len(self.members) >= 1, "a Fusion needs at least one member adapter")
        _require(
            len(set(self.members)) == len(self.members), f"duplicate members in {self.members}"
        )
        _require(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")


MethodConfig = LoRA | BitFit | Houlsby | Pfeiffer | FullFineTune | Fusion

_BY_TYPE: dict[str, type[MethodConfig]] = {
    "lora": LoRA,
    "bitfit": BitFit,
    "houlsby": Houlsby,
    "pfeiffer": Pfeiffer,
    "full": FullFineTune,
    "fusion": Fusion,
}


def config_to_dict(config: MethodConfig) -> dict[str, Any]:
    """A JSON-ready dict with a ``type`` key; tuples become lists."""
    out = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def config_from_dict(data: dict[str, Any]) -> MethodConfig:
    """Inverse of :func:`config_to_dict`; unknown types or fields are a :class:`ConfigError`."""
    fields = dict(data)
    kind = fields.pop("type", None)
    if kind not in _BY_TYPE:
        raise ConfigError(f"unknown method type {kind!r}; expected one of {sorted(_BY_TYPE)}")
    cls = _BY_TYPE[kind]
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"{kind}: unknown field(s) {unknown}; known fields: {sorted(known)}")
    for key in ("targets", "members"):
        if isinstance(fields.get(key), list):
            fields[key] = tuple(fields[key])
    return cls(**fields)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_targets(targets: tuple[str, ...]) -> None:
    _require(isinstance(targets, tuple), f"targets must be a tuple of strings, got {targets!r}")
    _require(len(targets) > 0, "targets must name at least one role or module pattern")
    for target in targets:
        _require(isinstance(target, str) and target != "", f"invalid target {target!r}")
