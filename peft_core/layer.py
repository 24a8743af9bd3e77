"""The one wrapper every method injects: a base layer plus named adapters.

``AdaptedLayer`` holds the original module as ``base_layer`` and calls its forward (so it composes
with any layer that keeps the ``nn.Linear`` interface), then lets each active adapter transform the
output. Adapters are self-contained modules in one ``ModuleDict``; the wrapper holds no per-adapter
state of its own.

The kinds of base layer we can adapt live in one table, :data:`LAYER_KINDS`; anything else is a
clear error at injection time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, cast, runtime_checkable

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from .composition import Average, Block, Stack
from .exact import Undo, add_exactly, take_back
from .heads import HeadSwitch

__all__ = [
    "LAYER_KINDS",
    "AdaptedLayer",
    "AdapterModule",
    "LayerKind",
    "ParamDelta",
    "base_compute_dtype",
    "base_named_parameters",
    "base_state_dict",
    "layer_kind",
    "named_base_modules",
]


@dataclass(frozen=True)
class ParamDelta:
    """What merging an adapter adds to its base layer, in ``nn.Linear`` orientation (out, in)."""

    weight: Tensor | None = None
    bias: Tensor | None = None


@runtime_checkable
class AdapterModule(Protocol):
    """What an adapter placed in an :class:`AdaptedLayer` provides.

    ``forward(x, y)`` takes the layer input ``x`` and the output so far ``y`` and returns the new
    output. ``delta()`` returns the equivalent change of the base parameters, or ``None`` when the
    method is not linear in the layer's parameters (bottlenecks) and cannot be merged.
    """

    merged: bool

    def __call__(self, x: Tensor, y: Tensor) -> Tensor: ...

    def forward(self, x: Tensor, y: Tensor) -> Tensor: ...

    def delta(self) -> ParamDelta | None: ...


@dataclass(frozen=True)
class LayerKind:
    """How to read the geometry of one supported base-layer type."""

    name: str
    in_features: Callable[[nn.Module], int]
    out_features: Callable[[nn.Module], int]
    has_weight_matrix: bool  # LayerNorm has a bias to offset but no matrix for LoRA
    transposed: bool = False  # Conv1D stores its weight as (in, out)


def _weight_dim(dim: int) -> Callable[[nn.Module], int]:
    def read(module: nn.Module) -> int:
        return int(cast(Tensor, module.weight).shape[dim])

    return read


def _ln_features(module: nn.Module) -> int:
    return int(cast(nn.LayerNorm, module).normalized_shape[-1])


LAYER_KINDS: dict[type[nn.Module], LayerKind] = {
    nn.Linear: LayerKind("Linear", _weight_dim(1), _weight_dim(0), True),  # weight (out, in)
    Conv1D: LayerKind("Conv1D (GPT-2)", _weight_dim(0), _weight_dim(1), True, transposed=True),
    nn.LayerNorm: LayerKind("LayerNorm", _ln_features, _ln_features, False),
}


def layer_kind(module: nn.Module) -> LayerKind | None:
    """The table entry for ``module``'s exact type, or ``None`` when it is not supported."""
    return LAYER_KINDS.get(type(module))


class AdaptedLayer(nn.Module):
    """``base_layer`` followed by the active adapters or composition.

    ``active`` is this layer's share of the model's active composition (a name, a ``Stack``, an
    ``Average``; adapters absent from this layer pruned away). ``routing``, set inside
    ``peft_core.per_row``, sends each row of the batch through its own adapter instead.
    """

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.active: Block | None = None
        # Set inside peft_core.per_row (routing.py): a callable (x, y) -> y that adds each row's
        # own adapter. Typed as a plain callable so this module needs nothing from routing.
        self.routing: Callable[[Tensor, Tensor], Tensor] | None = None

    def forward(self, x: Tensor, *args: object, **kwargs: object) -> Tensor:
        y = self.base_layer(x, *args, **kwargs)
        if self.routing is not None:
            return self.routing(x, y)
        return self._run(self.active, x, y) if self.active is not None else y

    def _run(self, block: Block, x: Tensor, y: Tensor) -> Tensor:
        if isinstance(block, str):
            adapter = self.adapter(block)
            members = getattr(adapter, "members", None)
            if members is not None:  # a fusion: attention over its members' outputs
                return adapter.fuse(y, [self._run(m, x, y) for m in members])  # type: ignore[attr-defined]
            return y if adapter.merged else adapter(x, y)  # merged: already in the base weights
        if isinstance(block, Stack):
            for child in block.children:
                y = self._run(child, x, y)
            return y
        if isinstance(block, Average):
            outputs = [self._run(child, x, y) for child in block.children]
            return y + sum(w * (out - y) for w, out in zip(block.weights, outputs, strict=True))
        raise TypeError(f"{type(block).__name__} compositions cannot run inside a layer")

    def adapter(self, name: str) -> AdapterModule:
        """The adapter ``name`` held by this layer."""
        return cast(AdapterModule, self.adapters[name])

    @property
    def kind(self) -> LayerKind:
        """The geometry of the wrapped layer."""
        kind = layer_kind(self.base_layer)
        assert kind is not None, "AdaptedLayer is only built around supported layers"
        return kind

    @torch.no_grad()
    def apply_delta(self, delta: ParamDelta) -> list[tuple[str, Undo]]:
        """Add a delta to the base parameters (computed in fp32, rounded once); returns what
        :meth:`take_back_delta` needs to restore them bit for bit."""
        undos = []
        if delta.weight is not None:
            weight = delta.weight.T if self.kind.transposed else delta.weight
            undos.append(("weight", add_exactly(cast(Tensor, self.base_layer.weight), weight)))
        if delta.bias is not None:
            undos.append(("bias", add_exactly(cast(Tensor, self.base_layer.bias), delta.bias)))
        return undos

    def take_back_delta(self, undos: list[tuple[str, Undo]]) -> None:
        """Restore the base parameters :meth:`apply_delta` changed, bit for bit."""
        for parameter, undo in undos:
            take_back(cast(Tensor, getattr(self.base_layer, parameter)), undo)

    def extra_repr(self) -> str:
        return f"active={self.active!r}"


SELF_PLACED_CONTAINER = "peft_core_prompts"  # prompts of peft-run prompt-tuning adapters


def is_peft_layer(module: nn.Module) -> bool:
    # Duck-typed so this module does not import peft: peft's BaseTunerLayer API.
    return hasattr(module, "adapter_layer_names") and hasattr(module, "get_base_layer")


def named_base_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Named modules of the *base* model: adapter wrappers are seen through, adapters skipped.

    After injection ``...query`` is a wrapper holding ``base_layer``; this yields
    ``("...query", <the original Linear>)`` so names are the same before and after injection.
    Per-adapter head copies are skipped the same way (the original head is seen).
    """

    def walk(prefix: str, module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            if isinstance(child, AdaptedLayer | HeadSwitch):
                original = child.base_layer if isinstance(child, AdaptedLayer) else child.original
                yield name, original
                yield from walk(name, original)
            elif is_peft_layer(child):  # a peft-run adapter's layer: only its base is the model
                inner = cast(nn.Module, child.get_base_layer())  # type: ignore[operator]
                yield name, inner
                yield from walk(name, inner)
            elif child_name == SELF_PLACED_CONTAINER:
                continue
            else:
                yield name, child
                yield from walk(name, child)

    yield from walk("", model)


def base_named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The base model's parameters under their original names (no adapters, no ``base_layer``)."""
    yield from model.named_parameters(recurse=False)
    for module_name, module in named_base_modules(model):
        for param_name, param in module.named_parameters(recurse=False):
            yield f"{module_name}.{param_name}", param


def base_compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the base model computes in: its first floating weight's (float32 when all of its
    weights are quantised integers)."""
    for _, parameter in base_named_parameters(model):
        if parameter.dtype.is_floating_point:
            return parameter.dtype
    return torch.float32


def base_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The base model's state (as ``state_dict`` saves it) under its original names, not copied."""
    state: dict[str, Tensor] = dict(_own_state(model))
    for module_name, module in named_base_modules(model):
        for key, value in _own_state(module):
            state[f"{module_name}.{key}"] = value
    return state


def _own_state(module: nn.Module) -> list[tuple[str, Tensor]]:
    """A module's direct parameters and persistent buffers (what ``state_dict`` would save)."""
    transient = module._non_persistent_buffers_set
    buffers = [(k, v) for k, v in module.named_buffers(recurse=False) if k not in transient]
    return [*module.named_parameters(recurse=False), *buffers]
