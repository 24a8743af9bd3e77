"""Our adapter file format, and the checks every loader shares.

Our format is a folder with two files:

- ``adapter.safetensors``: the adapter's tensors, keyed ``<module name>.<parameter>`` (plus the
  head's parameters under their model names when the head is new);
- ``adapter.json``: method configuration, exact targets, head, base-model fingerprint, versions.

Loading validates everything (metadata, fingerprint, tensor names and shapes) before the model is
touched.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import transformers
from torch import Tensor, nn

from . import __version__
from .config import config_from_dict, config_to_dict
from .errors import AdapterFormatError, BaseModelMismatchError, ConfigError, PeftCoreError
from .fingerprint import Fingerprint, fingerprint
from .heads import adapter_head, body_prefix, head_state, original_head_state
from .inject import PreparedAdapter, attach_adapter, delete_adapter, prepare_adapter
from .layer import base_state_dict
from .methods import method_of
from .offload import input_device
from .roles import Target
from .state import AdapterRecord, adapter_layers, get_record
from .tensor_files import save_tensors

__all__ = [
    "ADAPTER_META",
    "ADAPTER_WEIGHTS",
    "adapter_state_dict",
    "check_fingerprint",
    "file_tensors",
    "load_into_prepared",
    "load_self_placed",
    "metadata",
    "read_metadata",
    "read_ours",
    "write_ours",
]

ADAPTER_META = "adapter.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
FORMAT_NAME = "adapterops.adapter"
FORMAT_VERSION = 1


def adapter_state_dict(model: nn.Module, name: str) -> dict[str, Tensor]:
    """Adapter ``name``'s tensors (and its new head's), keyed as in our file format."""
    record = get_record(model, name)
    if method_of(record.config).trains_whole_model:
        return _unique_tensors(base_state_dict(model))
    state: dict[str, Tensor] = {}
    if method_of(record.config).places_itself:
        state.update(method_of(record.config).own_state(model, name))
    for module_name, layer in adapter_layers(model, name):
        for key, value in layer.adapters[name].state_dict().items():
            state[f"{module_name}.{key}"] = value
    state.update(head_state(model, record.head, record.name))
    return state


def write_ours(
    model: nn.Module,
    record: AdapterRecord,
    folder: Path,
    meta: dict[str, Any],
    *,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Write ``record`` in our format into ``folder`` (floating tensors in ``dtype``)."""
    tensors = file_tensors(adapter_state_dict(model, record.name), dtype)
    save_tensors(tensors, folder / ADAPTER_WEIGHTS)
    (folder / ADAPTER_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def file_tensors(tensors: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """Tensors as a safetensors file holds them: on the CPU, contiguous, floats in ``dtype``,
    each with memory of its own (safetensors refuses aliases; peft methods whose layers share
    one tensor, RandLoRA's bases or Lily's projections, list it under every layer)."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()  # storages already written (all on the CPU by then)
    for key, value in tensors.items():
        tensor = (value.to(dtype) if value.is_floating_point() else value).detach().contiguous()
        tensor = tensor.cpu()
        storage = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if storage in seen else tensor
        seen.add(storage)
    return out


def metadata(model: nn.Module, record: AdapterRecord, tokenizer: Any = None) -> dict[str, Any]:
    """The JSON metadata we store beside an adapter's tensors."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "name": record.name,
        "method": config_to_dict(method_of(record.config).saved_config(record.config)),
        "targets": [
            [t.module_name, list(t.out_slice) if t.out_slice else None, t.role]
            for t in record.targets
        ],
        "lora_overrides": {k: list(v) for k, v in record.lora_overrides.items()},
        "head": {
            "kind": record.head.kind,
            "modules": list(record.head.modules),
            "trainable": record.head.trainable,
        },
        "fingerprint": fingerprint(model, tokenizer).to_dict(),
        "versions": {
            "peft_core": __version__,
            "torch": torch.__version__,
            "transformers": _transformers_version(),
        },
    }


def require_adapter_folder(folder: Path) -> None:
    """A clear error for a path that is not a folder at all: missing, or a file (a user who
    gives ``adapter_model.safetensors`` itself meant the folder holding it)."""
    if folder.is_dir():
        return
    if folder.exists():
        raise AdapterFormatError(
            f"{folder} is a file, not an adapter folder: give the folder the adapter was saved "
            f"into (the one holding {ADAPTER_META} or adapter_config.json)"
        )
    raise AdapterFormatError(f"adapter folder {folder} does not exist")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a saved adapter folder (our format or our PEFT export)."""
    folder = Path(path)
    require_adapter_folder(folder)
    for file_name in (ADAPTER_META, "adapterops.json"):
        if (folder / file_name).is_file():
            return read_json_object(folder / file_name)
    raise AdapterFormatError(f"{folder} has no {ADAPTER_META}: not an adapter saved by peft_core")


def read_json_object(file: Path) -> dict[str, Any]:
    """An adapter folder's JSON file, one object: broken JSON, bytes that are not UTF-8 or
    another JSON value is an :class:`AdapterFormatError` naming the file (they were the
    decoder's ``JSONDecodeError`` or ``UnicodeDecodeError``, or a ``KeyError`` further on)."""
    try:
        data = json.loads(file.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterFormatError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise AdapterFormatError(f"{file} is not a JSON object: {type(data).__name__}")
    return data


def read_ours(
    model: nn.Module,
    folder: Path,
    *,
    name: str | None = None,
    tokenizer: Any = None,
    force: bool = False,
    weightless: bool = False,
) -> AdapterRecord:
    """Load an adapter saved in our format; everything is checked before the model changes.
    ``weightless``: ``model`` is a skeleton on the meta device and the adapter's own tensors go
    to the CPU (what converting its files needs; the model cannot run)."""
    meta = read_metadata(folder)
    check_fingerprint(model, meta, tokenizer=tokenizer, force=force)
    tensors = _read_tensors(folder / ADAPTER_WEIGHTS, model)
    meta, tensors = _named_as_in(model, meta, tensors)
    prepared = _prepare_from_meta(model, meta, name or str(meta.get("name") or folder.name))
    method = method_of(prepared.record.config)
    if weightless and (method.trains_whole_model or method.places_itself):
        raise ConfigError(
            f"{folder} holds a {prepared.record.config.type} adapter, whose files cannot be "
            "converted without the base model's weights"
        )
    if method.trains_whole_model:
        _load_full(model, tensors, folder)
        attach_adapter(model, prepared)
        return prepared.record
    if method.places_itself:
        load_self_placed(model, prepared, tensors, source=folder)
        return prepared.record
    load_into_prepared(model, prepared, tensors, source=folder, weightless=weightless)
    return prepared.record


def check_fingerprint(
    model: nn.Module, meta: dict[str, Any], *, tokenizer: Any = None, force: bool = False
) -> None:
    """Raise :class:`BaseModelMismatchError` when ``meta``'s base model is not ``model``."""
    if "fingerprint" not in meta or force:
        return
    saved = Fingerprint.from_dict(meta["fingerprint"])
    current = fingerprint(model, tokenizer)
    differences = saved.differences(current)
    if differences:
        raise BaseModelMismatchError(
            f"adapter {meta.get('name')!r} was trained on base model "
            f"{saved.name_or_path or saved.model_type!r} (fingerprint {saved.digest[:12]}), "
            f"but this model is {current.name_or_path or current.model_type!r} (fingerprint "
            f"{current.digest[:12]}): {'; '.join(differences[:5])}. Load it onto its own base "
            "model, or pass force=True if you know the weights are compatible."
        )


def load_into_prepared(
    model: nn.Module,
    prepared: PreparedAdapter,
    tensors: dict[str, Tensor],
    *,
    source: Path,
    weightless: bool = False,
) -> None:
    """Fill a prepared adapter and the head from ``tensors``, check everything, then attach.
    ``weightless``: the adapter (built on the meta device with the model) and its head are
    given CPU storage first."""
    expected: dict[str, Tensor] = {}
    for module_name, module in prepared.modules.items():
        if weightless:
            module.to_empty(device="cpu")
        for key, value in module.state_dict().items():
            expected[f"{module_name}.{key}"] = value
    head = original_head_state(model, prepared.record.head)
    _check_keys_and_shapes(expected | head, tensors, source)
    stranded = next((key for key, target in expected.items() if target.is_meta), None)
    if stranded is not None:  # copying into a meta tensor keeps nothing, silently
        raise ConfigError(
            f"cannot load {source} into a model without weights: {stranded} would be on the "
            "meta device (a base built under init_empty_weights or torch.device('meta')); load "
            "the base model's weights first"
        )
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(tensors[key])
    attach_adapter(model, prepared)  # everything is checked: only now does the model change
    record = prepared.record
    if weightless and record.head.trainable:
        for module_name in record.head.modules:
            adapter_head(model, module_name, record.name).to_empty(device="cpu")
    with torch.no_grad():
        for key, target in head_state(model, record.head, record.name).items():
            target.copy_(tensors[key])


def load_self_placed(
    model: nn.Module,
    prepared: PreparedAdapter,
    tensors: dict[str, Tensor],
    *,
    source: Path,
) -> None:
    """Place a peft-run adapter, then fill it and the head from ``tensors``.

    peft builds the layers, so their shapes are known only once placed: the adapter is placed
    first and taken out again if the files do not fit, leaving the model as it was.
    """
    record = prepared.record
    method = method_of(record.config)
    head = original_head_state(model, record.head)
    attach_adapter(model, prepared)
    try:
        expected = method.own_state(model, record.name)
        _check_keys_and_shapes(expected | head, tensors, source)
        with torch.no_grad():
            method.load_own_state(model, record.name, {k: tensors[k] for k in expected})
            for key, target in head_state(model, record.head, record.name).items():
                target.copy_(tensors[key])
    except BaseException:
        delete_adapter(model, record.name)
        raise


def _named_as_in(
    model: nn.Module, meta: dict[str, Any], tensors: dict[str, Tensor]
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Target names as ``model`` spells them: an adapter saved on a bare body
    (``encoder.layer.0...``, e.g. an AdapterHub import) names the same modules as one saved on a
    model with a head (``bert.encoder.layer.0...``), and loads into either."""
    targets = meta.get("targets")
    if not isinstance(targets, list) or not all(isinstance(t, list) and t for t in targets):
        return meta, tensors  # malformed: _prepare_from_meta says so
    prefix = body_prefix(model)

    def exists(name: str) -> bool:
        try:
            model.get_submodule(name)
        except AttributeError:
            return False
        return True

    def renamed(name: str) -> str:
        if not isinstance(name, str) or exists(name):
            return name
        if prefix and exists(f"{prefix}.{name}"):
            return f"{prefix}.{name}"
        rest = name.partition(".")[2]
        return rest if rest and exists(rest) else name  # unknown: prepare_adapter reports it

    mapping = {t[0]: new for t in targets if (new := renamed(t[0])) != t[0]}
    if not mapping:
        return meta, tensors
    moved = {_renamed_key(key, mapping): value for key, value in tensors.items()}
    return {**meta, "targets": [[mapping.get(t[0], t[0]), *t[1:]] for t in targets]}, moved


def _renamed_key(key: str, mapping: dict[str, str]) -> str:
    module, _, parameter = key.rpartition(".")
    while module and module not in mapping:  # parameters of submodules: "<module>.down.weight"
        module, _, rest = module.rpartition(".")
        parameter = f"{rest}.{parameter}"
    return f"{mapping[module]}.{parameter}" if module else key


def _prepare_from_meta(model: nn.Module, meta: dict[str, Any], name: str) -> PreparedAdapter:
    try:
        config = config_from_dict(meta["method"])
        targets = [
            Target(module, (int(sl[0]), int(sl[1])) if sl else None, role)
            for module, sl, role in meta.get("targets", [])
        ]
        overrides = {k: (int(v[0]), float(v[1])) for k, v in meta.get("lora_overrides", {}).items()}
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise AdapterFormatError(f"adapter metadata is malformed: {exc}") from exc
    try:
        prepared = prepare_adapter(model, name, config, targets=targets, lora_overrides=overrides)
    except PeftCoreError:
        raise
    except (AttributeError, KeyError) as exc:
        raise AdapterFormatError(f"adapter does not fit this model: {exc}") from exc
    return _with_saved_head(prepared, meta.get("head", {}))


def _with_saved_head(prepared: PreparedAdapter, saved: dict[str, Any]) -> PreparedAdapter:
    """The adapter brings a head only if it was saved with one.

    A language adapter trained with a (frozen) masked-LM head loads into a classifier without a
    head of its own; an adapter with a trained classification head needs a model with that head.
    """
    head = prepared.record.head
    if not saved.get("trainable", head.trainable):
        prepared.record.head = dataclasses.replace(head, trainable=False)
    elif not head.trainable:
        kind = saved.get("kind")
        raise AdapterFormatError(
            f"adapter {prepared.record.name!r} carries a trained {kind} head, but this model's "
            f"head is {head.kind}: load it into a model with a {kind} head"
        )
    return prepared


def _read_tensors(path: Path, model: nn.Module) -> dict[str, Tensor]:
    if not path.is_file():
        raise AdapterFormatError(f"missing {path.name} in {path.parent}")
    try:
        tensors = safetensors.torch.load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise AdapterFormatError(f"cannot read {path}: {exc}") from exc
    device = input_device(model)  # (copied on to each layer's own device)
    device = torch.device("cpu") if device.type == "meta" else device  # a weightless skeleton
    return {k: v.to(device) for k, v in tensors.items()}


def _check_keys_and_shapes(
    expected: dict[str, Tensor], tensors: dict[str, Tensor], source: Path
) -> None:
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise AdapterFormatError(
            f"adapter files in {source} do not match the adapter they describe: "
            f"{len(missing)} missing tensor(s) {missing[:3]}, {len(extra)} unexpected {extra[:3]}"
        )
    wrong = [
        f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise AdapterFormatError(f"tensor shapes in {source} do not fit this model: {wrong[:3]}")


def _load_full(model: nn.Module, tensors: dict[str, Tensor], source: Path) -> None:
    current = base_state_dict(model)
    unknown = sorted(set(tensors) - set(current))
    wrong = [k for k in tensors if k in current and tensors[k].shape != current[k].shape]
    if unknown or wrong:
        raise AdapterFormatError(
            f"full fine-tune in {source} does not fit this model: unknown {unknown[:3]}, "
            f"wrong shapes {wrong[:3]}"
        )
    with torch.no_grad():
        for key, value in tensors.items():
            current[key].copy_(value)


def _unique_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop tied duplicates (safetensors refuses tensors that share memory).

    Tied weights are one ``Parameter`` object under two names, so identity finds them, on the meta
    device too (where every ``data_ptr()`` is 0).
    """
    seen: set[int] = set()
    unique = {}
    for key, value in state.items():
        if id(value) not in seen:
            seen.add(id(value))
            unique[key] = value
    return unique


def _transformers_version() -> str:
    return str(transformers.__version__)
