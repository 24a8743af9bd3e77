"""What an adapter will cost, answered without allocating a single weight.

The model is built on PyTorch's meta device (shapes only), the adapter is injected there, and the
parameters are counted. A 175B-parameter configuration answers in seconds.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
)

from .config import MethodConfig
from .errors import ConfigError
from .heads import HeadKind
from .inject import add_adapter
from .io import adapter_state_dict
from .layer import base_compute_dtype
from .methods.lora import LoRAModule
from .quantize import Quantization, stored_bytes
from .state import adapter_layers

__all__ = ["Plan", "build_on_meta", "measure", "plan"]

_AUTO_CLASSES: dict[str, Any] = {
    "classification": AutoModelForSequenceClassification,
    "masked-lm": AutoModelForMaskedLM,
    "causal-lm": AutoModelForCausalLM,
    "none": AutoModel,
}


@dataclass(frozen=True)
class Plan:
    """Parameter counts, file size and training memory of one adapter on one base model.

    ``base_bytes``: the frozen weights in memory (in the base's dtype, or quantised).
    ``training_bytes``: the trainable weights with their gradients and AdamW's two moments,
    each in the weight's dtype (float32 for adapters), as ``torch.optim.AdamW`` keeps them.
    Activations are not included: they grow with batch x sequence length.
    """

    trainable_params: int
    total_params: int
    trainable_fraction: float
    adapter_bytes: int
    base_bytes: int = 0
    training_bytes: int = 0

    def to_dict(self) -> dict[str, int | float]:
        """JSON-ready form (the keys of ``adapterops plan --json``)."""
        return asdict(self)


def build_on_meta(
    config: PretrainedConfig,
    head: HeadKind = "none",
    *,
    dtype: torch.dtype | None = None,
    attention: str | None = None,
) -> nn.Module:
    """A transformers model of ``config`` with ``head``, on the meta device (no memory used),
    its weights in ``dtype`` (default: float32), its attention kernel ``attention`` (default:
    transformers' choice)."""
    options: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    if attention is not None:
        options["attn_implementation"] = attention
    if head not in _AUTO_CLASSES:  # a typo was a bare KeyError
        known = ", ".join(repr(kind) for kind in _AUTO_CLASSES)
        raise ConfigError(f"unknown head {head!r}; one of {known}")
    with torch.device("meta"):
        model: nn.Module = _AUTO_CLASSES[head].from_config(config, **options)
    return model


def plan(
    model_or_config: nn.Module | PretrainedConfig,
    config: MethodConfig,
    *,
    head: HeadKind | None = None,
    dtype: torch.dtype | None = None,
    quantization: Quantization = "none",
) -> Plan:
    """Trainable and total parameters, the trainable fraction, the adapter's bytes on disk and
    the memory its training holds besides activations, for a base loaded in ``dtype`` (default
    float32) and stored with ``quantization``.

    Given a model, its class and configuration are rebuilt on the meta device, so the model itself
    is never modified. ``head`` picks the task head when a bare configuration is given. Warns
    (``RuntimeWarning``) when a LoRA's rank is above the width of a layer it adapts.
    """
    if isinstance(model_or_config, PretrainedConfig):
        model = build_on_meta(model_or_config, head or "none", dtype=dtype)
    else:
        if not isinstance(model_or_config, nn.Module):  # "bert" was "no attribute 'config'"
            raise TypeError(
                "plan takes a transformers model or its configuration (AutoConfig."
                f"from_pretrained(...)), got {type(model_or_config).__name__} "
                f"{model_or_config!r:.40}"
            )
        with torch.device("meta"):
            model = type(model_or_config)(model_or_config.config)
        if dtype is not None:
            model.to(dtype)
    add_adapter(model, "plan", config)
    _warn_of_unusable_rank(model, "plan", config)
    return measure(model, "plan", quantization=quantization)


def _warn_of_unusable_rank(model: nn.Module, name: str, config: MethodConfig) -> None:
    """A LoRA of rank r on a layer of n inputs or outputs, n < r: the update ``B A`` of that
    layer has rank n at most, so the other r - n ranks add parameters and compute, never
    capacity. peft accepts it silently; a mistyped rank (1024 for 128) is easy to miss."""
    rank = getattr(config, "rank", None)
    if not isinstance(rank, int):
        return
    widths = [
        (min(module.lora_A.in_features, module.lora_B.out_features), module_name)
        for module_name, layer in adapter_layers(model, name)
        if isinstance(module := layer.adapters[name], LoRAModule)
    ]
    narrow = [(width, module_name) for width, module_name in widths if width < rank]
    if narrow:
        width, first = min(narrow)
        warnings.warn(
            f"{type(config).__name__} rank {rank} is above the width of {len(narrow)} of the "
            f"{len(widths)} layers it adapts ({first}: {width}): an update there has rank "
            f"{width} at most, "
            f"so the ranks above add parameters, not capacity (rank {width} already reaches "
            "every update of that layer)",
            RuntimeWarning,
            stacklevel=3,
        )


def measure(model: nn.Module, name: str, *, quantization: Quantization = "none") -> Plan:
    """The costs of adapter ``name`` as it is in ``model``: trainable now, total, its bytes in
    the file ``save_adapter`` writes by default (in the base's compute dtype), the frozen
    weights as ``quantization`` stores them, and the training state.

    Unlike :func:`plan` this needs what the adapter needs in the model, e.g. a Fusion's members.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    in_file = base_compute_dtype(model).itemsize  # save_adapter's default for floating tensors
    saved = adapter_state_dict(model, name).values()
    size = sum(t.numel() * (in_file if t.is_floating_point() else t.element_size()) for t in saved)
    # a LoRA started from the weights (PiSSA) holds half of its weights at the start
    held = [getattr(m, "frozen_numel", None) for m in model.modules()]
    count = sum(p.numel() for p in trainable) - sum(int(f()) for f in held if callable(f))
    return Plan(
        count,
        total,
        count / total if total else 0.0,
        size,
        base_bytes=stored_bytes(model, quantization),
        # weight, gradient and AdamW's exp_avg and exp_avg_sq, each like the weight
        training_bytes=sum(4 * p.numel() * p.element_size() for p in trainable),
    )
