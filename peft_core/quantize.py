"""Quantised base weights under float32 adapters, through torchao: 4-bit NF4 for QLoRA
(Dettmers et al. 2023, ``NF4Tensor``) or 8-bit integers (``Int8Tensor``).

    pc.quantize_base(model, "nf4")            # every Linear of the body: 4-bit NormalFloat
    pc.quantize_base(model, "int8")           # or: int8, one scale per output channel
    pc.add_adapter(model, "qlora", pc.LoRA(rank=16, targets=("q", "k", "v", "o")))

The adapter's own weights stay float32 (:class:`~peft_core.methods.base.LayerSite`) and its files
are written in the base's compute dtype, so an adapter trained on the 4-bit base loads onto the
same model in bf16 and into peft. Merging into a 4-bit weight is refused: the sum would be
re-quantised, losing most of the adapter. ``pc.quantize.dequantize_base(model)`` first stores each
quantised weight as the values it computed with (in the compute dtype), so the merge gives a plain
checkpoint that computes what the adapter computed on the 4-bit base (``export --for merged``).

Why torchao rather than bitsandbytes: ``NF4Tensor`` is plain PyTorch (a tensor subclass whose
``linear`` dequantises block by block, autograd included), so QLoRA trains and is tested on a CPU
as on any GPU, and its wheel is 3.4 MB (bitsandbytes: 43 MB, CUDA kernels first). The format is
the paper's: 64-weight blocks with one absmax each, the absmaxes themselves quantised to 8 bits in
blocks of 256 ("double quantisation"). ``int8`` is weight-only and per output channel (torchao's
``Int8WeightOnlyConfig``): half of bf16's memory, closer to it than NF4; unlike bitsandbytes'
LLM.int8 it keeps no outlier columns in 16 bits.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from .errors import ConfigError
from .heads import body_prefix
from .layer import AdaptedLayer

__all__ = [
    "Quantization",
    "dequantize_base",
    "dequantized",
    "is_quantized",
    "nf4_available",
    "quantizable_layers",
    "quantization_available",
    "quantization_config",
    "quantization_of",
    "quantize_base",
    "quantized_layers",
    "stored_bytes",
    "stored_bytes_by_parameter",
]

Quantization = Literal["none", "nf4", "int8"]
_QUANTIZED_AS: dict[str, Quantization] = {"NF4Tensor": "nf4", "Int8Tensor": "int8"}
_QUANTIZED_TYPES = tuple(_QUANTIZED_AS)  # torchao's tensor subclasses, by name: no import
BLOCK, SCALER_BLOCK = 64, 256  # QLoRA's block sizes (torchao's defaults)


def nf4_available() -> None:
    """Raise :class:`ConfigError` (what to install) unless NF4 quantisation can run here."""
    quantization_available("nf4")


def quantization_available(quantization: str) -> None:
    """Raise :class:`ConfigError` (what to install) unless ``quantization`` can run here."""
    if quantization != "none":
        _torchao(quantization)


def _torchao(quantization: str) -> Any:
    try:
        import torchao.quantization  # noqa: PLC0415 - an optional extra
    except ImportError:
        raise ConfigError(
            f"quantization {quantization} needs torchao: pip install 'adapterops[gpu]' (or torchao)"
        ) from None
    return torchao.quantization


def is_quantized(weight: object) -> bool:
    """Whether ``weight`` is a quantised (NF4 or int8) tensor."""
    return type(weight).__name__ in _QUANTIZED_TYPES


def dequantized(weight: torch.Tensor) -> torch.Tensor:
    """A quantised weight's values as float32: what its layer computes with (torchao's NF4
    tensors give them through ``get_original_weight``, int8 ones through ``dequantize``)."""
    for reader in ("get_original_weight", "dequantize"):
        read = getattr(weight, reader, None)
        if callable(read):
            try:
                return torch.as_tensor(read()).float()
            except TypeError:  # NF4Tensor.dequantize is a static helper with arguments
                continue
    raise ConfigError(f"cannot read the values of a {type(weight).__name__} weight")


def quantization_of(model: nn.Module) -> Quantization:
    """How the model's Linear weights are stored: ``nf4``, ``int8``, or ``none``. Under FSDP2 a
    weight is a DTensor: its shard, the tensor this process holds, says how."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            held = getattr(module.weight, "_local_tensor", module.weight)
            stored_as = _QUANTIZED_AS.get(type(held).__name__)
            if stored_as is not None:
                return stored_as
    return "none"


def quantized_layers(model: nn.Module) -> list[str]:
    """The names of the model's Linear layers whose weight is quantised."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and is_quantized(module.weight)
    ]


def quantizable_layers(model: nn.Module, quantization: Quantization) -> list[str]:
    """The names of the Linear layers ``quantize_base(model, quantization)`` stores quantised:
    those of the model body (not its head), for NF4 only those whose weight count is a multiple
    of 64 x 256. From shapes only, so a model on the meta device answers too."""
    if quantization == "none":
        return []
    _check_kind(quantization)
    prefix = body_prefix(model)
    body = getattr(model, prefix) if prefix else model
    return [
        f"{prefix}.{name}" if prefix else name
        for name, module in body.named_modules()
        if isinstance(module, nn.Linear)
        and not is_quantized(module.weight)
        and (quantization == "int8" or module.weight.numel() % (BLOCK * SCALER_BLOCK) == 0)
    ]


def quantization_config(model: nn.Module, quantization: Quantization) -> Any:
    """The ``quantization_config`` under which transformers' ``from_pretrained`` stores the same
    layers as :func:`quantize_base`, with the same codes, as it reads each weight.

    ``model`` is the architecture on the meta device (``from_config`` under
    ``torch.device("meta")``). Why load this way: with ``device_map`` on a GPU each weight goes
    from the checkpoint to the GPU and is quantised there, so the CPU neither quantises (minutes
    per billion weights on a few cores) nor holds the quantised model (~39 GB for a 70B base)
    before it moves. On a CPU both ways do the same work (``bench/quantized_load_bench.py``).

        skeleton = AutoModelForCausalLM.from_config(config)    # under torch.device("meta")
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.bfloat16, device_map={"": "cuda"},
            quantization_config=pc.quantize.quantization_config(skeleton, "nf4"))
    """
    _check_kind(quantization)
    torchao = _torchao(quantization)
    from transformers import TorchAoConfig  # noqa: PLC0415 - only loaders need it

    if quantization == "nf4":
        from torchao.prototype._nf4tensor_api import NF4WeightOnlyConfig  # noqa: PLC0415

        kind: Any = NF4WeightOnlyConfig()  # 64-weight blocks, scales in blocks of 256: ours
    else:
        kind = torchao.Int8WeightOnlyConfig()
    quantized = set(quantizable_layers(model, quantization))
    if not quantized:
        raise _nothing_to_quantize(quantization)
    # Every other Linear by its full name (transformers' own default would skip only lm_head).
    others = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name not in quantized
    ]
    return TorchAoConfig(kind, modules_to_not_convert=others)


def _check_kind(quantization: str) -> None:
    if quantization not in ("none", "nf4", "int8"):
        raise ConfigError(
            f"unknown quantization {quantization!r}; expected 'none', 'nf4' or 'int8'"
        )


def _nothing_to_quantize(quantization: str) -> ConfigError:
    return ConfigError(
        f"no Linear layer of this model can be stored in {quantization} (NF4 weight counts "
        f"must be multiples of {BLOCK * SCALER_BLOCK})"
    )


@torch.no_grad()
def quantize_base(model: nn.Module, quantization: Quantization = "nf4") -> int:
    """Store the weight of every Linear in the model body as 4-bit NF4 or int8; returns how many.

    The head (a classifier, an untied LM head) and adapters stay as they are. Call it before
    adding adapters. For NF4, a layer whose weight count is not a multiple of 64 x 256 cannot be
    blocked and is left in its dtype (tiny test models have such layers; real ones do not).
    """
    if quantization == "none":
        return 0
    _check_kind(quantization)
    if any(isinstance(m, AdaptedLayer) for m in model.modules()):
        raise ConfigError("quantize the base before adding adapters (its layers hold adapters)")
    torchao = _torchao(quantization)
    names = quantizable_layers(model, quantization)
    if not names:
        raise _nothing_to_quantize(quantization)
    for name in names:
        module = model.get_submodule(name)
        if quantization == "int8":
            torchao.quantize_(module, torchao.Int8WeightOnlyConfig())
            module.weight.requires_grad_(False)
        else:
            weight = torchao.NF4Tensor.from_tensor(module.weight.data, BLOCK, SCALER_BLOCK)
            module.weight = nn.Parameter(weight, requires_grad=False)
    return len(names)


def dequantize_base(model: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Store every quantised Linear weight of ``model`` (adapted layers' included) as the values
    it computes with, in ``dtype`` (default: the model config's dtype, else float32); returns
    how many. The model then merges and saves as a plain checkpoint (transformers' record of its
    quantisation is removed too). The values are the quantised ones, not the weights before
    quantisation: an adapter trained on them computes after a merge what it computed before."""
    names = quantized_layers(model)
    if dtype is None:
        dtype = getattr(getattr(model, "config", None), "dtype", None)
        dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32
    for name in names:
        linear = model.get_submodule(name)
        assert isinstance(linear, nn.Linear)  # quantized_layers names Linear layers only
        linear.weight = nn.Parameter(dequantized(linear.weight).to(dtype), requires_grad=False)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # or save_pretrained writes a quantization_config for dense weights
        quantizer.remove_quantization_config(model)
    return len(names)


def stored_bytes(model: nn.Module, quantization: Quantization = "none") -> int:
    """Bytes the model's frozen parameters take once ``quantize_base(model, quantization)`` has
    stored them (from shapes and dtypes only, so a model on the meta device answers too).
    Weights quantised already count as what they are."""
    sizes = stored_bytes_by_parameter(model, quantization)
    return sum(sizes[id(p)] for p in model.parameters() if not p.requires_grad)


def stored_bytes_by_parameter(
    model: nn.Module, quantization: Quantization = "none"
) -> dict[int, int]:
    """What each parameter of ``model`` (by ``id``) takes as stored: frozen ones as
    :func:`stored_bytes` counts them, trainable ones at their own size."""
    prefix = body_prefix(model)
    body = getattr(model, prefix) if prefix else model
    body_linears = {id(m.weight) for m in body.modules() if isinstance(m, nn.Linear)}
    sizes = {}
    for parameter in model.parameters():
        stored_as = _QUANTIZED_AS.get(type(parameter).__name__)
        if stored_as is None and quantization != "none" and id(parameter) in body_linears:
            stored_as = quantization
        if stored_as is not None and not parameter.requires_grad:
            sizes[id(parameter)] = _quantized_bytes(parameter, stored_as)
        else:
            sizes[id(parameter)] = parameter.numel() * parameter.element_size()
    return sizes


def _quantized_bytes(weight: torch.Tensor, quantization: Quantization) -> int:
    """What torchao stores for one Linear weight (its tensors' sizes, checked by the tests)."""
    count, size = weight.numel(), weight.element_size()
    if quantization == "int8":  # int8 values, a float32 scale and an int8 zero point per row
        return count + weight.shape[0] * (4 + 1)
    if count % (BLOCK * SCALER_BLOCK):
        return count * size  # quantize_base leaves it as it is
    # 4-bit codes, an int8 scale per block of 64 values, one scale (weight dtype) per 256 of
    # those, their mean and the 16-entry code book
    return count // 2 + count // BLOCK + count // (BLOCK * SCALER_BLOCK) * size + 17 * size
