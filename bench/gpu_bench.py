"""LoRA fine-tuning of a Llama-shaped decoder: ours against Hugging Face peft in the same run.

    python -m bench.gpu_bench                 # on a CUDA GPU: ~1.1B parameters, batch 8 x 1024
    python -m bench.gpu_bench --quick         # tiny shapes (any device; CI runs it on a CPU)

The base is random-weight (speed and memory do not depend on the values), built directly on the
device in bf16. LoRA r=16 on every linear layer of the blocks (q, k, v, o, gate, up, down) with
float32 adapter weights (peft's default and ours), AdamW, one optimiser step per batch. For
each of {ours, peft, ours on an NF4 base (QLoRA, when torchao is installed), peft on
bitsandbytes' NF4 (when bitsandbytes is installed)} x {plain, gradient checkpointing}: tokens per
second (median step after warm-up), model FLOPs utilisation on a GPU (6 x parameters x tokens
per second over the device's bf16 peak, the usual accounting), and peak memory on a GPU. The
ratios ours / peft are the result that matters: both should be <= 1.0 (and for QLoRA, ours on
torchao against peft on bitsandbytes).

Needs only torch, transformers, peft and peft_core (the device machine has no registry stack).
"""

from __future__ import annotations

import gc
import importlib.util
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import peft_core as pc
from bench.common import gpu_benchmark_options, write_result

# bf16 dense peak of the GPUs we meet (TFLOP/s); others report no MFU
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}
TARGETS = ("q", "k", "v", "o", "ffn_in", "ffn_out")  # our roles: q/k/v/o + gate/up + down
PEFT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Shape:
    """The model and batch one run uses."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    batch: int
    seq: int
    steps: int


FULL = Shape(2048, 16, 5632, 16, 8, 32_000, 8, 1024, 12)  # ~1.1B parameters
QUICK = Shape(128, 2, 256, 4, 2, 512, 2, 64, 4)  # NF4 blocks need 64 x 256-weight layers


def build(shape: Shape, device: torch.device) -> LlamaForCausalLM:
    config = LlamaConfig(
        hidden_size=shape.hidden, num_hidden_layers=shape.layers,
        intermediate_size=shape.intermediate, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads, vocab_size=shape.vocab,
        max_position_embeddings=shape.seq, use_cache=False,
    )  # fmt: skip
    torch.manual_seed(0)
    with device:
        return LlamaForCausalLM(config).to(torch.bfloat16)


def with_ours(model: LlamaForCausalLM) -> torch.nn.Module:
    pc.add_adapter(model, "bench", pc.LoRA(rank=16, alpha=32, targets=TARGETS))
    return model


def with_ours_on_nf4(model: LlamaForCausalLM) -> torch.nn.Module:
    """QLoRA: the blocks' Linear weights in 4-bit NF4 (torchao), then the same LoRA."""
    pc.quantize_base(model, "nf4")
    return with_ours(model)


def nf4_available() -> bool:
    try:
        pc.quantize.nf4_available()
    except pc.ConfigError:
        return False
    return True


def with_peft(model: LlamaForCausalLM) -> torch.nn.Module:
    config = LoraConfig(r=16, lora_alpha=32, target_modules=PEFT_TARGETS, lora_dropout=0.0)
    return get_peft_model(model, config)  # autocast_adapter_dtype: float32 adapter weights


def with_peft_on_bnb_nf4(model: LlamaForCausalLM) -> torch.nn.Module:
    """peft's QLoRA as its users run it: the base reloaded through bitsandbytes' 4-bit NF4
    (double quantisation, bf16 compute), then the same LoRA."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: PLC0415

    device = next(model.parameters()).device
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        del model
        quantized = AutoModelForCausalLM.from_pretrained(
            folder, quantization_config=quantization, dtype=torch.bfloat16,
            device_map={"": device},
        )  # fmt: skip
    return with_peft(quantized)


def bitsandbytes_available() -> bool:
    """peft's QLoRA row needs bitsandbytes (not a dependency: carried to the GPU machine)."""
    return importlib.util.find_spec("bitsandbytes") is not None


def run(library: str, checkpointing: bool, shape: Shape, device: torch.device) -> dict[str, Any]:
    """Train ``shape.steps`` steps; the measurements of one configuration."""
    model = build(shape, device)
    parameters = sum(p.numel() for p in model.parameters())
    wrap = {
        "ours": with_ours, "ours-nf4": with_ours_on_nf4, "peft": with_peft,
        "peft-nf4": with_peft_on_bnb_nf4,
    }[library]  # fmt: skip
    model = wrap(model)
    inner = model.get_base_model() if library.startswith("peft") else model
    if checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(inner, "activation_checkpointing_enable"):
            inner.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {p.dtype for p in trainable} == {torch.float32}, "both keep float32 adapter weights"
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, shape.vocab, (shape.batch, shape.seq), generator=generator).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(shape.steps):
        started = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    step = statistics.median(times[1:] if len(times) > 1 else times)  # the first one warms up
    tokens_per_second = shape.batch * shape.seq / step
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    result = {
        "library": library, "checkpointing": checkpointing, "step_seconds": step,
        "tokens_per_second": tokens_per_second, "peak_memory_gib": peak,
        "parameters": parameters, "trainable": sum(p.numel() for p in trainable),
        "final_loss": float(loss.detach()),
    }  # fmt: skip
    del model, optimizer, inner
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def mfu(row: dict[str, Any], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((tflops for gpu, tflops in PEAK_TFLOPS.items() if gpu in name), None)
    if peak is None:
        return None
    return 6 * row["parameters"] * row["tokens_per_second"] / (peak * 1e12)


def main() -> None:
    device, quick = gpu_benchmark_options(__doc__.split("\n")[0], "~1.1B")
    cuda = device.type == "cuda"
    shape = QUICK if quick else FULL
    rows = []
    libraries = ("peft", "ours", "ours-nf4") if nf4_available() else ("peft", "ours")
    if bitsandbytes_available():
        libraries += ("peft-nf4",)
    for checkpointing in (False, True):
        for library in libraries:
            row = run(library, checkpointing, shape, device)
            row["mfu"] = mfu(row, device)
            rows.append(row)
            memory = f"{row['peak_memory_gib']:.2f} GiB" if row["peak_memory_gib"] else "-"
            print(
                f"{library:5} checkpointing={checkpointing!s:5} "
                f"{row['tokens_per_second']:10.0f} tokens/s  peak {memory}",
                flush=True,
            )
    ratios = {}
    for checkpointing in (False, True):
        ours, theirs = (
            next(r for r in rows if r["library"] == lib and r["checkpointing"] == checkpointing)
            for lib in ("ours", "peft")
        )
        key = "checkpointing" if checkpointing else "plain"
        ratios[key] = {
            "time_ours_over_peft": ours["step_seconds"] / theirs["step_seconds"],
            "memory_ours_over_peft": (
                ours["peak_memory_gib"] / theirs["peak_memory_gib"]
                if ours["peak_memory_gib"]
                else None
            ),
        }
        nf4 = next(
            (r for r in rows if r["library"] == "ours-nf4" and r["checkpointing"] == checkpointing),
            None,
        )
        if nf4 is not None:  # QLoRA against bf16 LoRA, both ours
            ratios[key]["time_nf4_over_bf16"] = nf4["step_seconds"] / ours["step_seconds"]
            ratios[key]["memory_nf4_over_bf16"] = (
                nf4["peak_memory_gib"] / ours["peak_memory_gib"]
                if ours["peak_memory_gib"]
                else None
            )
        bnb = next(
            (r for r in rows if r["library"] == "peft-nf4" and r["checkpointing"] == checkpointing),
            None,
        )
        if nf4 is not None and bnb is not None:  # our QLoRA (torchao) against peft's (bnb)
            ratios[key]["time_nf4_ours_over_peft"] = nf4["step_seconds"] / bnb["step_seconds"]
            ratios[key]["memory_nf4_ours_over_peft"] = (
                nf4["peak_memory_gib"] / bnb["peak_memory_gib"] if bnb["peak_memory_gib"] else None
            )
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    name = "gpu_smoke" if quick else "gpu"
    path = write_result(
        name,
        {"device": device_name, "quick": quick, "shape": asdict(shape), "rows": rows,
         "ratios": ratios},
    )  # fmt: skip
    print(f"ratios ours/peft: {ratios}\nwrote {path}")


if __name__ == "__main__":
    main()
