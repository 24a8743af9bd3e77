"""What ``load.offload`` costs: forward passes of a LoRA-adapted, Llama-shaped decoder (random
weights) with half its blocks kept off the device by accelerate, against the whole model in
memory. This is how evaluation and predict run a base bigger than the GPUs.

    python -m bench.offload_bench            # CPU: half on disk; CUDA: half in CPU memory, on disk
    python -m bench.offload_bench --quick    # tiny shapes (CI)

The model is saved once (safetensors), then loaded each way with ``device_map`` (the blocks of
the second half on ``"cpu"`` or ``"disk"``, the rest on the device) and given the same saved LoRA
(r=16, every linear layer). Each variant's logits must equal the whole model's before timing.
Timed: the forward pass (no gradients) of one batch, the variants interleaved round by round so
drift hits all of them; reported: median milliseconds and the ratio to the whole model.

Needs only torch, transformers, accelerate and peft_core (runs on the device machine as it is).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import peft_core as pc
from bench.common import gpu_benchmark_options, write_result

TARGETS = ("q", "k", "v", "o", "ffn_in", "ffn_out")


@dataclass(frozen=True)
class Shape:
    """The model and batch one run uses."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    vocab: int
    rows: int
    tokens: int
    rounds: int


CPU = Shape(1024, 8, 2752, 16, 8000, 4, 128, 7)
GPU = Shape(4096, 8, 11008, 32, 32000, 8, 512, 9)  # 8 of Llama-2-7B's blocks
QUICK = Shape(64, 2, 128, 4, 256, 2, 16, 3)


@dataclass
class Row:
    variant: str
    kept_off_device: str  # where the second half's blocks wait: "" (nowhere), "cpu", "disk"
    offloaded_bytes: int
    forward_ms_median: float
    ratio_to_whole: float
    max_logit_difference: float


def save_base(shape: Shape, folder: Path, dtype: torch.dtype) -> None:
    config = LlamaConfig(
        hidden_size=shape.hidden, num_hidden_layers=shape.layers,
        intermediate_size=shape.intermediate, num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads, vocab_size=shape.vocab,
        max_position_embeddings=max(shape.tokens, 64),
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(dtype).save_pretrained(folder)


def device_map(shape: Shape, device: torch.device, kept: str) -> dict[str, str | int]:
    """Every module on ``device``; the second half's blocks on ``kept`` (unless empty)."""
    here: str | int = (device.index or 0) if device.type == "cuda" else "cpu"
    blocks = {
        f"model.layers.{i}": kept if kept and i >= shape.layers // 2 else here
        for i in range(shape.layers)
    }
    outside = {name: here for name in ("model.embed_tokens", "model.norm", "model.rotary_emb")}
    return {**outside, **blocks, "lm_head": here}


def load(
    folder: Path,
    shape: Shape,
    device: torch.device,
    *,
    dtype: torch.dtype,
    kept: str,
    adapter: Path,
) -> LlamaForCausalLM:
    model = LlamaForCausalLM.from_pretrained(
        folder, dtype=dtype, device_map=device_map(shape, device, kept),
        offload_folder=folder / f"offload-{kept}",
    ).eval()  # fmt: skip
    pc.load_adapter(model, adapter, name="bench")
    pc.set_active(model, "bench")
    return model


def forward(model: LlamaForCausalLM, ids: torch.Tensor, cuda: bool) -> tuple[float, torch.Tensor]:
    """Seconds for one forward pass, and its logits."""
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started, logits


def main() -> None:
    device, quick = gpu_benchmark_options(__doc__.split("\n")[0], "GPU", cpu_shapes=True)
    cuda = device.type == "cuda"
    shape = QUICK if quick else (GPU if cuda else CPU)
    dtype = torch.bfloat16 if cuda else torch.float32
    variants = {"in memory": "", **({"half in CPU memory": "cpu"} if cuda else {})}
    variants["half on disk"] = "disk"
    with tempfile.TemporaryDirectory(prefix="offload-bench-") as scratch:
        folder = Path(scratch)
        save_base(shape, folder / "base", dtype)
        adapted = LlamaForCausalLM.from_pretrained(folder / "base", dtype=dtype)
        block_bytes = sum(
            p.numel() * p.element_size() for p in adapted.model.layers[0].parameters()
        )
        pc.add_adapter(adapted, "bench", pc.LoRA(rank=16, alpha=32, targets=TARGETS))
        with torch.no_grad():  # a trained adapter's weights, not a fresh no-op
            for tensor in pc.adapter_state_dict(adapted, "bench").values():
                tensor.normal_(0, 0.02)
        adapter = pc.save_adapter(adapted, "bench", folder / "adapter")
        del adapted
        models = {
            name: load(folder / "base", shape, device, dtype=dtype, kept=kept, adapter=adapter)
            for name, kept in variants.items()
        }
        generator = torch.Generator().manual_seed(1)
        ids = torch.randint(3, shape.vocab, (shape.rows, shape.tokens), generator=generator)
        ids = ids.to(device)
        reference = forward(models["in memory"], ids, cuda)[1]
        differences = {}
        for name, model in models.items():  # also the warm-up round
            differences[name] = float((forward(model, ids, cuda)[1] - reference).abs().max())
            if differences[name] > (0.0 if not cuda else 1e-2):
                raise SystemExit(f"{name}: logits differ from the whole model's by {differences}")
        times: dict[str, list[float]] = {name: [] for name in models}
        names = list(models)
        for round_ in range(shape.rounds):
            for name in names if round_ % 2 == 0 else names[::-1]:
                times[name].append(forward(models[name], ids, cuda)[0])
    whole = statistics.median(times["in memory"])
    rows = []
    for name, kept in variants.items():
        median = statistics.median(times[name])
        offloaded = block_bytes * (shape.layers - shape.layers // 2) if kept else 0
        rows.append(Row(name, kept, offloaded, 1000 * median, median / whole, differences[name]))
        print(f"{name:20} {1000 * median:9.1f} ms  {median / whole:5.2f}x", flush=True)
    write_result(
        "offload_smoke" if quick else ("offload_cuda" if cuda else "offload"),
        {
            "shape": asdict(shape),
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "dtype": str(dtype).removeprefix("torch."),
            "rows": [asdict(r) for r in rows],
        },
    )


if __name__ == "__main__":
    main()
