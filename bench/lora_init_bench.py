"""What starting a LoRA from the weights costs: adding a LoRA with ``init: pissa`` (exact SVD),
``pissa`` with ``init_iterations: 4`` (randomised SVD) and ``olora`` (QR) against the default
init, and against peft's own inits in the same run, on every linear layer of Llama-shaped
layers with random weights.

    python -m bench.lora_init_bench            # this machine: CPU shapes, or 7B shapes on CUDA
    python -m bench.lora_init_bench --quick    # tiny shapes (CI)

Each variant adds the adapter (and peft wraps a copy of the model) three times, interleaved;
the median is reported, with the seconds per decoder layer (the cost grows with the layer
count: a 32-layer 7B model costs 32 layers' worth). Ours decomposes each weight once in
float32 and leaves the base alone; peft decomposes it too and writes the residual into the base.

Needs only torch, transformers, peft and peft_core (runs on the device machine as it is).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import peft_core as pc
from bench.common import gpu_benchmark_options, write_result

RANK = 16
TARGETS = ("q", "k", "v", "o", "ffn_in", "ffn_out")
PEFT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
REPEATS = 3
# variant: (our LoRA fields, peft's init_lora_weights)
VARIANTS: dict[str, tuple[dict[str, object], object]] = {
    "default": ({}, True),
    "pissa": ({"init": "pissa"}, "pissa"),
    "pissa, 4 iterations": ({"init": "pissa", "init_iterations": 4}, "pissa_niter_4"),
    "olora": ({"init": "olora"}, "olora"),
}


@dataclass(frozen=True)
class Shape:
    """The decoder layers the adapter is added to."""

    hidden: int
    intermediate: int
    layers: int
    heads: int


CPU = Shape(1024, 2816, 2, 8)
GPU = Shape(4096, 11008, 2, 32)  # Llama-2-7B's layer shapes
QUICK = Shape(64, 128, 1, 4)


@dataclass
class Row:
    variant: str
    ours_s: float
    peft_s: float
    ours_s_per_layer: float
    ours_over_default: float
    ours_over_peft: float


def model_for(shape: Shape, device: torch.device) -> LlamaForCausalLM:
    config = LlamaConfig(
        hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads, vocab_size=256, use_cache=False,
    )  # fmt: skip
    torch.manual_seed(0)
    with device:
        return LlamaForCausalLM(config).to(torch.bfloat16 if device.type == "cuda" else None)


def seconds(work: Callable[[], object], device: torch.device) -> float:
    """Wall time of ``work()``, the GPU's queue drained on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def ours(model: LlamaForCausalLM, fields: dict[str, object]) -> None:
    pc.add_adapter(model, "bench", pc.LoRA(rank=RANK, alpha=2 * RANK, targets=TARGETS, **fields))  # type: ignore[arg-type]
    pc.delete_adapter(model, "bench")


def theirs(model: LlamaForCausalLM, init: object) -> None:
    config = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=PEFT_TARGETS,
                        init_lora_weights=init)  # type: ignore[arg-type]  # fmt: skip
    get_peft_model(copy.deepcopy(model), config)  # a copy: peft's residual rewrites the base


def main() -> None:
    device, quick = gpu_benchmark_options(__doc__.split("\n")[0], "7B", cpu_shapes=True)
    cuda = device.type == "cuda"
    shape = QUICK if quick else (GPU if cuda else CPU)
    model = model_for(shape, device)
    copy_cost = statistics.median(
        seconds(partial(copy.deepcopy, model), device) for _ in range(REPEATS)
    )  # taken off peft's times: the copy is the benchmark's, not peft's
    times: dict[str, dict[str, list[float]]] = {v: {"ours": [], "peft": []} for v in VARIANTS}
    for repeat in range(REPEATS):
        order = list(VARIANTS) if repeat % 2 == 0 else list(VARIANTS)[::-1]
        for variant in order:
            fields, init = VARIANTS[variant]
            times[variant]["ours"].append(seconds(partial(ours, model, fields), device))
            peft_seconds = seconds(partial(theirs, model, init), device)
            times[variant]["peft"].append(max(peft_seconds - copy_cost, 0.0))
    default = statistics.median(times["default"]["ours"])
    rows = []
    for variant, measured in times.items():
        mine, peft = statistics.median(measured["ours"]), statistics.median(measured["peft"])
        rows.append(Row(variant, mine, peft, mine / shape.layers, mine / default, mine / peft))
        print(
            f"{variant:20} ours {mine:8.3f} s ({mine / shape.layers:.3f} s per layer, "
            f"{mine / default:6.1f}x default)   peft {peft:8.3f} s   ours / peft {mine / peft:.2f}",
            flush=True,
        )
    write_result(
        "lora_init_smoke" if quick else ("lora_init_cuda" if cuda else "lora_init"),
        {
            "shape": asdict(shape),
            "rank": RANK,
            "targets": list(TARGETS),
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "dtype": "torch.bfloat16" if cuda else "torch.float32",
            "repeats": REPEATS,
            "rows": [asdict(r) for r in rows],
        },
    )


if __name__ == "__main__":
    main()
