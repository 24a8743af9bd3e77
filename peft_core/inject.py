"""Adding, activating and removing adapters.

Injection follows one rule (peft's ``BaseTuner.inject_adapter``): validate everything and build
every new module first, then mutate the model, then report. A failure never leaves a half-modified
model.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from torch import nn

from .composition import (
    Average,
    Block,
    CompositionError,
    Fuse,
    Parallel,
    Stack,
    leaves,
    named_twice,
    validate,
)
from .errors import AdapterExistsError, ConfigError, NotMergeableError, TargetError
from .heads import HeadSwitch, adapter_head, detect_head
from .layer import AdaptedLayer, is_peft_layer, layer_kind
from .methods import LayerSite, Method, MethodConfig, method_of
from .methods.fusion import Fusion
from .parallel import activate_parallel, deactivate_parallel
from .roles import Target
from .state import AdapterRecord, adapter_layers, adapter_records, get_record, head_switches

# fp32: adapter weights in float32 on a half-precision base (the default); base: the base's dtype
AdapterDtype = Literal["fp32", "base"]

__all__ = [
    "PreparedAdapter",
    "active_adapters",
    "add_adapter",
    "attach_adapter",
    "delete_adapter",
    "is_merged",
    "list_adapters",
    "prepare_adapter",
    "set_active",
    "set_trainable",
]

_NAME = re.compile(r"[A-Za-z0-9_\-]+")
_SELF_PLACED_ON = "peft_core_self_placed_on"  # active adapters with no AdaptedLayer (peft-run)


@dataclass
class PreparedAdapter:
    """An adapter built and validated but not yet placed in the model."""

    record: AdapterRecord
    modules: dict[str, nn.Module]  # module name -> adapter module to place in its wrapper
    float32_head: bool = False  # the adapter's own head copy trains in float32 (a half base)


def add_adapter(
    model: nn.Module,
    name: str,
    config: MethodConfig,
    *,
    targets: list[Target] | None = None,
    lora_overrides: dict[str, tuple[int, float]] | None = None,
    adapter_dtype: AdapterDtype = "fp32",
) -> AdapterRecord:
    """Inject adapter ``name`` into ``model``, make it the active one and the only one that trains.

    The base model is frozen; the adapter's parameters (and a new classification head) train.
    On a bf16/fp16 base the adapter's weights are float32 (``adapter_dtype="base"``: the base's).
    ``targets`` overrides role resolution with exact module targets (used when loading a saved
    adapter). Raises :class:`TargetError` before touching the model when a target matches nothing
    or names a module type the method cannot adapt.
    """
    prepared = prepare_adapter(
        model,
        name,
        config,
        targets=targets,
        lora_overrides=lora_overrides,
        adapter_dtype=adapter_dtype,
    )
    attach_adapter(model, prepared)
    return prepared.record


def prepare_adapter(
    model: nn.Module,
    name: str,
    config: MethodConfig,
    *,
    targets: list[Target] | None = None,
    lora_overrides: dict[str, tuple[int, float]] | None = None,
    adapter_dtype: AdapterDtype = "fp32",
) -> PreparedAdapter:
    """Validate and build everything :func:`add_adapter` needs, without changing ``model``."""
    if adapter_dtype not in ("fp32", "base"):
        raise ConfigError(f"adapter_dtype must be 'fp32' or 'base', got {adapter_dtype!r}")
    _check_new_name(model, name)
    # "lora" or {"type": "lora"}, a habit from specs; a plug-in's config is any frozen dataclass
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ConfigError(
            f"config must be a method configuration such as pc.LoRA(rank=8), not {config!r}; "
            "pc.config_from_dict({'type': 'lora', ...}) makes one from a spec's method mapping"
        )
    method = method_of(config)
    method.check_model(model, config)
    overrides = dict(lora_overrides or {})
    resolved = targets if targets is not None else method.targets(model, config)
    modules = _build_modules(model, config, resolved, overrides, adapter_dtype == "base")
    head = detect_head(model)
    if method.trains_whole_model:
        # A full fine-tune owns every weight, the head included: no per-adapter head copy.
        head = dataclasses.replace(head, trainable=False)
    record = AdapterRecord(name, config, resolved, head, overrides)
    return PreparedAdapter(record, modules, float32_head=adapter_dtype == "fp32")


def attach_adapter(model: nn.Module, prepared: PreparedAdapter) -> None:
    """Place a prepared adapter in the model, activate it and make it the one that trains."""
    name = prepared.record.name
    method = method_of(prepared.record.config)
    if method.places_itself:
        method.place(model, prepared.record)  # may refuse; nothing else has changed yet
    for module_name, adapter in prepared.modules.items():
        _wrap(model, module_name).adapters[name] = adapter
    if prepared.record.head.trainable:
        for module_name in prepared.record.head.modules:
            _head_switch(model, module_name).add(name, float32=prepared.float32_head)
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
        twice = named_twice(block)
        if twice:
            raise CompositionError(
                f"{block!r} names {', '.join(map(repr, twice))} more than once: each adapter "
                "takes one place in a composition (a model holds one adapter per name; load a "
                "copy under another name with load_adapter(..., name=...) to use it twice)"
            )
        for name in leaves(block):
            get_record(model, name)  # unknown names: the same error as everywhere else
        _check_self_placed(model, block)
        block = _with_fusions(model, block)
    deactivate_parallel(model)
    if isinstance(block, Parallel):
        activate_parallel(model, block)
        block = None  # the layers run through per-row routing, set on each forward pass
    names = leaves(block)
    for _, layer in adapter_layers(model):
        layer.active = _prune(block, set(layer.adapters))
    for _, switch in head_switches(model):
        switch.active = next((n for n in reversed(names) if n in switch.heads), None)
    for method in _self_placing(model):
        method.switch(model, names)
    model.__dict__[_SELF_PLACED_ON] = [n for n in names if _places_itself(model, n)]


def active_adapters(model: nn.Module) -> list[str]:
    """Names of the adapters taking part in the active composition, in order."""
    in_layers = [n for _, layer in adapter_layers(model) for n in leaves(layer.active)]
    return list(dict.fromkeys([*in_layers, *model.__dict__.get(_SELF_PLACED_ON, [])]))


def set_trainable(model: nn.Module, name: str) -> None:
    """Freeze everything except adapter ``name`` (and its head when the head is new)."""
    if not isinstance(name, str):  # a list failed as "unhashable type: 'list'"
        raise TypeError(
            f"set_trainable takes one adapter's name: one adapter trains at a time, got "
            f"{type(name).__name__} {name!r:.40}"
        )
    record = get_record(model, name)
    if method_of(record.config).trains_whole_model:
        model.requires_grad_(True)
        return
    model.requires_grad_(False)
    for _, layer in adapter_layers(model, name):
        layer.adapters[name].requires_grad_(True)
    if _places_itself(model, name):
        for param in method_of(record.config).own_parameters(model, name):
            param.requires_grad_(True)
    if record.head.trainable:
        for module_name in record.head.modules:
            adapter_head(model, module_name, name).requires_grad_(True)


def is_merged(model: nn.Module, name: str) -> bool:
    """Whether adapter ``name`` is merged into the base weights (:func:`peft_core.merge`)."""
    method = method_of(get_record(model, name).config)
    if method.places_itself:
        return method.is_merged_placed(model, name)
    return any(layer.adapter(name).merged for _, layer in adapter_layers(model, name))


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name``; wrappers left empty give their base layer back to the model.

    A merged adapter is refused (:class:`NotMergeableError`), nothing changed: its delta would
    stay in base weights that every other adapter shares, with nothing left to take it back (as
    peft now refuses too). Unmerge it first, or keep the merge with
    :func:`peft_core.merged_state_dict`."""
    record = get_record(model, name)
    method = method_of(record.config)
    if is_merged(model, name):
        raise NotMergeableError(
            f"adapter {name!r} is merged into the base weights: deleting it would leave its delta "
            "there with nothing to take it back. pc.unmerge(model, name) first; to keep the "
            "merged weights, save pc.merged_state_dict(model, name) before unmerging"
        )
    if method.places_itself:
        method.remove(model, name)
        model.__dict__[_SELF_PLACED_ON] = [
            n for n in model.__dict__.get(_SELF_PLACED_ON, []) if n != name
        ]
    for module_name, layer in list(adapter_layers(model, name)):
        del layer.adapters[name]
        layer.active = _prune(layer.active, set(layer.adapters))
        if len(layer.adapters) == 0:
            _replace_module(model, module_name, layer.base_layer)
    for module_name, switch in head_switches(model):
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
    if not isinstance(active, Iterable):  # was "'int' object is not iterable"
        raise TypeError(
            "active is an adapter name, a composition (pc.Stack, pc.Average, pc.Parallel, "
            f"pc.Fuse), a list of names, or None for the base model; got {active!r:.40}"
        )
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


def _places_itself(model: nn.Module, name: str) -> bool:
    return method_of(get_record(model, name).config).places_itself


def _self_placing(model: nn.Module) -> list[Method]:
    """The methods of the model's adapters that place their own modules (peft-run ones)."""
    methods = {id(m): m for r in adapter_records(model).values() if (m := method_of(r.config))}
    return [m for m in methods.values() if m.places_itself]


def _check_self_placed(model: nn.Module, block: Block) -> None:
    """Adapters that peft runs can be active alone or in a Stack; nothing else reaches them."""
    if isinstance(block, str) or (
        isinstance(block, Stack) and all(isinstance(c, str) for c in block.children)
    ):
        return
    placed = [n for n in leaves(block) if _places_itself(model, n)]
    if placed:
        raise CompositionError(
            f"{block!r}: {placed} run in peft's own layers, which take part in a plain Stack "
            "of names only (not Parallel, Average or Fuse)"
        )


def _check_new_name(model: nn.Module, name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TargetError(
            f"invalid adapter name {name!r}: use letters, digits, '_' and '-' only (no dots)"
        )
    if name in adapter_records(model):
        raise AdapterExistsError(
            f"model already has an adapter {name!r}; choose another name or "
            "peft_core.delete_adapter it first",
            name,
        )


def _build_modules(
    model: nn.Module,
    config: MethodConfig,
    targets: list[Target],
    overrides: dict[str, tuple[int, float]],
    keep_base_dtype: bool = False,
) -> dict[str, nn.Module]:
    """Build one adapter module per target module, validating each target; mutates nothing."""
    by_module: dict[str, list[Target]] = defaultdict(list)
    for target in targets:
        by_module[target.module_name].append(target)
    built: dict[str, nn.Module] = {}
    for module_name, module_targets in by_module.items():
        base = _base_layer(model, module_name)
        built[module_name] = _build_one(
            base, module_name, config, module_targets, overrides, keep_base_dtype=keep_base_dtype
        )
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
    *,
    keep_base_dtype: bool,
) -> nn.Module:
    kind = layer_kind(base)
    if kind is None and is_peft_layer(base):
        raise TargetError(
            f"{module_name} already runs a peft adapter's layer ({type(base).__module__}); "
            f"a {config.type} adapter cannot wrap it: target other modules"
        )
    if kind is None:
        raise TargetError(
            f"{module_name} is a {type(base).__name__}, which {config.type} cannot adapt; "
            "supported module types: Linear, Conv1D (GPT-2) and, for BitFit, LayerNorm"
        )
    site = LayerSite(
        module_name, base, kind, tuple(targets), overrides.get(module_name), keep_base_dtype
    )
    return method_of(config).build(site, config)


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
