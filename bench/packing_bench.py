"""Packing (``train.packing``) against padding: LoRA training throughput on instruction-like rows
whose lengths vary, on a Llama-shaped decoder with random weights.

    python -m bench.packing_bench              # this machine: CPU shapes, or GPU shapes on CUDA
    python -m bench.packing_bench --quick      # tiny shapes (CI)

Rows have lognormal lengths (median a quarter of the longest, clipped), the first 40% of each
masked as its prompt (labels -100), in batches of 8. Padded: each batch right-padded to its
longest row (what ``DataCollatorForSeq2Seq`` does). Packed: the batch end to end in one row with
restarting position ids (``DataCollatorWithFlattening``, what ``train.packing`` uses), so
transformers masks attention block-diagonally. Both train LoRA r=16 on every linear layer
(AdamW, ``use_cache`` off as in ``pc.train``), one batch per step, the two variants interleaved
batch by batch so drift hits both. Before timing, the first batch's loss must agree between the
two. Reported: real (unpadded) tokens per second of each, the share of the padded batches that
is padding, and the speed-up packed / padded.

Needs only torch, transformers and peft_core (runs on the device machine as it is).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from transformers import DataCollatorWithFlattening, LlamaConfig, LlamaForCausalLM

import peft_core as pc
from bench.common import gpu_benchmark_options, write_result

TARGETS = ("q", "k", "v", "o", "ffn_in", "ffn_out")
PROMPT_SHARE = 0.4


@dataclass(frozen=True)
class Shape:
    """The model and data one run uses."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    vocab: int
    max_length: int
    batch: int
    batches: int


CPU = Shape(256, 4, 688, 4, 2048, 256, 8, 12)
GPU = Shape(2048, 16, 5632, 16, 32_000, 1024, 8, 12)
QUICK = Shape(64, 2, 128, 4, 256, 48, 4, 3)


def rows(shape: Shape, count: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """Token rows of lognormal length with their prompt share masked in the labels."""
    generator = torch.Generator().manual_seed(seed)
    median = shape.max_length / 4
    lengths = torch.empty(count).log_normal_(0.0, 0.6, generator=generator) * median
    examples = []
    for length in lengths.clamp(8, shape.max_length).int().tolist():
        ids = torch.randint(1, shape.vocab, (length,), generator=generator).tolist()
        prompt = int(PROMPT_SHARE * length)
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return examples


def padded(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Right-padded to the longest row: pad id 0, attention mask 0 and label -100 there."""
    longest = max(len(row["input_ids"]) for row in batch)

    def pad(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (longest - len(values))

    return {
        "input_ids": torch.tensor([pad(r["input_ids"], 0) for r in batch]),
        "attention_mask": torch.tensor([pad([1] * len(r["input_ids"]), 0) for r in batch]),
        "labels": torch.tensor([pad(r["labels"], -100) for r in batch]),
    }


def model_for(shape: Shape, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    config = LlamaConfig(
        hidden_size=shape.hidden, num_hidden_layers=shape.layers,
        intermediate_size=shape.intermediate, num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads, vocab_size=shape.vocab,
        max_position_embeddings=shape.max_length * shape.batch, use_cache=False,
    )  # fmt: skip
    torch.manual_seed(0)
    with device:
        model = LlamaForCausalLM(config).to(dtype)
    pc.add_adapter(model, "bench", pc.LoRA(rank=16, alpha=32, targets=TARGETS))
    return model


def step(
    model: LlamaForCausalLM, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]
) -> float:
    """One optimiser step; its loss."""
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def first_losses_agree(
    model: LlamaForCausalLM, variants: dict[str, dict[str, torch.Tensor]], atol: float
) -> dict[str, float]:
    """The two variants' losses on the same rows, before any training (must agree)."""
    with torch.no_grad():
        losses = {name: float(model(**batch).loss) for name, batch in variants.items()}
    if abs(losses["packed"] - losses["padded"]) > atol:
        raise SystemExit(f"packed and padded losses differ: {losses}")
    return losses


@dataclass
class Row:
    variant: str
    step_ms_median: float
    real_tokens: int
    computed_tokens: int
    tokens_per_second: float


def main() -> None:
    device, quick = gpu_benchmark_options(__doc__.split("\n")[0], "GPU", cpu_shapes=True)
    cuda = device.type == "cuda"
    shape = QUICK if quick else (GPU if cuda else CPU)
    dtype = torch.bfloat16 if cuda else torch.float32
    examples = rows(shape, shape.batch * (shape.batches + 1))
    groups = [examples[i : i + shape.batch] for i in range(0, len(examples), shape.batch)]
    flatten = DataCollatorWithFlattening(return_position_ids=True)
    batches = [
        {"padded": padded(group), "packed": dict(flatten(group))}
        for group in groups  # the first one warms up
    ]
    batches = [{k: {n: t.to(device) for n, t in v.items()} for k, v in b.items()} for b in batches]
    model = model_for(shape, device, dtype)
    agreed = first_losses_agree(model, batches[0], atol=1e-4 if not cuda else 5e-2)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times: dict[str, list[float]] = {"padded": [], "packed": []}
    order = ("padded", "packed")
    for index, batch in enumerate(batches):
        for variant in order if index % 2 == 0 else order[::-1]:
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            step(model, optimizer, batch[variant])
            if cuda:
                torch.cuda.synchronize()
            if index > 0:  # the first batch warms up
                times[variant].append(time.perf_counter() - started)
    timed = batches[1:]
    real = sum(int(b["padded"]["attention_mask"].sum()) for b in timed)
    results = []
    for variant in order:
        computed = sum(int(b[variant]["input_ids"].numel()) for b in timed)
        seconds = sum(times[variant])
        results.append(
            Row(variant, 1000 * statistics.median(times[variant]), real, computed, real / seconds)
        )
        print(f"{variant:7} {results[-1].tokens_per_second:10.0f} real tokens/s", flush=True)
    speedup = results[1].tokens_per_second / results[0].tokens_per_second
    padding_share = 1 - real / results[0].computed_tokens
    print(f"padding {padding_share:.0%} of the padded batches; packed / padded: {speedup:.2f}x")
    write_result(
        "packing_smoke" if quick else ("packing_cuda" if cuda else "packing"),
        {
            "shape": asdict(shape),
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "dtype": str(dtype),
            "first_batch_losses": agreed,
            "rows": [asdict(r) for r in results],
            "padding_share": padding_share,
            "speedup_packed_over_padded": speedup,
        },
    )


if __name__ == "__main__":
    main()
