"""LoRA in the Hugging Face PEFT file layout (read by peft, vLLM, LoRAX and MLflow).

``adapter_config.json`` is flat PEFT configuration only; our lifecycle metadata goes in a separate
``adapterops.json`` (older peft versions crash on unknown keys). Tensors are keyed
``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight``; a new head is saved as a
``modules_to_save`` module under ``base_model.model.<head module>.<parameter>``.

GPT-2 computes q, k and v in one fused ``c_attn``. PEFT cannot adapt a slice of it, so LoRAs on
the q and v slices are exported as one LoRA of rank ``2r`` on ``c_attn`` whose ``B`` is
block-structured (zero rows for k): the same delta, exactly.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

from .config import LoRA
from .errors import AdapterFormatError, ConfigError
from .heads import adapter_head
from .inject import prepare_adapter
from .io import check_fingerprint, load_into_prepared
from .layer import named_base_modules
from .methods.lora import LoRAModule
from .methods.parts import SliceParts
from .roles import Target
from .state import AdapterRecord, adapter_layers

__all__ = ["PEFT_CONFIG", "PEFT_WEIGHTS", "read_peft", "write_peft"]

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
OUR_METADATA = "adapterops.json"
_TASK_TYPES = {"classification": "SEQ_CLS", "causal-lm": "CAUSAL_LM"}
_LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$"
)


def write_peft(model: nn.Module, record: AdapterRecord, folder: Path, meta: dict[str, Any]) -> None:
    """Write ``record``'s LoRA in PEFT layout into ``folder``."""
    config = record.config
    if not isinstance(config, LoRA):
        raise ConfigError(
            f"the PEFT format holds LoRA adapters only; {record.name!r} is {config.type}. "
            "Save it with format='adapterops'."
        )
    tensors: dict[str, Tensor] = {}
    ranks: dict[str, tuple[int, float]] = {}
    conv1d = False
    for module_name, layer in adapter_layers(model, record.name):
        a, b, scaling = _as_single_lora(layer.adapters[record.name])
        tensors[f"{PEFT_PREFIX}{module_name}.lora_A.weight"] = a
        tensors[f"{PEFT_PREFIX}{module_name}.lora_B.weight"] = b
        rank = int(a.shape[0])
        ranks[module_name] = (rank, scaling * (rank**0.5 if config.use_rslora else rank))
        conv1d = conv1d or layer.kind.transposed
    for module_name in record.head.modules if record.head.trainable else ():
        for key, value in adapter_head(model, module_name, record.name).state_dict().items():
            tensors[f"{PEFT_PREFIX}{module_name}.{key}"] = value
    (default_rank, default_alpha), _ = Counter(ranks.values()).most_common(1)[0]
    peft_config = {
        "peft_type": "LORA",
        "task_type": _TASK_TYPES.get(record.head.kind),
        "base_model_name_or_path": meta["fingerprint"].get("name_or_path") or None,
        "r": default_rank,
        "lora_alpha": default_alpha,
        "lora_dropout": config.dropout,
        "target_modules": _target_modules(model, list(ranks)),
        "fan_in_fan_out": conv1d,
        "bias": "none",
        "use_rslora": config.use_rslora,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": list(record.head.modules) if record.head.trainable else None,
        "rank_pattern": {re.escape(m): r for m, (r, _) in ranks.items() if r != default_rank},
        "alpha_pattern": {re.escape(m): a for m, (_, a) in ranks.items() if a != default_alpha},
        "layers_to_transform": None,
        "layers_pattern": None,
        "inference_mode": True,
        "revision": None,
    }
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    safetensors.torch.save_file(contiguous, str(folder / PEFT_WEIGHTS), metadata={"format": "pt"})
    (folder / PEFT_CONFIG).write_text(json.dumps(peft_config, indent=2, sort_keys=True) + "\n")
    (folder / OUR_METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _as_single_lora(adapter: nn.Module) -> tuple[Tensor, Tensor, float]:
    """``(A, B, scaling)`` of one LoRA equal to ``adapter`` (slices become a block-structured B)."""
    if isinstance(adapter, LoRAModule) and adapter.out_slice is None:
        return adapter.lora_A.weight, adapter.lora_B.weight, adapter.scaling
    modules = list(adapter.parts.values()) if isinstance(adapter, SliceParts) else [adapter]
    parts = [p for p in modules if isinstance(p, LoRAModule)]
    assert len(parts) == len(modules), "a LoRA adapter holds LoRA modules only"
    first = parts[0]
    a = torch.cat([p.lora_A.weight for p in parts])  # (n*r, in)
    b = a.new_zeros(first.total_out, a.shape[0])  # (out, n*r)
    offset = 0
    for part in parts:
        start, stop = part.out_slice or (0, part.total_out)
        b[start:stop, offset : offset + part.rank] = part.lora_B.weight
        offset += part.rank
    return a, b, first.scaling


def _target_modules(model: nn.Module, modules: list[str]) -> list[str]:
    """Leaf names (``["query", "value"]``) if they select exactly these modules, else full names."""
    leaves = {m.rsplit(".", 1)[-1] for m in modules}
    same_leaf = {name for name, _ in named_base_modules(model) if name.rsplit(".", 1)[-1] in leaves}
    return sorted(leaves) if same_leaf == set(modules) else sorted(modules)


def read_peft(
    model: nn.Module,
    folder: Path,
    *,
    name: str | None,
    tokenizer: Any = None,
    force: bool = False,
) -> AdapterRecord:
    """Load a LoRA saved by peft (or by :func:`write_peft`) into ``model``."""
    peft_config = _read_config(folder)
    if (folder / OUR_METADATA).is_file():
        meta = json.loads((folder / OUR_METADATA).read_text())
        check_fingerprint(model, meta, tokenizer=tokenizer, force=force)
        name = name or meta.get("name")
    weights = folder / PEFT_WEIGHTS
    if not weights.is_file():
        raise AdapterFormatError(f"missing {PEFT_WEIGHTS} in {folder}")
    device = next(model.parameters()).device
    raw = {k: v.to(device) for k, v in safetensors.torch.load_file(str(weights)).items()}
    lora, head = _split_keys(raw)
    overrides = _module_ranks(peft_config, lora)
    config = LoRA(
        rank=int(peft_config["r"]),
        alpha=float(peft_config["lora_alpha"]),
        dropout=float(peft_config.get("lora_dropout") or 0.0),
        targets=_as_targets(peft_config.get("target_modules")),
        use_rslora=bool(peft_config.get("use_rslora", False)),
    )
    modules = sorted({module for module, _ in lora})
    prepared = prepare_adapter(
        model,
        name or folder.name,
        config,
        targets=[Target(m) for m in modules],
        lora_overrides=overrides,
    )
    if not head:  # saved without modules_to_save: the adapter brings no head of its own
        prepared.record.head = dataclasses.replace(prepared.record.head, trainable=False)
    tensors = {f"{m}.lora_{ab}.weight": t for (m, ab), t in lora.items()} | head
    load_into_prepared(model, prepared, tensors, source=folder)
    return prepared.record


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads((folder / PEFT_CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise AdapterFormatError(f"{folder / PEFT_CONFIG} is not valid JSON: {exc}") from exc
    if config.get("peft_type") != "LORA":
        raise AdapterFormatError(
            f"{folder} holds a {config.get('peft_type')!r} adapter; only PEFT LoRA can be read"
        )
    unsupported = [k for k in ("use_dora", "lora_bias") if config.get(k)]
    if config.get("bias", "none") != "none":
        unsupported.append(f"bias={config['bias']!r}")
    if unsupported:
        raise AdapterFormatError(f"{folder}: PEFT LoRA options not supported: {unsupported}")
    return config


def _split_keys(
    raw: dict[str, Tensor],
) -> tuple[dict[tuple[str, str], Tensor], dict[str, Tensor]]:
    """Separate LoRA tensors ``{(module, "A"|"B"): tensor}`` from head tensors ``{key: tensor}``."""
    lora: dict[tuple[str, str], Tensor] = {}
    head: dict[str, Tensor] = {}
    for key, tensor in raw.items():
        match = _LORA_KEY.match(key)
        if match:
            lora[(match["module"], match["ab"])] = tensor
        else:
            plain = key.removeprefix(PEFT_PREFIX).replace(".modules_to_save.default.", ".")
            head[plain] = tensor
    if not lora:
        raise AdapterFormatError("PEFT file has no lora_A/lora_B tensors")
    missing = [m for m in {m for m, _ in lora} if (m, "A") not in lora or (m, "B") not in lora]
    if missing:
        raise AdapterFormatError(f"PEFT file has lora_A without lora_B (or back) for {missing[:3]}")
    return lora, head


def _module_ranks(
    config: dict[str, Any], lora: dict[tuple[str, str], Tensor]
) -> dict[str, tuple[int, float]]:
    """Per-module ``(rank, alpha)`` where ``rank_pattern``/``alpha_pattern`` set other values."""
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    overrides: dict[str, tuple[int, float]] = {}
    for module in sorted({m for m, _ in lora}):
        module_rank = int(_pattern_value(config.get("rank_pattern") or {}, module, rank))
        module_alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, alpha))
        if lora[(module, "A")].shape[0] != module_rank:
            raise AdapterFormatError(
                f"{module}: lora_A has rank {lora[(module, 'A')].shape[0]} but the config says "
                f"{module_rank}"
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


def _as_targets(target_modules: Any) -> tuple[str, ...]:
    if isinstance(target_modules, str):
        return (target_modules,)
    if isinstance(target_modules, list | tuple) and target_modules:
        return tuple(str(t) for t in target_modules)
    return ("<from file>",)
