"""Adding, activating and removing adapters.

Injection follows one rule (peft's ``BaseTuner.inject_adapter``): validate everything and build
every new module first, then mutate the model, then report. A failure never leaves a half-modified
model.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .composition import Average, Block, CompositionError, Fuse, Parallel, Stack, leaves, validate
from .config import BitFit, FullFineTune, Fusion, Houlsby, LoRA, MethodConfig, Pfeiffer
from .errors import AdapterExistsError, TargetError
from .heads import HeadSwitch, adapter_head, body_prefix, detect_head
from .layer import AdaptedLayer, layer_kind, named_base_modules
from .methods.bitfit import BiasOffset
from .methods.bottleneck import Bottleneck
from .methods.fusion import FusionModule
from .methods.lora import LoRAModule
from .methods.parts import SliceParts
from .parallel import activate_parallel, deactivate_parallel
from .roles import ROLES, Target, family_of, find_targets
from .state import AdapterRecord, adapter_layers, adapter_records, get_record

__all__ = [
    "PreparedAdapter",
    "active_adapters",
    "add_adapter",
    "attach_adapter",
    "delete_adapter",
    "list_adapters",
    "prepare_adapter",
    "set_active",
    "set_trainable",
]

_NAME = re.compile(r"[A-Za-z0-9_\-]+")


@dataclass
class PreparedAdapter:
    """An adapter built and validated but not yet placed in the model."""

    record: AdapterRecord
    modules: dict[str, nn.Module]  # module name -> adapter module to place in its wrapper


def add_adapter(
    model: nn.Module,
    name: str,
    config: MethodConfig,
    *,
    targets: list[Target] | None = None,
    lora_overrides: dict[str, tuple[int, float]] | None = None,
) -> AdapterRecord:
    """Inject adapter ``name`` into ``model``, make it the active one and the only one that trains.

    The base model is frozen; the adapter's parameters (and a new classification head) train.
    ``targets`` overrides role resolution with exact module targets (used when loading a saved
    adapter). Raises :class:`TargetError` before touching the model when a target matches nothing
    or names a module type the method cannot adapt.
    """
    prepared = prepare_adapter(model, name, config, targets=targets, lora_overrides=lora_overrides)
    attach_adapter(model, prepared)
    return prepared.record


def prepare_adapter(
    model: nn.Module,
    name: str,
    config: MethodConfig,
    *,
    targets: list[Target] | None = None,
    lora_overrides: dict[str, tuple[int, float]] | None = None,
) -> PreparedAdapter:
    """Validate and build everything :func:`add_adapter` needs, without changing ``model``."""
    _check_new_name(model, name)
    if isinstance(config, Fusion):
        for member in config.members:
            get_record(model, member)  # a fusion needs its members in the model first
    overrides = dict(lora_overrides or {})
    resolved = targets if targets is not None else _resolve(model, config)
    modules = _build_modules(model, config, resolved, overrides)
    head = detect_head(model)
    if isinstance(config, FullFineTune):
        # A full fine-tune owns every weight, the head included: no per-adapter head copy.
        head = dataclasses.replace(head, trainable=False)
    record = AdapterRecord(name, config, resolved, head, overrides)
    return PreparedAdapter(record, modules)


def attach_adapter(model: nn.Module, prepared: PreparedAdapter) -> None:
    """Place a prepared adapter in the model, activate it and make it the one that trains."""
    name = prepared.record.name
    for module_name, adapter in prepared.modules.items():
        _wrap(model, module_name).adapters[name] = adapter
    if prepared.record.head.trainable:
        for module_name in prepared.record.head.modules:
            _head_switch(model, module_name).add(name)
    adapter_records(model)[name] = prepared.record
    set_active(model, name)
    set_trainable(model, name)


def set_active(model: nn.Module, active: Block | Iterable[str] | None) -> None:
    """Make one adapter or composition active (``None``: the base model).

    ``active`` is a name, a ``Stack`` or an ``Average`` (a list of names means ``Stack``). Exactly
    one adapter or composition is active at a time. A head follows the last adapter in the
    composition that has one.
    """
    block = _as_block(active)
    if block is not None:
        validate(block)
        for name in leaves(block):
            get_record(model, name)  # unknown names: the same error as everywhere else
        block = _with_fusions(model, block)
        if any(isinstance(b, Parallel) for b in _blocks(block)) and not isinstance(block, Parallel):
            raise CompositionError("Parallel must be the outermost block")
    deactivate_parallel(model)
    if isinstance(block, Parallel):
        activate_parallel(model, block)
        block = None  # the layers run through per-row routing, set on each forward pass
    names = leaves(block)
    for _, layer in adapter_layers(model):
        layer.active = _prune(block, set(layer.adapters))
    for switch in (m for m in model.modules() if isinstance(m, HeadSwitch)):
        switch.active = next((n for n in reversed(names) if n in switch.heads), None)


def active_adapters(model: nn.Module) -> list[str]:
    """Names of the adapters taking part in the active composition, in order."""
    return list(
        dict.fromkeys(n for _, layer in adapter_layers(model) for n in leaves(layer.active))
    )


def set_trainable(model: nn.Module, name: str) -> None:
    """Freeze everything except adapter ``name`` (and its head when the head is new)."""
    record = get_record(model, name)
    if isinstance(record.config, FullFineTune):
        model.requires_grad_(True)
        return
    model.requires_grad_(False)
    for _, layer in adapter_layers(model, name):
        layer.adapters[name].requires_grad_(True)
    if record.head.trainable:
        for module_name in record.head.modules:
            adapter_head(model, module_name, name).requires_grad_(True)


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name``; wrappers left empty give their base layer back to the model."""
    get_record(model, name)
    for module_name, layer in list(adapter_layers(model, name)):
        del layer.adapters[name]
        layer.active = _prune(layer.active, set(layer.adapters))
        if len(layer.adapters) == 0:
            _replace_module(model, module_name, layer.base_layer)
    for module_name, switch in list(_head_switches(model)):
        if name in switch.heads:
            del switch.heads[name]
            switch.active = None if switch.active == name else switch.active
        if len(switch.heads) == 0:
            _replace_module(model, module_name, switch.original)
    del adapter_records(model)[name]


def list_adapters(model: nn.Module) -> list[str]:
    """Names of the adapters in ``model``, in the order they were added."""
    return list(adapter_records(model))


def _as_block(active: Block | Iterable[str] | None) -> Block | None:
    if active is None or isinstance(active, str | Stack | Parallel | Fuse | Average):
        return active
    names = tuple(active)
    return Stack(*names) if names else None


def _with_fusions(model: nn.Module, block: Block) -> Block:
    """Replace each ``Fuse(a, b)`` by the Fusion adapter trained over exactly ``a, b``."""
    if isinstance(block, str):
        return block
    if isinstance(block, Fuse):
        members = tuple(leaves(block))
        for record in adapter_records(model).values():
            if isinstance(record.config, Fusion) and record.config.members == members:
                return record.name
        raise CompositionError(
            f"{block!r}: no Fusion adapter over {list(members)} in the model; add one with "
            f"pc.add_adapter(model, NAME, pc.Fusion(members={members}))"
        )
    children = [_with_fusions(model, child) for child in block.children]
    if isinstance(block, Average):
        return Average(*children, weights=block.weights)
    return type(block)(*children)


def _blocks(block: Block) -> list[Block]:
    if isinstance(block, str):
        return [block]
    return [block, *(b for child in block.children for b in _blocks(child))]


def _prune(block: Block | None, present: set[str]) -> Block | None:
    """This layer's share of a composition: adapters it does not hold act as the identity."""
    if block is None or isinstance(block, str):
        return block if block in present else None
    kept = [
        (child, i)
        for i, c in enumerate(block.children)
        if (child := _prune(c, present)) is not None
    ]
    if not kept:
        return None
    if isinstance(block, Average):
        return Average(*(c for c, _ in kept), weights=[block.weights[i] for _, i in kept])
    if len(kept) == 1:
        return kept[0][0]
    return type(block)(*(c for c, _ in kept))


def _check_new_name(model: nn.Module, name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TargetError(
            f"invalid adapter name {name!r}: use letters, digits, '_' and '-' only (no dots)"
        )
    if name in adapter_records(model):
        raise AdapterExistsError(
            f"model already has an adapter {name!r}; choose another name or "
            "peft_core.delete_adapter it first"
        )


def _resolve(model: nn.Module, config: MethodConfig) -> list[Target]:
    """Turn the config's roles/patterns into module targets inside the model body."""
    if isinstance(config, FullFineTune):
        return []
    if isinstance(config, Fusion):
        return _fusion_targets(model, config)
    if isinstance(config, BitFit) and config.targets is None:
        return _all_biases(model)
    requested = config.placements if isinstance(config, Houlsby | Pfeiffer) else config.targets
    assert requested is not None
    prefix = body_prefix(model)
    body = getattr(model, prefix) if prefix else model
    widths = {
        name: kind.out_features(module)
        for name, module in named_base_modules(body)
        if (kind := layer_kind(module)) is not None
    }
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    found, unmatched = find_targets(body, requested, model_type=model_type, out_features=widths)
    if unmatched:
        raise TargetError(_unmatched_message(body, requested, unmatched, model_type))
    return [_prefixed(prefix, t) for t in found]


def _fusion_targets(model: nn.Module, config: Fusion) -> list[Target]:
    """The layers that hold every member; members must be bottleneck adapters."""
    records = [get_record(model, member) for member in config.members]
    wrong = [r.name for r in records if not isinstance(r.config, Houlsby | Pfeiffer)]
    if wrong:
        raise TargetError(
            f"Fusion combines bottleneck adapters (Houlsby, Pfeiffer); {wrong} are not"
        )
    shared = set.intersection(*({t.module_name for t in r.targets} for r in records))
    if not shared:
        raise TargetError(f"members {list(config.members)} share no layer: nothing to fuse")
    return [t for t in records[0].targets if t.module_name in shared]


def _all_biases(model: nn.Module) -> list[Target]:
    prefix = body_prefix(model)
    body = getattr(model, prefix) if prefix else model
    found = [
        _prefixed(prefix, Target(name))
        for name, module in named_base_modules(body)
        if layer_kind(module) is not None and getattr(module, "bias", None) is not None
    ]
    if not found:
        raise TargetError(
            f"BitFit needs bias terms, but this {type(model).__name__} has none "
            "(Llama-family models have no biases). Choose LoRA or a bottleneck adapter instead."
        )
    return found


def _prefixed(prefix: str, target: Target) -> Target:
    if not prefix:
        return target
    return Target(f"{prefix}.{target.module_name}", target.out_slice, target.role)


def _unmatched_message(
    body: nn.Module, requested: Iterable[str], unmatched: list[str], model_type: str
) -> str:
    candidates = [n for n, m in named_base_modules(body) if layer_kind(m) is not None]
    leaf_names = sorted({n.rsplit(".", 1)[-1] for n in candidates})
    roles = (
        f"roles known for {model_type!r}: {', '.join(ROLES)}"
        if family_of(model_type)
        else f"model type {model_type!r} has no role table; use module-name patterns"
    )
    return (
        f"targets {unmatched} matched no module (asked for {list(requested)}); {roles}. "
        f"Adaptable module names here include: {', '.join(leaf_names[:12])}"
    )


def _build_modules(
    model: nn.Module,
    config: MethodConfig,
    targets: list[Target],
    overrides: dict[str, tuple[int, float]],
) -> dict[str, nn.Module]:
    """Build one adapter module per target module, validating each target; mutates nothing."""
    by_module: dict[str, list[Target]] = defaultdict(list)
    for target in targets:
        by_module[target.module_name].append(target)
    built: dict[str, nn.Module] = {}
    for module_name, module_targets in by_module.items():
        base = _base_layer(model, module_name)
        built[module_name] = _build_one(base, module_name, config, module_targets, overrides)
    return built


def _base_layer(model: nn.Module, module_name: str) -> nn.Module:
    try:
        module = model.get_submodule(module_name)
    except AttributeError as exc:
        raise TargetError(f"model has no module {module_name!r}") from exc
    return module.base_layer if isinstance(module, AdaptedLayer) else module


def _build_one(
    base: nn.Module,
    module_name: str,
    config: MethodConfig,
    targets: list[Target],
    overrides: dict[str, tuple[int, float]],
) -> nn.Module:
    kind = layer_kind(base)
    supported = "Linear, Conv1D (GPT-2) and, for BitFit, LayerNorm"
    if kind is None:
        raise TargetError(
            f"{module_name} is a {type(base).__name__}, which {config.type} cannot adapt; "
            f"supported module types: {supported}"
        )
    device, dtype = _device_of(base), _dtype_of(base)
    out = kind.out_features(base)
    if isinstance(config, BitFit):
        if getattr(base, "bias", None) is None:
            raise TargetError(f"BitFit target {module_name} has no bias term")

        def offset(target: Target) -> nn.Module:
            return BiasOffset(
                _width(target, out),
                out_slice=target.out_slice,
                total_out=out,
                device=device,
                dtype=dtype,
            )

        return _one_or_parts(targets, offset)
    if isinstance(config, Fusion):
        out = kind.out_features(base)
        return FusionModule(
            out, config.members, temperature=config.temperature, device=device, dtype=dtype
        )
    if not kind.has_weight_matrix:
        raise TargetError(
            f"{config.type} cannot adapt {module_name} ({kind.name}): no weight matrix"
        )
    if isinstance(config, Houlsby | Pfeiffer):
        size = config.bottleneck_size(out)
        return Bottleneck(out, size, activation=config.activation, device=device, dtype=dtype)
    assert isinstance(config, LoRA)
    rank, alpha = overrides.get(module_name, (config.rank, config.alpha))
    scaling = alpha / (rank**0.5 if config.use_rslora else rank)

    def lora(target: Target) -> nn.Module:
        return LoRAModule(
            kind.in_features(base),
            _width(target, out),
            rank=rank,
            scaling=scaling,
            dropout=config.dropout,
            out_slice=target.out_slice,
            total_out=out,
            device=device,
            dtype=dtype,
        )

    return _one_or_parts(targets, lora)


def _width(target: Target, out_features: int) -> int:
    if target.out_slice is None:
        return out_features
    return target.out_slice[1] - target.out_slice[0]


def _one_or_parts(targets: list[Target], build: Callable[[Target], nn.Module]) -> nn.Module:
    """One module for a whole layer; a :class:`SliceParts` for slices of a fused layer."""
    if len(targets) == 1 and targets[0].out_slice is None:
        return build(targets[0])
    return SliceParts({t.role or f"part{i}": build(t) for i, t in enumerate(targets)})


def _wrap(model: nn.Module, module_name: str) -> AdaptedLayer:
    module = model.get_submodule(module_name)
    if isinstance(module, AdaptedLayer):
        return module
    wrapper = AdaptedLayer(module)
    _replace_module(model, module_name, wrapper)
    return wrapper


def _head_switch(model: nn.Module, module_name: str) -> HeadSwitch:
    module = model.get_submodule(module_name)
    if isinstance(module, HeadSwitch):
        return module
    switch = HeadSwitch(module)
    _replace_module(model, module_name, switch)
    return switch


def _replace_module(model: nn.Module, module_name: str, replacement: nn.Module) -> None:
    """Put ``replacement`` where ``module_name`` is (wrapping or unwrapping a layer or head)."""
    parent_name, _, child = module_name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, replacement)


def _head_switches(model: nn.Module) -> list[tuple[str, HeadSwitch]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, HeadSwitch)]


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _dtype_of(module: nn.Module) -> torch.dtype:
    # Adapters take the base layer's dtype (mixed precision is the training loop's job);
    # a quantised integer base gets float32 adapters.
    dtype = next(module.parameters()).dtype
    return dtype if dtype.is_floating_point else torch.float32
