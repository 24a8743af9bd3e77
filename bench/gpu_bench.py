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


def build_config(shape: Shape) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=shape.hidden, num_hidden_layers=shape.layers,
        intermediate_size=shape.intermediate, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads, vocab_size=shape.vocab,
        max_position_embeddings=shape.seq, use_cache=False,
    )  # fmt: skip


def build(shape: Shape, device: torch.device) -> LlamaForCausalLM:
    torch.manual_seed(0)
    with device:
        return LlamaForCausalLM(build_config(shape)).to(torch.bfloat16)


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


def run_or_record(
    library: str, checkpointing: bool, shape: Shape, device: torch.device
) -> dict[str, Any]:
    """:func:`run`, or a row naming its error: one configuration that fails on a device (a
    missing kernel, out of memory) must not cost the others their numbers."""
    try:
        return run(library, checkpointing, shape, device)
    except Exception as exc:
        error = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        print(f"{library} checkpointing={checkpointing} failed: {error}", flush=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {"library": library, "checkpointing": checkpointing, "error": error}


def ratios_of(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Ours over peft (time, memory), QLoRA over bf16 LoRA and our QLoRA over peft's, with
    and without checkpointing: only between rows that were measured."""
    measured = {(r["library"], r["checkpointing"]): r for r in rows if "error" not in r}

    def over(numerator: str, denominator: str, checkpointing: bool, field: str) -> float | None:
        top = measured.get((numerator, checkpointing), {}).get(field)
        bottom = measured.get((denominator, checkpointing), {}).get(field)
        return top / bottom if top and bottom else None

    names = {
        "ours_over_peft": ("ours", "peft"),
        "nf4_over_bf16": ("ours-nf4", "ours"),  # QLoRA against bf16 LoRA, both ours
        "nf4_ours_over_peft": ("ours-nf4", "peft-nf4"),  # torchao's NF4 against bitsandbytes'
    }
    ratios = {}
    for checkpointing in (False, True):
        pairs = {
            f"{measure}_{name}": over(*libraries, checkpointing, field)
            for name, libraries in names.items()
            for measure, field in (("time", "step_seconds"), ("memory", "peak_memory_gib"))
        }
        ratios["checkpointing" if checkpointing else "plain"] = {
            key: value for key, value in pairs.items() if value is not None
        }
    return ratios


def add_estimates(rows: list[dict[str, Any]], shape: Shape) -> None:
    """``pc.estimate_step_memory`` (``adapterops plan``'s step peak, on fake tensors) beside
    each of our measured rows: how close the planner comes to the device's own peak."""
    config = build_config(shape)
    for row in rows:
        if "error" in row or not row["library"].startswith("ours"):
            continue
        estimate = pc.estimate_step_memory(
            config, pc.LoRA(rank=16, alpha=32, targets=TARGETS), head="causal-lm",
            batch_size=shape.batch, sequence_length=shape.seq, dtype=torch.bfloat16,
            quantization="nf4" if row["library"] == "ours-nf4" else "none",
            gradient_checkpointing=row["checkpointing"],
        )  # fmt: skip
        row["estimated_peak_gib"] = estimate.peak_bytes / 2**30


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
    rows: list[dict[str, Any]] = []
    libraries = ("peft", "ours", "ours-nf4") if nf4_available() else ("peft", "ours")
    if bitsandbytes_available():
        libraries += ("peft-nf4",)
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    name = "gpu_smoke" if quick else "gpu"

    def save(complete: bool) -> Any:  # after every row: a run cut short keeps what it measured
        return write_result(
            name,
            {"device": device_name, "quick": quick, "shape": asdict(shape), "rows": rows,
             "ratios": ratios_of(rows), "complete": complete},
        )  # fmt: skip

    for checkpointing in (False, True):
        for library in libraries:
            row = run_or_record(library, checkpointing, shape, device)
            if "error" not in row:
                row["mfu"] = mfu(row, device)
                memory = f"{row['peak_memory_gib']:.2f} GiB" if row["peak_memory_gib"] else "-"
                print(
                    f"{library:8} checkpointing={checkpointing!s:5} "
                    f"{row['tokens_per_second']:10.0f} tokens/s  peak {memory}",
                    flush=True,
                )
            rows.append(row)
            save(complete=False)
    add_estimates(rows, shape)  # last: the measured rows never wait for it
    path = save(complete=True)
    print(f"ratios: {ratios_of(rows)}\nwrote {path}")


if __name__ == "__main__":
    main()
