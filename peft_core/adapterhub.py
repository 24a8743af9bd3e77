"""Read (and write) bottleneck adapters in the format of AdapterHub's ``adapters`` library (1.x).

Such a folder holds ``adapter_config.json`` (``{"config": {...}, "model_type", "hidden_size",
"version": "adapters.1.3.0", ...}``, the same file name as peft's, told apart by its ``config``
object) and ``pytorch_adapter.bin`` or ``adapter.safetensors``. The two bottleneck layouts that
AdapterHub's hub is made of map onto our modules exactly:

- ``seq_bn`` (its "pfeiffer"): on the FFN's LayerNorm, reading ``LN(y + residual)`` -> our
  :class:`~peft_core.Pfeiffer` with ``original_ln_before=True``;
- ``double_seq_bn`` (its "houlsby"): after the attention and the FFN projections -> our
  :class:`~peft_core.Houlsby`.

A float, ``learned`` or ``channel`` scaling is folded into the up projection; ``leave_out`` layers
get no module. Anything that changes the computation in a way our modules do not (gating, extra
layer norms, parallel adapters, PHM/Compacter, invertible adapters) is refused by name, before the
model changes. AdapterHub prediction heads are not read: they pool the ``[CLS]`` hidden state
themselves, where ``*ForSequenceClassification`` runs its own pooler, so the adapter loads with
the model's head.

:func:`write_adapterhub` (``save_adapter(..., format="adapterhub")``) writes our Houlsby and
Pfeiffer adapters back in that layout, without a head, for ``adapters``' ``load_adapter``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

from .errors import AdapterFormatError, BaseModelMismatchError
from .inject import prepare_adapter
from .io import load_into_prepared, read_json_object
from .methods.base import MethodConfig
from .methods.bottleneck import Houlsby, Pfeiffer
from .offload import input_device
from .roles import Target
from .state import AdapterRecord

__all__ = ["adapterhub_method", "is_adapterhub_folder", "read_adapterhub", "write_adapterhub"]

CONFIG = "adapter_config.json"
WEIGHTS: tuple[str, ...] = ("adapter.safetensors", "pytorch_adapter.bin")
_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "swish": "silu", "silu": "silu", "tanh": "tanh"}
# Settings that change the computation in ways our bottleneck modules do not reproduce, with the
# value under which they are harmless.
_MUST_BE = {
    "ln_before": False,
    "ln_after": False,
    "use_gating": False,
    "is_parallel": False,
    "phm_layer": False,
    "inv_adapter": None,
    "cross_adapter": False,
    "original_ln_after": True,
    "residual_before_ln": True,
}
_KEY = re.compile(
    r"(?:^|\.)encoder\.layer\.(?P<layer>\d+)\.(?P<where>attention\.output|output)\.adapters\."
    r"[^.]+\.(?P<part>adapter_down\.0\.weight|adapter_down\.0\.bias|adapter_up\.weight|"
    r"adapter_up\.bias|scaling)$"
)
_OURS = {
    "adapter_down.0.weight": "down.weight",
    "adapter_down.0.bias": "down.bias",
    "adapter_up.weight": "up.weight",
    "adapter_up.bias": "up.bias",
}


def is_adapterhub_folder(folder: Path) -> bool:
    """Whether ``folder``'s ``adapter_config.json`` was written by AdapterHub (not by peft)."""
    try:
        saved = read_json_object(folder / CONFIG)
    except (OSError, AdapterFormatError):  # loading it as a PEFT folder says what is wrong
        return False
    return (
        isinstance(saved.get("config"), dict)
        and "peft_type" not in saved
        and str(saved.get("version", "")).startswith("adapters.")
    )


@dataclass(frozen=True)
class _Layout:
    """What an AdapterHub bottleneck config means in our terms."""

    config: MethodConfig
    where: tuple[str, ...]  # "attention.output" and/or "output"
    leave_out: frozenset[int]
    scaling: float  # a fixed scaling; "learned" and "channel" ones are tensors in the file


def adapterhub_method(folder: Path) -> str:
    """The method the AdapterHub adapter in ``folder`` loads as (``houlsby`` or ``pfeiffer``),
    from its config alone (no model): what it refuses to read is refused here too."""
    saved = read_json_object(folder / CONFIG)
    return _layout(saved["config"], _hidden_size(saved, folder), folder).config.type


def read_adapterhub(
    model: nn.Module, folder: Path, *, name: str | None, force: bool = False
) -> AdapterRecord:
    """Load the AdapterHub bottleneck adapter in ``folder`` into ``model`` and activate it."""
    saved = read_json_object(folder / CONFIG)
    hidden_size = _hidden_size(saved, folder)
    _check_base(model, saved, folder, force)
    layout = _layout(saved["config"], hidden_size, folder)
    tensors = _read_weights(folder, model)
    targets = _targets(model, layout)
    ours = _translate(tensors, targets, layout.scaling, folder)
    adapter_name = name or str(saved.get("name") or folder.name)
    prepared = prepare_adapter(model, adapter_name, layout.config, targets=list(targets.values()))
    # AdapterHub heads are not read (module docstring): the model keeps its own head.
    prepared.record.head = dataclasses.replace(prepared.record.head, trainable=False)
    load_into_prepared(model, prepared, ours, source=folder)
    return prepared.record


def _hidden_size(saved: dict[str, Any], folder: Path) -> int:
    hidden_size = saved.get("hidden_size")
    if not isinstance(hidden_size, int) or hidden_size < 1:
        raise AdapterFormatError(f"{folder / CONFIG}: hidden_size must be a positive integer")
    return hidden_size


def _check_base(model: nn.Module, saved: dict[str, Any], folder: Path, force: bool) -> None:
    config = getattr(model, "config", None)
    ours = (getattr(config, "model_type", None), getattr(config, "hidden_size", None))
    theirs = (saved.get("model_type"), saved.get("hidden_size"))
    if ours != theirs and not force:
        raise BaseModelMismatchError(
            f"{folder} is an AdapterHub adapter for a {theirs[0]} model with hidden size "
            f"{theirs[1]}; this model is {ours[0]} with hidden size {ours[1]} "
            f"(force=True loads it anyway)"
        )


def _layout(config: dict[str, Any], hidden_size: int, folder: Path) -> _Layout:
    """Our config for an AdapterHub bottleneck config, or a clear refusal."""
    if config.get("architecture", "bottleneck") != "bottleneck":
        raise AdapterFormatError(
            f"{folder} holds an AdapterHub {config.get('architecture')!r} adapter; peft_core "
            "reads AdapterHub bottleneck adapters (seq_bn, double_seq_bn)"
        )
    unsupported = [
        f"{key}={config.get(key)!r}"
        for key, harmless in _MUST_BE.items()
        if config.get(key, harmless) != harmless
    ]
    # adapter_residual_before_ln is harmless: without ln_after the residual lands in one place.
    scaling = config.get("scaling", 1.0)
    if not (isinstance(scaling, int | float) or scaling in ("learned", "channel")):
        unsupported.append(f"scaling={scaling!r}")
    activation = _ACTIVATIONS.get(str(config.get("non_linearity", "")).lower())
    if activation is None:
        unsupported.append(f"non_linearity={config.get('non_linearity')!r}")
    width = _bottleneck_width(config.get("reduction_factor"), hidden_size)
    if width is None:
        unsupported.append(f"reduction_factor={config.get('reduction_factor')!r}")
    if unsupported:
        raise AdapterFormatError(
            f"{folder}: this AdapterHub adapter uses {', '.join(unsupported)}, which peft_core's "
            "bottleneck modules do not compute; peft_core reads seq_bn (pfeiffer) and "
            "double_seq_bn (houlsby) adapters without gating, extra layer norms, PHM or "
            "invertible parts"
        )
    where = tuple(
        w
        for w, on in (
            ("attention.output", config.get("mh_adapter")),
            ("output", config.get("output_adapter")),
        )
        if on
    )
    if not where:
        raise AdapterFormatError(f"{folder}: the adapter is neither mh_adapter nor output_adapter")
    fields: dict[str, Any] = {
        "bottleneck": width,
        "activation": activation,
        "original_ln_before": bool(config.get("original_ln_before")),
    }
    preset = Houlsby(**fields) if "attention.output" in where else Pfeiffer(**fields)
    leave_out = frozenset(int(i) for i in config.get("leave_out") or ())
    fixed = float(scaling) if isinstance(scaling, int | float) else 1.0
    return _Layout(preset, where, leave_out, fixed)


def _bottleneck_width(factor: Any, hidden_size: int) -> int | None:
    """AdapterHub's ``int(hidden // reduction_factor)`` (at least 1); ``None`` when a per-layer
    mapping gives layers different widths (our presets have one width)."""
    factors = list(factor.values()) if isinstance(factor, dict) else [factor]
    if not factors or not all(isinstance(f, int | float) and f > 0 for f in factors):
        return None
    widths = {max(1, int(hidden_size // f)) for f in factors}
    return widths.pop() if len(widths) == 1 else None


def _read_weights(folder: Path, model: nn.Module) -> dict[str, Tensor]:
    device = input_device(model)  # (copied on to each layer's own device)
    for file_name in WEIGHTS:
        path = folder / file_name
        if not path.is_file():
            continue
        try:
            if path.suffix == ".safetensors":
                tensors = safetensors.torch.load_file(str(path))
            else:  # weights_only: a pickle from the internet must not run code
                tensors = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # both readers raise several types for a damaged file
            raise AdapterFormatError(f"cannot read {path}: {exc}") from None
        return {key: value.to(device) for key, value in tensors.items()}
    raise AdapterFormatError(f"{folder} has no {' or '.join(WEIGHTS)}")


def _targets(model: nn.Module, layout: _Layout) -> dict[tuple[int, str], Target]:
    """(layer index, "attention.output" | "output") -> the module our adapter goes on."""
    from .methods import method_of  # noqa: PLC0415 - methods import this package's modules

    found: dict[tuple[int, str], Target] = {}
    for target in method_of(layout.config).targets(model, layout.config):
        match = re.search(r"layer\.(\d+)\.(attention\.output|output)\.", target.module_name)
        if match is None:
            continue
        layer, where = int(match.group(1)), match.group(2)
        if where in layout.where and layer not in layout.leave_out:
            found[(layer, where)] = target
    return found


def _translate(
    tensors: dict[str, Tensor],
    targets: dict[tuple[int, str], Target],
    fixed_scaling: float,
    folder: Path,
) -> dict[str, Tensor]:
    """AdapterHub tensor names -> ours, with the scaling folded into the up projection."""
    parts: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in tensors.items():
        match = _KEY.search(key)
        if match is None:
            raise AdapterFormatError(
                f"{folder}: unexpected tensor {key!r}; peft_core reads AdapterHub bottleneck "
                "adapters (heads and fusions are not read)"
            )
        place = (int(match.group("layer")), match.group("where"))
        if place not in targets:
            raise AdapterFormatError(
                f"{folder}: tensor {key!r} is for a layer this model has no target for"
            )
        parts.setdefault(place, {})[match.group("part")] = value
    missing = sorted(set(targets) - set(parts))
    if missing:
        raise AdapterFormatError(f"{folder}: no tensors for layer(s) {missing[:3]}")
    ours: dict[str, Tensor] = {}
    for place, found in parts.items():
        module = targets[place].module_name
        scaling = found.pop("scaling", None)
        if scaling is None:
            scaling = torch.tensor([fixed_scaling], device=next(iter(found.values())).device)
        for part, value in found.items():
            if part.startswith("adapter_up"):
                # up(h) * s: the weight's rows and the bias scale by s (a scalar or per channel)
                value = value * (scaling.reshape(-1, 1) if value.dim() == 2 else scaling)  # noqa: PLW2901
            ours[f"{module}.{_OURS[part]}"] = value
    return ours


# --- writing ------------------------------------------------------------------------------------

# Every BnConfig field adapters 1.3.0 writes, at the values that mean "plain bottleneck"; the
# placement fields are set per adapter below.
_BN_DEFAULTS: dict[str, Any] = {
    "adapter_residual_before_ln": False, "cross_adapter": False, "dropout": 0.0,
    "factorized_phm_W": True, "factorized_phm_rule": False,
    "hypercomplex_nonlinearity": "glorot-uniform", "init_weights": "bert",
    "init_weights_seed": None, "inv_adapter": None, "inv_adapter_reduction_factor": None,
    "is_parallel": False, "learn_phm": True, "ln_after": False, "ln_before": False,
    "original_ln_after": True, "phm_bias": True, "phm_c_init": "normal", "phm_dim": 4,
    "phm_init_range": 0.0001, "phm_layer": False, "phm_rank": 1, "residual_before_ln": True,
    "scaling": 1.0, "shared_W_phm": False, "shared_phm_rule": True, "stochastic_depth": 0.0,
    "use_gating": False,
}  # fmt: skip
_THEIR_ACTIVATION = {"relu": "relu", "gelu": "gelu", "silu": "swish", "tanh": "tanh"}
WRITTEN_VERSION = "adapters.1.3.0"  # the format written: what adapters 1.3.0 reads and writes


def write_adapterhub(
    model: nn.Module, record: AdapterRecord, folder: Path, *, dtype: torch.dtype
) -> None:
    """Write Houlsby/Pfeiffer adapter ``record`` as AdapterHub saves it (``adapter_config.json``
    + ``pytorch_adapter.bin``), for ``adapters``' ``load_adapter``. No head is written."""
    from .methods.bottleneck import _Bottleneck  # noqa: PLC0415 - the presets' shared base
    from .state import adapter_layers  # noqa: PLC0415

    config = record.config
    if not isinstance(config, _Bottleneck):
        raise AdapterFormatError(
            f"AdapterHub's format holds bottleneck adapters (houlsby, pfeiffer); {record.name!r} "
            f"is a {config.type} adapter: save it with format='adapterops' or 'peft'"
        )
    model_config: Any = model.config
    hidden = int(model_config.hidden_size)
    tensors: dict[str, Tensor] = {}
    layers: set[int] = set()
    widths: set[int] = set()
    for module_name, layer in adapter_layers(model, record.name):
        match = re.search(r"layer\.(\d+)\.(attention\.output|output)\.", module_name)
        if match is None:
            raise AdapterFormatError(
                f"{module_name} is not in a BERT-style block: AdapterHub's bottleneck layout "
                "has no place for it"
            )
        index, where = int(match.group(1)), match.group(2)
        layers.add(index)
        prefix = f"encoder.layer.{index}.{where}.adapters.{record.name}"
        state = layer.adapters[record.name].state_dict()
        widths.add(int(state["down.weight"].shape[0]))
        for theirs, ours in _OURS.items():
            tensors[f"{prefix}.{theirs}"] = state[ours].detach().to("cpu", dtype).clone()
    (width,) = widths  # one preset, one width
    factor = hidden / width
    if int(hidden // factor) != width:
        raise AdapterFormatError(
            f"a bottleneck of {width} on hidden size {hidden} has no reduction factor AdapterHub "
            "would size it back from"
        )
    total = int(model_config.num_hidden_layers)
    bn = {
        **_BN_DEFAULTS,
        "mh_adapter": config.type == "houlsby",
        "output_adapter": True,
        "non_linearity": _THEIR_ACTIVATION[config.activation],
        "original_ln_before": config.original_ln_before,
        "reduction_factor": factor if factor != int(factor) else int(factor),
        "leave_out": sorted(set(range(total)) - layers),
    }
    saved = {
        "config": bn,
        "hidden_size": hidden,
        "model_class": type(model).__name__,
        "model_name": str(getattr(model_config, "_name_or_path", "")),
        "model_type": str(model_config.model_type),
        "name": record.name,
        "version": WRITTEN_VERSION,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG).write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    torch.save(tensors, folder / WEIGHTS[1])
