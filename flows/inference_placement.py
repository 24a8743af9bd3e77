"""Where a base model's weights go for evaluation, prediction, the gate, cascades and probes.

Training places its model itself (one device, DDP replicas or FSDP shards). Inference loads the
whole base into one process:

- on one GPU when its weights fit there (the common case, and what happened before);
- else spread over every visible GPU, block by block (accelerate's ``device_map``: each decoder
  block whole on one GPU, the activations hop between them): a 70B base evaluates on the GPUs
  it trained on with FSDP;
- else, only with ``load.offload: true``, with what no GPU holds kept in CPU memory and then on
  disk (slow: those weights cross to the GPU on every forward);
- without a GPU, in CPU memory (then on disk, with ``load.offload``).

Anything else is refused before a weight is read, in one line that says what would fit. The
weights are counted on the meta device (as stored: an NF4 or int8 base at its quantised size).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import DataError

if TYPE_CHECKING:
    from torch import nn

    from .spec import AdapterSpec, PlanSpec

__all__ = ["InferencePlacement", "Memory", "free_memory", "place_for_inference"]

WEIGHT_SHARE = 0.85  # of a device's free memory for weights; the rest: activations, KV cache
_GIB = 2**30


@dataclass(frozen=True)
class Memory:
    """Free bytes on each visible GPU (by index) and in host memory."""

    gpus: tuple[int, ...]
    cpu: int


def free_memory(*, first_gpu_only: bool = False) -> Memory:
    """What this machine has free now (``first_gpu_only``: of the GPUs, only the first: asking
    a GPU starts a CUDA context on it, half a GiB that evaluation then cannot use)."""
    import psutil  # noqa: PLC0415 - accelerate's own dependency
    import torch  # noqa: PLC0415 - torch is heavy

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    count = min(count, 1) if first_gpu_only else count
    gpus = tuple(int(torch.cuda.mem_get_info(i)[0]) for i in range(count))
    return Memory(gpus=gpus, cpu=int(psutil.virtual_memory().available))


@dataclass(frozen=True)
class InferencePlacement:
    """A ``device_map`` for ``from_pretrained`` and what it was decided from."""

    device_map: dict[str, Any]
    weights_bytes: int
    offload: bool = False  # some weights stay in CPU memory or on disk (needs an offload folder)
    devices: tuple[str, ...] = field(default=())

    @property
    def spread(self) -> bool:
        """Whether the base is split over several devices (or offloaded)."""
        return len(self.devices) > 1

    @property
    def offloads(self) -> bool:
        """Whether some weights wait outside the devices that run them (CPU memory beside a GPU,
        or disk)."""
        gpus = any(d.startswith("cuda") for d in self.devices)
        return "disk" in self.devices or (gpus and "cpu" in self.devices)

    def summary(self) -> str:
        """A few words: ``one GPU``, ``4 GPUs``, ``1 GPU + CPU + disk``."""
        gpus = sum(d.startswith("cuda") for d in self.devices)
        parts = [f"{gpus} GPU{'s' if gpus > 1 else ''}"] if gpus else []
        parts += [d.upper() if d == "cpu" else d for d in self.devices if not d.startswith("cuda")]
        return " + ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the devices, the weights, and how many modules go to each device."""
        counts: dict[str, int] = {}
        for device in self.device_map.values():
            name = f"cuda:{device}" if isinstance(device, int) else str(device)
            counts[name] = counts.get(name, 0) + 1
        return {
            "devices": list(self.devices),
            "weights_bytes": self.weights_bytes,
            "offload": self.offload,
            "modules_per_device": counts,
        }

    def describe(self) -> str:
        """One line for the log: where the base's weights go."""
        size = f"{_size(self.weights_bytes)} of base weights"
        if not self.spread:
            return f"{size} on {self.devices[0]}"
        return f"{size} spread over {', '.join(self.devices)} (accelerate device_map)"


def place_for_inference(
    spec: AdapterSpec | PlanSpec, memory: Memory | None = None
) -> InferencePlacement:
    """Where ``spec``'s base goes for inference on a machine with ``memory`` free (default:
    this machine's, now). Raises :class:`DataError` when it fits nowhere it may go."""
    here = memory is None
    memory = free_memory(first_gpu_only=True) if memory is None else memory
    skeleton = _skeleton(spec)
    weights = _stored_bytes(skeleton, spec)
    offload = spec.load.offload
    if not memory.gpus:
        if weights <= memory.cpu * WEIGHT_SHARE:
            return InferencePlacement({"": "cpu"}, weights, devices=("cpu",))
        if not offload:
            raise DataError(_too_big(spec, weights, f"{_size(memory.cpu)} of free CPU memory"))
        return _spread(skeleton, spec, weights, {"cpu": _share(memory.cpu)})
    if weights <= memory.gpus[0] * WEIGHT_SHARE:
        return InferencePlacement({"": "cuda:0"}, weights, devices=("cuda:0",))
    memory = free_memory() if here else memory  # now every GPU's
    budget: dict[int | str, int] = {i: _share(free) for i, free in enumerate(memory.gpus)}
    if weights <= sum(budget.values()):  # (accelerate refuses below if whole blocks do not)
        return _spread(skeleton, spec, weights, budget)
    if not offload:
        count = len(memory.gpus)
        free = f"the {_size(sum(memory.gpus))} free on {count} GPU{'s' if count > 1 else ''}"
        raise DataError(_too_big(spec, weights, free))
    return _spread(skeleton, spec, weights, {**budget, "cpu": _share(memory.cpu)})


def _spread(
    skeleton: nn.Module, spec: AdapterSpec | PlanSpec, weights: int, budget: dict[int | str, int]
) -> InferencePlacement:
    """accelerate's map over ``budget`` (then disk, when offloading), blocks kept whole."""
    from accelerate import infer_auto_device_map  # noqa: PLC0415 - heavy
    from accelerate.utils import get_balanced_memory  # noqa: PLC0415

    whole_blocks = list(getattr(skeleton, "_no_split_modules", None) or [])
    dtype = _accelerate_dtype(spec)
    gpus = [key for key in budget if isinstance(key, int)]
    # A plan (--gpus) sizes GPUs this machine may lack: accelerate would warn once per GPU.
    quiet = logging.getLogger("accelerate.utils.modeling")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        if len(gpus) > 1:  # as transformers' "auto": an even share per GPU, not GPU 0 first
            budget = get_balanced_memory(
                skeleton, max_memory=budget, no_split_module_classes=whole_blocks, dtype=dtype
            )
        device_map = infer_auto_device_map(
            skeleton, max_memory=budget, no_split_module_classes=whole_blocks, dtype=dtype
        )
    finally:
        quiet.setLevel(level)
    if set(device_map.values()) == {"disk"}:  # accelerate keeps room for the largest layer
        raise DataError(
            f"not even {spec.base_model}'s largest layer fits twice in the free memory (it needs "
            "room to bring an offloaded layer in): free some memory or use a machine with more"
        )
    _keep_heads_in_memory(skeleton, device_map)
    if not spec.load.offload and any(d in ("cpu", "disk") for d in device_map.values()):
        # accelerate found the blocks too coarse for the GPUs after all
        raise DataError(_too_big(spec, weights, "the GPUs' free memory, in whole blocks"))
    if "disk" in device_map.values() and spec.load.quantization != "none":
        raise DataError(
            f"{spec.base_model} quantised ({spec.load.quantization}) does not fit in GPU and CPU "
            "memory, and a quantised base cannot be offloaded to disk: free some memory or use "
            "a machine with more"
        )
    named = [f"cuda:{d}" if isinstance(d, int) else str(d) for d in device_map.values()]
    devices = tuple(dict.fromkeys(named))
    return InferencePlacement(dict(device_map), weights, offload=spec.load.offload, devices=devices)


def _keep_heads_in_memory(skeleton: nn.Module, device_map: dict[str, Any]) -> None:
    """The head goes where the first weights go, never to disk: a classifier's head is new (not
    in the checkpoint), and accelerate cannot offload a weight the checkpoint lacks; and every
    adapter that trains the head copies it (small next to the blocks either way)."""
    import peft_core as pc  # noqa: PLC0415

    first = next((d for d in device_map.values() if d != "disk"), "cpu")
    for module_name in pc.detect_head(skeleton).modules:
        if device_map.get(module_name) == "disk":
            device_map[module_name] = first


def _skeleton(spec: AdapterSpec | PlanSpec) -> nn.Module:
    """The spec's model on the meta device, frozen (as the base is for inference)."""
    import peft_core as pc  # noqa: PLC0415 - torch is heavy

    from .models import base_config  # noqa: PLC0415

    model = pc.build_on_meta(base_config(spec), spec.head.type, dtype=spec.load.torch_dtype())
    model.requires_grad_(False)
    return model


def _stored_bytes(skeleton: nn.Module, spec: AdapterSpec | PlanSpec) -> int:
    from peft_core.quantize import stored_bytes_by_parameter  # noqa: PLC0415

    return sum(stored_bytes_by_parameter(skeleton, spec.load.quantization).values())


def _accelerate_dtype(spec: AdapterSpec | PlanSpec) -> Any:
    """What accelerate should size the weights as: int8 or 4-bit when quantised (the
    embeddings, norms and head then count low; whole blocks dominate a large base)."""
    if spec.load.quantization == "int8":
        return "int8"
    if spec.load.quantization == "nf4":
        from accelerate.utils import CustomDtype  # noqa: PLC0415

        return CustomDtype.INT4
    return spec.load.torch_dtype()


def _share(free: int) -> int:
    return int(free * WEIGHT_SHARE)


def _size(size: int) -> str:
    """``131.4 GiB``; below a GiB in MiB (``86.6 MiB``)."""
    return f"{size / _GIB:.1f} GiB" if size >= _GIB else f"{size / 2**20:.1f} MiB"


def _too_big(spec: AdapterSpec | PlanSpec, weights: int, where: str) -> str:
    ways = []
    if spec.load.quantization == "none":
        ways.append("quantise it (load.quantization: nf4)")
    if not spec.load.offload:
        ways.append("set load.offload: true to keep the rest in CPU memory and on disk (slow)")
    ways.append("run it on a machine with more memory")
    return (
        f"{spec.base_model}'s weights take {_size(weights)}, and evaluation or prediction "
        f"may use {WEIGHT_SHARE:.0%} of {where}: {', or '.join(ways)}"
    )
