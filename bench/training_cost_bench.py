"""Training cost per method on all-MiniLM-L6-v2: step time, tokens per second, peak memory, model
FLOPs utilisation; and our LoRA side by side with HF peft's LoRA on the same model and batch.

    python -m bench.training_cost_bench [--quick]

Every method trains the same batch (16 SST-2 sentences padded to 64 tokens) with AdamW. Each
method runs in its own process, so its peak resident memory (``ru_maxrss``) is its own; memory is
reported as the peak during training minus the resident size after loading the model.

Model FLOPs per step (the usual accounting, matmul weights only, embeddings excluded): forward
2*N*T, backward through the frozen weights 2*N*T (gradients for activations), plus 2*N_train*T for
the trainable weights' gradients (N: non-embedding parameters, T: tokens). Utilisation is that
over the measured step time, divided by this machine's matmul peak (an fp32 ``torch.mm`` of
2048 x 2048, best of several runs; bf16 on a GPU). On a CUDA GPU the benchmark also runs there in
bf16 autocast, recorded separately with the device.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import peft
import torch
import transformers as T

import peft_core as pc
from bench.common import write_result
from flows.cli.quiet import quiet_foreign_deprecations
from flows.quickstart import METHOD_RECIPES
from tests.helpers import minilm_path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "en" / "train.tsv"
BATCH, SEQ = 16, 64
METHODS = ("full", "bitfit", "lora", "houlsby", "pfeiffer")


def batch(device: torch.device) -> dict[str, torch.Tensor]:
    """The first 16 SST-2 sentences, padded to 64 tokens, with labels."""
    lines = DATA.read_text().splitlines()[1 : BATCH + 1]
    sentences = [line.rsplit("\t", 1)[0] for line in lines]
    labels = torch.tensor([int(line.rsplit("\t", 1)[1]) for line in lines])
    tokenizer = T.AutoTokenizer.from_pretrained(minilm_path())
    encoded = tokenizer(
        sentences, padding="max_length", truncation=True, max_length=SEQ, return_tensors="pt"
    )
    return {**{k: v.to(device) for k, v in encoded.items()}, "labels": labels.to(device)}


def matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """FLOP/s of a 2048 x 2048 matrix product, best of ``repeats``."""
    size = 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - started) / 4)
    return 2 * size**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_with(method: str, device: torch.device, library: str = "ours") -> torch.nn.Module:
    """MiniLM classifier with ``method`` added (``library="peft"``: HF peft's LoRA)."""
    torch.manual_seed(0)
    model = T.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    if library == "peft":
        config = peft.LoraConfig(
            r=8, lora_alpha=16, target_modules=["query", "value"], task_type="SEQ_CLS"
        )
        model = peft.get_peft_model(model, config)
    else:
        fields, _ = METHOD_RECIPES[method]
        pc.add_adapter(model, "bench", pc.config_from_dict(fields))
    return model.to(device).train()


def step_seconds(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], steps: int, precision: str
) -> list[float]:
    """Wall time of ``steps`` AdamW steps (after two warm-up steps)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    device = params[0].device
    samples = []
    for index in range(steps + 2):
        _sync(device)
        started = time.perf_counter()
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        with autocast:
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if index >= 2:
            samples.append(time.perf_counter() - started)
    return samples


def flops_per_step(model: torch.nn.Module, tokens: int) -> float:
    """2NT forward + 2NT backward to activations + 2*N_train*T weight gradients."""
    body = sum(
        p.numel() for n, p in model.named_parameters() if "embeddings" not in n and p.dim() >= 2
    )
    trainable = sum(
        p.numel() for n, p in model.named_parameters() if p.requires_grad and "embeddings" not in n
    )
    return 2 * body * tokens + 2 * body * tokens + 2 * trainable * tokens


def measure(method: str, library: str, device_name: str, steps: int) -> dict[str, Any]:
    """One method in this process: time, tokens/s, memory above the loaded model, FLOPs."""
    device = torch.device(device_name)
    precision = "bf16" if device.type == "cuda" else "fp32"
    inputs = batch(device)
    model = model_with(method, device, library)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        loaded = torch.cuda.memory_allocated()
    else:
        loaded = _rss_bytes()
    samples = step_seconds(model, inputs, steps, precision)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss_bytes()
    median = statistics.median(samples)
    tokens = int(inputs["attention_mask"].numel())
    return {
        "method": method,
        "library": library,
        "device": str(device),
        "precision": precision,
        "median_step_seconds": median,
        "tokens_per_second": tokens / median,
        "training_memory_bytes": max(0, peak - loaded),
        "flops_per_step": flops_per_step(model, tokens),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "steps": steps,
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def in_subprocess(method: str, library: str, device: str, steps: int) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter (its own peak memory)."""
    command = [
        sys.executable,
        "-m",
        "bench.training_cost_bench",
        "--one",
        method,
        library,
        device,
        str(steps),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def lora_versus_peft(device_name: str, steps: int, rounds: int) -> dict[str, Any]:
    """Our LoRA and peft's on the same model and batch, interleaved rounds; median step times."""
    device = torch.device(device_name)
    precision = "bf16" if device.type == "cuda" else "fp32"
    inputs = batch(device)
    models = {"ours": model_with("lora", device), "peft": model_with("lora", device, "peft")}
    samples: dict[str, list[float]] = {"ours": [], "peft": []}
    for _ in range(rounds):
        for library, model in models.items():
            samples[library] += step_seconds(model, inputs, steps, precision)
    ours, theirs = (statistics.median(samples[k]) for k in ("ours", "peft"))
    return {
        "device": str(device),
        "ours_median_step_seconds": ours,
        "peft_median_step_seconds": theirs,
        "ratio_ours_over_peft": ours / theirs,
        "steps_per_round": steps,
        "rounds": rounds,
    }


def run_device(device: str, steps: int, rounds: int) -> dict[str, Any]:
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    peak = matmul_peak(torch.device(device), dtype)
    methods = []
    for method in METHODS:
        row = in_subprocess(method, "ours", device, steps)
        row["model_flops_utilisation"] = row["flops_per_step"] / row["median_step_seconds"] / peak
        methods.append(row)
        memory = row["training_memory_bytes"] / 2**20
        print(
            f"{device} {method:<8} {row['median_step_seconds'] * 1000:.0f} ms/step  "
            f"{row['tokens_per_second']:.0f} tok/s  +{memory:.0f} MiB  "
            f"MFU {100 * row['model_flops_utilisation']:.1f}%",
            flush=True,
        )
    comparison = lora_versus_peft(device, steps, rounds)
    print(
        f"{device} LoRA ours/peft step time: {comparison['ratio_ours_over_peft']:.3f}", flush=True
    )
    return {
        "device": device,
        "matmul_peak_flops": peak,
        "matmul_dtype": str(dtype).removeprefix("torch."),
        "methods": methods,
        "lora_vs_peft": comparison,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    parser.add_argument(
        "--one", nargs=4, metavar=("METHOD", "LIBRARY", "DEVICE", "STEPS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    T.logging.set_verbosity_error()
    quiet_foreign_deprecations()  # peft's call into transformers, as the CLI quiets it
    if args.one:
        method, library, device, steps = args.one
        print(json.dumps(measure(method, library, device, int(steps))))
        return
    steps, rounds = (5, 3) if args.quick else (20, 5)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    path = write_result(
        "training_cost",
        {
            "quick": args.quick,
            "batch_size": BATCH,
            "sequence_length": SEQ,
            "results": [run_device(device, steps, rounds) for device in devices],
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
