"""4-bit NF4 base weights for QLoRA (Dettmers et al. 2023), through torchao's ``NF4Tensor``.

    pc.quantize_base(model, "nf4")            # every Linear of the body: 4-bit NormalFloat
    pc.add_adapter(model, "qlora", pc.LoRA(rank=16, targets=("q", "k", "v", "o")))

The adapter's own weights stay float32 (:class:`~peft_core.methods.base.LayerSite`) and its files
are written in the base's compute dtype, so an adapter trained on the 4-bit base loads onto the
same model in bf16 and into peft. Merging into a 4-bit weight is refused: the sum would be
re-quantised, losing most of the adapter; export a merged checkpoint from the unquantised base.

Why torchao rather than bitsandbytes: ``NF4Tensor`` is plain PyTorch (a tensor subclass whose
``linear`` dequantises block by block, autograd included), so QLoRA trains and is tested on a CPU
as on any GPU, and its wheel is 3.4 MB (bitsandbytes: 43 MB, CUDA kernels first). The format is
the paper's: 64-weight blocks with one absmax each, the absmaxes themselves quantised to 8 bits in
blocks of 256 ("double quantisation").
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .errors import ConfigError
from .heads import body_prefix
from .layer import AdaptedLayer

__all__ = ["Quantization", "is_quantized", "nf4_available", "quantize_base", "quantized_layers"]

Quantization = Literal["none", "nf4"]
BLOCK, SCALER_BLOCK = 64, 256  # QLoRA's block sizes (torchao's defaults)


def nf4_available() -> None:
    """Raise :class:`ConfigError` (what to install) unless NF4 quantisation can run here."""
    _nf4_class()


def _nf4_class() -> type[torch.Tensor]:
    try:
        from torchao.quantization import NF4Tensor  # noqa: PLC0415 - an optional extra
    except ImportError:
        raise ConfigError(
            "quantization nf4 needs torchao: pip install 'adapterops[gpu]' (or torchao)"
        ) from None
    return NF4Tensor


def is_quantized(weight: object) -> bool:
    """Whether ``weight`` is a 4-bit NF4 tensor."""
    return type(weight).__name__ == "NF4Tensor"


def quantized_layers(model: nn.Module) -> list[str]:
    """The names of the model's Linear layers whose weight is 4-bit."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and is_quantized(module.weight)
    ]


@torch.no_grad()
def quantize_base(model: nn.Module, quantization: Quantization = "nf4") -> int:
    """Store the weight of every Linear in the model body as 4-bit NF4; returns how many.

    The head (a classifier, an untied LM head) and adapters stay as they are. Call it before
    adding adapters. A layer whose weight count is not a multiple of 64 x 256 cannot be blocked
    and is left in its dtype (tiny test models have such layers; real ones do not).
    """
    if quantization == "none":
        return 0
    if quantization != "nf4":
        raise ConfigError(f"unknown quantization {quantization!r}; expected 'none' or 'nf4'")
    if any(isinstance(m, AdaptedLayer) for m in model.modules()):
        raise ConfigError("quantize the base before adding adapters (its layers hold adapters)")
    nf4 = _nf4_class()
    prefix = body_prefix(model)
    body = getattr(model, prefix) if prefix else model
    count = 0
    for module in body.modules():
        if not isinstance(module, nn.Linear) or is_quantized(module.weight):
            continue
        if module.weight.numel() % (BLOCK * SCALER_BLOCK) != 0:
            continue
        weight = nf4.from_tensor(module.weight.data, BLOCK, SCALER_BLOCK)  # type: ignore[attr-defined]
        module.weight = nn.Parameter(weight, requires_grad=False)
        count += 1
    if count == 0:
        raise ConfigError(
            "no Linear layer of this model can be stored in NF4 (weight counts must be "
            f"multiples of {BLOCK * SCALER_BLOCK})"
        )
    return count
