"""The Hugging Face PEFT file layout (read by peft, vLLM, LoRAX and MLflow).

``adapter_config.json`` is flat PEFT configuration only; our lifecycle metadata goes in a separate
``adapterops.json`` (older peft versions crash on unknown keys). Tensors are keyed
``base_model.model.<module>.<parameter>``; a new head is saved as a ``modules_to_save`` module
under ``base_model.model.<head module>.<parameter>``.

This module holds what every method shares (the files, the keys, the head, the common config
fields); each method that has a PEFT counterpart (LoRA, DoRA, IA3) translates its own fields and
tensors in its ``to_peft``/``from_peft`` hooks.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from .errors import AdapterFormatError, ConfigError
from .heads import adapter_head
from .inject import prepare_adapter
from .io import (
    check_fingerprint,
    file_tensors,
    load_into_prepared,
    load_self_placed,
    read_json_object,
)
from .layer import named_base_modules
from .methods import Method, all_methods, method_of
from .methods.lora import with_one_rank
from .offload import input_device
from .state import AdapterRecord, adapter_layers
from .tensor_files import save_tensors

__all__ = ["PEFT_CONFIG", "PEFT_WEIGHTS", "one_rank_in_place", "read_peft", "write_peft"]

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# A tuner's shared state (VeRA's projections), and in a prompt-learning PeftModel (which holds
# the model itself as ``base_model``, no tuner in between) the model's modules.
TUNER_PREFIX = "base_model."
OUR_METADATA = "adapterops.json"
_TASK_TYPES = {"classification": "SEQ_CLS", "causal-lm": "CAUSAL_LM"}


def write_peft(
    model: nn.Module,
    record: AdapterRecord,
    folder: Path,
    meta: dict[str, Any],
    *,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Write ``record`` in PEFT layout into ``folder`` (methods with a PEFT counterpart only;
    floating tensors in ``dtype``)."""
    method = method_of(record.config)
    if method.peft_type is None and not method.places_itself:
        holds = sorted(t for t, m in all_methods().items() if m.peft_type is not None)
        raise ConfigError(
            f"the PEFT format holds {', '.join(holds)} adapters; {record.name!r} is "
            f"{record.config.type}. Save it with format='adapterops'."
        )
    layers = dict(adapter_layers(model, record.name))
    if method.places_itself:  # peft wrote the whole configuration itself
        fields, tensors = method.peft_files(model, record)
    else:
        fields, tensors = method.to_peft(record, layers)
    modules = list(layers)
    for module_name in record.head.modules if record.head.trainable else ():
        for key, value in adapter_head(model, module_name, record.name).state_dict().items():
            tensors[f"{module_name}.{key}"] = value
    shared = {
        "peft_type": method.peft_type,
        "task_type": _TASK_TYPES.get(record.head.kind),
        "base_model_name_or_path": meta["fingerprint"].get("name_or_path") or None,
        "target_modules": _target_modules(model, modules),
        "fan_in_fan_out": any(layer.kind.transposed for layer in layers.values()),
        "modules_to_save": list(record.head.modules) if record.head.trainable else None,
        "inference_mode": True,
        "revision": None,
    }
    if method.places_itself:  # keep peft's own targets and flags; add what only we know
        shared = {k: shared[k] for k in ("task_type", "base_model_name_or_path", "modules_to_save")}
    peft_config = {**shared, **fields} if not method.places_itself else {**fields, **shared}
    # a prompt-learning PeftModel holds the model itself as ``base_model`` (no tuner between)
    under = TUNER_PREFIX if "prompt_embeddings" in tensors else PEFT_PREFIX
    contiguous = file_tensors({_with_prefix(k, under): v for k, v in tensors.items()}, dtype)
    save_tensors(contiguous, folder / PEFT_WEIGHTS, metadata={"format": "pt"})
    (folder / PEFT_CONFIG).write_text(json.dumps(peft_config, indent=2, sort_keys=True) + "\n")
    (folder / OUR_METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _target_modules(model: nn.Module, modules: list[str]) -> list[str]:
    """Leaf names (``["query", "value"]``) if they select exactly these modules, else full names."""
    leaves = {m.rsplit(".", 1)[-1] for m in modules}
    same_leaf = {name for name, _ in named_base_modules(model) if name.rsplit(".", 1)[-1] in leaves}
    return sorted(leaves) if same_leaf == set(modules) else sorted(modules)


def one_rank_in_place(folder: Path) -> dict[str, Any]:
    """Rewrite the LoRA in PEFT files ``folder`` with one rank and alpha for every module
    (:func:`peft_core.methods.lora.with_one_rank`; other methods and LoRAs without
    ``rank_pattern``/``alpha_pattern`` are left alone); returns the configuration now there."""
    peft_config = read_json_object(folder / PEFT_CONFIG)
    if peft_config.get("peft_type") != "LORA":
        return peft_config
    weights = folder / PEFT_WEIGHTS
    tensors = safetensors.torch.load_file(str(weights))
    config, uniform = with_one_rank(peft_config, tensors)
    if uniform is not tensors:
        save_tensors(uniform, weights, metadata={"format": "pt"})
        (folder / PEFT_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config


def read_peft(
    model: nn.Module,
    folder: Path,
    *,
    name: str | None,
    tokenizer: Any = None,
    force: bool = False,
) -> AdapterRecord:
    """Load an adapter saved by peft (or by :func:`write_peft`) into ``model``."""
    peft_config = read_json_object(folder / PEFT_CONFIG)
    method = _method_for(peft_config, folder)
    if (folder / OUR_METADATA).is_file():
        meta = read_json_object(folder / OUR_METADATA)
        check_fingerprint(model, meta, tokenizer=tokenizer, force=force)
        name = name or meta.get("name")
    weights = folder / PEFT_WEIGHTS
    if not weights.is_file():
        raise AdapterFormatError(f"missing {PEFT_WEIGHTS} in {folder}")
    device = input_device(model)  # (copied on to each layer's own device)
    children = {name for name, _ in model.named_children()}
    raw = {
        _without_prefix(key, children): value.to(device)
        for key, value in safetensors.torch.load_file(str(weights)).items()
    }
    try:
        imported = method.from_peft(peft_config, raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterFormatError(
            f"{folder}: malformed PEFT {method.peft_type} adapter: {exc}"
        ) from None
    head = {
        key.replace(".modules_to_save.default.", "."): value
        for key, value in raw.items()
        if not method.owns_peft_key(key)
    }
    prepared = prepare_adapter(
        model,
        name or folder.name,
        imported.config,
        targets=imported.targets,
        lora_overrides=imported.lora_overrides,
    )
    if not head:  # saved without modules_to_save: the adapter brings no head of its own
        prepared.record.head = dataclasses.replace(prepared.record.head, trainable=False)
    if method.places_itself:
        load_self_placed(model, prepared, imported.tensors | head, source=folder)
        return prepared.record
    load_into_prepared(model, prepared, imported.tensors | head, source=folder)
    return prepared.record


def _with_prefix(key: str, under: str) -> str:
    """A tensor's key in a PEFT file: the model's modules under ``under`` (the PEFT prefix,
    or a prompt-learning file's ``base_model.``); peft's own top-level keys (a prompt's
    ``prompt_embeddings``) and a tuner's shared state (VeRA's ``base_model.vera_A``, FRoD's
    ``base_model.frod_V``) as peft writes them."""
    return key if "." not in key or key.startswith(TUNER_PREFIX) else f"{under}{key}"


def _without_prefix(key: str, children: set[str]) -> str:
    """A PEFT file's key as ours: without the PEFT prefix; a prompt-learning PeftModel's
    ``base_model.<module>`` (it holds the model itself as ``base_model``) without
    ``base_model.``; a tuner's shared state (``base_model.vera_A``) as it is."""
    if key.startswith(PEFT_PREFIX):
        return key.removeprefix(PEFT_PREFIX)
    inner = key.removeprefix(TUNER_PREFIX)
    return inner if inner.split(".", 1)[0] in children else key


def _method_for(peft_config: dict[str, Any], folder: Path) -> Method:
    for method in all_methods().values():
        if method.reads_peft(peft_config):
            return method
    readable = sorted({m.peft_type for m in all_methods().values() if m.peft_type})
    raise AdapterFormatError(
        f"{folder} holds a {peft_config.get('peft_type')!r} adapter; peft_core reads PEFT "
        f"{', '.join(readable)} adapters"
    )
