"""Loading a base in NF4 (QLoRA): quantised weight by weight as it is read (what the flows do)
against loaded whole in bf16 and quantised afterwards (what they did before).

    python -m bench.quantized_load_bench            # CPU shapes here, TinyLlama-1.1B's on CUDA
    python -m bench.quantized_load_bench --quick    # tiny shapes (CI)

A Llama-shaped checkpoint with random weights is written as bf16 safetensors, as published
checkpoints are, and read once so both ways find it in the page cache. Each way then loads it
in a fresh process, so the memory peak it reports is its own:

- ``whole, then quantised``: ``from_pretrained`` in bf16 on the CPU, ``pc.quantize_base(model,
  "nf4")`` there, then the model moved to the device.
- ``quantised while loading``: ``from_pretrained(..., device_map={"": device},
  quantization_config=pc.quantize.quantization_config(skeleton, "nf4"))``.

Reported for each: seconds until the NF4 model is on the device; the peak of the process's
anonymous memory above what it held before loading (``RssAnon`` sampled every 5 ms: weights
copied onto the heap; the checkpoint's memory-mapped pages are the file's, which the kernel can
drop); on CUDA the peak GPU memory; and a digest of every NF4 code and scale, which must be the
same for both ways. Needs torch, transformers, torchao and peft_core (not the registry stack).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import peft_core as pc
from bench.common import write_result

WAYS = {"whole": "whole, then quantised", "streamed": "quantised while loading"}


@dataclass(frozen=True)
class Shape:
    """The Llama-shaped base whose checkpoint is loaded."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int


QUICK = Shape(128, 256, 2, 4, 2, 512)
CPU = Shape(1024, 2816, 8, 16, 4, 32_000)  # ~150M weights: a minute on two cores
GPU = Shape(2048, 5632, 22, 32, 4, 32_000)  # TinyLlama-1.1B's body


class AnonymousPeak:
    """The highest ``RssAnon`` of this process while the block runs, sampled every 5 ms."""

    def __init__(self) -> None:
        self.before = self.peak = _rss_anon()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> AnonymousPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon())

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, _rss_anon())


def _rss_anon() -> int:
    """This process's anonymous resident memory in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def write_checkpoint(shape: Shape, folder: Path, device: torch.device) -> int:
    """A random-weight Llama of ``shape`` saved in bf16; its number of weights."""
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    torch.manual_seed(0)
    with device:  # a GPU initialises 1B weights in a blink, a CPU in tens of seconds
        model = LlamaForCausalLM._from_config(LlamaConfig(**asdict(shape)), dtype=torch.bfloat16)
    model.save_pretrained(folder)
    for file in folder.glob("*.safetensors"):  # into the page cache for both ways alike
        with file.open("rb") as stream:
            while stream.read(1 << 24):
                pass
    return sum(p.numel() for p in model.parameters())


def measure(way: str, folder: Path, device: torch.device) -> dict[str, Any]:
    """Load ``folder`` one ``way`` onto ``device`` (in this process); what it cost."""
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: PLC0415

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):  # imports the modelling code before the count starts
        skeleton = AutoModelForCausalLM.from_config(config)
    pc.quantize.nf4_available()  # and torchao
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with AnonymousPeak() as memory:
        started = time.perf_counter()
        if way == "whole":
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
            pc.quantize_base(model, "nf4")
            model.to(device)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                folder,
                dtype=torch.bfloat16,
                device_map={"": device},
                quantization_config=pc.quantize.quantization_config(skeleton, "nf4"),
            )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
    layers = pc.quantize.quantized_layers(model)
    digest = hashlib.sha256()
    for name in layers:
        weight = model.get_submodule(name).weight
        for part in (weight.quantized_data, weight.quantized_scalers, weight.scaler_mean):
            digest.update(part.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {
        "way": WAYS[way],
        "seconds": seconds,
        "anonymous_peak_bytes": memory.peak - memory.before,
        "gpu_peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0,
        "model_bytes": pc.quantize.stored_bytes(model),
        "quantized_layers": len(layers),
        "on": str(next(model.parameters()).device),
        "digest": digest.hexdigest(),
    }


def run(shape: Shape, device: torch.device, name: str) -> dict[str, Any]:
    """Both ways, each in a fresh process; the results file's contents."""
    with tempfile.TemporaryDirectory(prefix="quantized-load-") as folder:
        weights = write_checkpoint(shape, Path(folder), device)
        bf16_bytes = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
        rows = []
        for way in WAYS:
            command = [sys.executable, "-m", "bench.quantized_load_bench", "--measure", way]
            command += ["--folder", folder, "--device", str(device)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{way} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{rows[-1]['way']:>24}: {rows[-1]['seconds']:.1f} s, heap peak "
                  f"{rows[-1]['anonymous_peak_bytes'] / 2**20:,.0f} MiB")  # fmt: skip
    whole, streamed = rows
    data = {
        "device": str(device),
        "shape": asdict(shape),
        "weights": weights,
        "checkpoint_bytes": bf16_bytes,
        "rows": rows,
        "same_codes": whole["digest"] == streamed["digest"],
        "time_ratio": streamed["seconds"] / whole["seconds"],
        "memory_ratio": streamed["anonymous_peak_bytes"] / whole["anonymous_peak_bytes"],
    }
    print(f"written {write_result(name, data)}")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (CI)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--measure", choices=list(WAYS), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device.startswith("cuda")
    device = torch.device("cuda" if cuda else "cpu")
    if args.measure:  # one way, in this fresh process; one JSON line for the parent
        print(json.dumps(measure(args.measure, args.folder, device)))
        return
    pc.quantize.nf4_available()
    if args.quick:
        run(QUICK, device, "quantized_load_smoke")
    else:
        run(GPU if cuda else CPU, device, "quantized_load_cuda" if cuda else "quantized_load")


if __name__ == "__main__":
    main()
