"""Mixed-adapter batches on a Llama-shaped decoder: prefill and decode, ours against peft.

    python -m bench.multi_lora_bench            # on a CUDA GPU: 16 layers x 2048 (~0.9B), bf16
                                                # on a CPU: 4 layers x 256, fp32
    python -m bench.multi_lora_bench --quick    # tiny shapes (any device; CI runs it on a CPU)
    python -m bench.multi_lora_bench --targets "all linear" --counts 1,32   # some rows only,
                                                # added to those measured before on this GPU
    python -m bench.multi_lora_bench --prefill-only   # no decoding (peft's takes minutes a row
                                                # with many adapters); a row measured before
                                                # keeps its decode numbers

A batch of rows where row i uses LoRA ``i mod k`` (r=16, on q, v or on every linear layer), for
k = 1, 4, 16, 32, 64 distinct adapters (the batch grows to k rows past 32). Four ways run the
same batch: our ``per_row`` (entered for every call; its gather kernel, the segmented one as
``ours_segmented`` and, on CUDA, the Triton one as ``ours_triton`` and ``auto``'s pick for each
phase as ``ours_auto``), peft's ``adapter_names``, one adapter for every row (``set_active``: the
cost to match) and the base model. Prefill: one forward pass over the prompts (milliseconds).
Decode: ``generate`` of new tokens with the KV cache (tokens per second over the batch). Before
timing, ours and peft must produce the same logits.
The base has random weights (speed does not depend on the values) and is built on the device.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import peft
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import peft_core as pc
from bench.common import gpu_benchmark_device, gpu_benchmark_parser, write_result
from bench.composition_bench import interleaved_medians

# our per_row LoRA kernels: BGMV-style gather (the default), SGMV-style grouped GEMM, SGMV-style
# Triton kernels, and auto's pick of one per phase (the last two on CUDA only: on a CPU auto is
# gather)
KERNELS: dict[str, pc.routing.Kernel] = {
    "ours": "gather",
    "ours_segmented": "segmented",
    "ours_triton": "triton",
    "ours_auto": "auto",
}
CUDA_ONLY = ("triton", "auto")
TARGETS: dict[str, tuple[tuple[str, ...], list[str]]] = {
    "q,v": (("q", "v"), ["q_proj", "v_proj"]),
    "all linear": (
        ("q", "k", "v", "o", "ffn_in", "ffn_out"),
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ),
}


@dataclass(frozen=True)
class Shape:
    """Model, batch and generation sizes of one run."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    rows: int
    prompt: int
    new_tokens: int
    counts: tuple[int, ...]
    repeats: int


FULL = Shape(2048, 16, 5632, 16, 8, 32_000, 32, 256, 32, (1, 4, 16, 32, 64), 5)
CPU = Shape(256, 4, 688, 4, 2, 2048, 32, 64, 8, (1, 4, 16, 32, 64), 5)
QUICK = Shape(64, 2, 128, 4, 2, 512, 4, 16, 4, (1, 4), 2)


def build(shape: Shape, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    config = LlamaConfig(
        hidden_size=shape.hidden, num_hidden_layers=shape.layers,
        intermediate_size=shape.intermediate, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads, vocab_size=shape.vocab,
        max_position_embeddings=shape.prompt + shape.new_tokens, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    with device:
        return LlamaForCausalLM(config).to(dtype).eval()


def with_adapters(
    base: LlamaForCausalLM, count: int, targets: str
) -> tuple[torch.nn.Module, Any, list[str]]:
    """Ours and peft's copies of ``base`` with the same ``count`` non-zero LoRAs."""
    roles, modules = TARGETS[targets]
    ours = copy.deepcopy(base)
    config = peft.LoraConfig(r=16, lora_alpha=32, target_modules=modules, lora_dropout=0.0)
    theirs = peft.get_peft_model(copy.deepcopy(base), config, adapter_name="a0")
    names = [f"a{i}" for i in range(count)]
    generator = torch.Generator().manual_seed(1)
    for i, name in enumerate(names):
        if i:
            theirs.add_adapter(name, config)
        pc.add_adapter(ours, name, pc.LoRA(rank=16, alpha=32, targets=roles))
        with torch.no_grad():
            for module_name, module in theirs.named_modules():
                if hasattr(module, "lora_A") and name in module.lora_A:
                    target = ours.get_submodule(module_name.removeprefix("base_model.model."))
                    for which in ("lora_A", "lora_B"):
                        weight = getattr(module, which)[name].weight
                        values = torch.randn(weight.shape, generator=generator) * 0.02
                        weight.copy_(values)
                        getattr(target.adapters[name], which).weight.copy_(values)
    return ours.eval(), theirs.eval(), names


def routed(
    model: torch.nn.Module, rows: list[str], call: Any, kernel: pc.routing.Kernel, **inputs: Any
) -> Any:
    with pc.per_row(model, rows, kernel=kernel):
        return call(**inputs)


def measure(
    shape: Shape, device: torch.device, dtype: torch.dtype, targets: str, *, decode: bool = True
) -> Iterator[dict[str, Any]]:
    """One row per count of distinct adapters, as each is measured (``decode``: generation's
    throughput too)."""
    base = build(shape, device, dtype)
    for count in shape.counts:
        rows_n = max(shape.rows, count)
        ours, theirs, names = with_adapters(base, count, targets)
        rows = [names[i % count] for i in range(rows_n)]
        generator = torch.Generator().manual_seed(2)
        ids = torch.randint(1, shape.vocab, (rows_n, shape.prompt), generator=generator)
        inputs = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
        generation = {**inputs, "max_new_tokens": shape.new_tokens, "do_sample": False,
                      "min_new_tokens": shape.new_tokens}  # fmt: skip
        with torch.no_grad():
            peft_logits = theirs(**inputs, adapter_names=rows).logits.float()
            kernels = {
                w: k for w, k in KERNELS.items() if k not in CUDA_ONLY or device.type == "cuda"
            }
            failures, differences = {}, {}
            for way, kernel in dict(kernels).items():
                try:
                    mine = routed(ours, rows, ours, kernel, **inputs).logits.float()
                except Exception as exc:  # e.g. no grouped-GEMM kernel or Triton for this GPU
                    if kernel == "gather":
                        raise
                    failures[way] = f"{type(exc).__name__}: {exc}"[:300]
                    del kernels[way]
                    print(f"  {way} skipped: {failures[way]}", flush=True)
                    continue
                if dtype == torch.float32:
                    torch.testing.assert_close(mine, peft_logits, atol=1e-4, rtol=1e-4)
                # in bf16 both round, each its own way (segmented: bf16 weights): recorded
                differences[way] = float((mine - peft_logits).abs().max())
            single = copy.deepcopy(ours)
            pc.set_active(single, names[0])
            timed = {
                **{
                    way: functools.partial(routed, ours, rows, ours, kernel, **inputs)
                    for way, kernel in kernels.items()
                },
                "peft": functools.partial(theirs, **inputs, adapter_names=rows),
                "one_adapter": functools.partial(single, **inputs),
                "base": functools.partial(base, **inputs),
            }
            prefill = dict(
                zip(
                    timed,
                    interleaved_medians(
                        [synced(f, device) for f in timed.values()], repeats=shape.repeats
                    ),
                    strict=True,
                )
            )
            generating = {
                **{
                    way: functools.partial(routed, ours, rows, ours.generate, kernel, **generation)
                    for way, kernel in kernels.items()
                },
                "peft": functools.partial(theirs.generate, **generation, adapter_names=rows),
                "one_adapter": functools.partial(single.generate, **generation),
                "base": functools.partial(base.generate, **generation),
            }
            seconds = (
                interleaved_medians(
                    [synced(f, device) for f in generating.values()], repeats=shape.repeats
                )
                if decode
                else []
            )
        tokens = rows_n * shape.new_tokens
        row: dict[str, Any] = {"targets": targets, "distinct_adapters": count, "rows": rows_n}
        row |= {f"{way}_error": message for way, message in failures.items()}
        row |= {f"{way}_max_logit_difference_from_peft": d for way, d in differences.items()}
        for key, value in prefill.items():
            row[f"prefill_{key}_ms"] = 1000 * value
        for key, value in zip(generating, seconds, strict=False):  # none: prefill only
            row[f"decode_{key}_tokens_per_s"] = tokens / value
        row |= ratios(row)
        print(f"  {targets:10} {count:>2} adapters: {summary(row)}", flush=True)
        del ours, theirs, single
        yield row


def ratios(row: dict[str, Any]) -> dict[str, float]:
    """The row's headline ratios: each kernel's prefill over one adapter's, peft's over ours,
    and (when decoding was measured) one adapter's throughput over ours."""
    one = row["prefill_one_adapter_ms"]
    found = {
        "prefill_ours_over_one_adapter": row["prefill_ours_ms"] / one,
        "prefill_segmented_over_one_adapter": row.get("prefill_ours_segmented_ms", math.nan) / one,
        **{
            f"prefill_{way}_over_one_adapter": row[f"prefill_ours_{way}_ms"] / one
            for way in ("triton", "auto")
            if f"prefill_ours_{way}_ms" in row
        },
        "prefill_peft_over_ours": row["prefill_peft_ms"] / row["prefill_ours_ms"],
    }
    if "decode_ours_tokens_per_s" in row:
        found["decode_one_adapter_over_ours"] = (
            row["decode_one_adapter_tokens_per_s"] / row["decode_ours_tokens_per_s"]
        )
    return found


def summary(row: dict[str, Any]) -> str:
    """One measured row as a line of the log: prefill cost over one adapter's, decode tok/s."""
    ways: dict[str, str] = dict(KERNELS)  # each of ours, by its kernel's name
    one = row["prefill_one_adapter_ms"]
    prefill = ", ".join(
        f"{label} {row[f'prefill_{way}_ms'] / one:.2f}x"
        for way, label in ways.items()
        if f"prefill_{way}_ms" in row
    )
    line = f"prefill over one adapter: {prefill}, peft {row['prefill_peft_ms'] / one:.2f}x"
    if "decode_ours_tokens_per_s" in row:
        speeds = {**ways, "peft": "peft", "one_adapter": "one adapter"}
        line += "; decode tok/s: " + ", ".join(
            f"{label} {row[f'decode_{way}_tokens_per_s']:.0f}"
            for way, label in speeds.items()
            if f"decode_{way}_tokens_per_s" in row
        )
    return line


def synced(function: Any, device: torch.device) -> Any:
    """``function`` followed by a device synchronisation (GPU timings need it)."""

    def call() -> Any:
        out = function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    return call


def main() -> None:
    parser = gpu_benchmark_parser(__doc__.split("\n")[0])
    parser.add_argument(
        "--targets",
        action="append",
        choices=list(TARGETS),
        help="only these targets (repeatable; default: all)",
    )
    parser.add_argument("--counts", type=lambda text: [int(n) for n in text.split(",")],
                        help="only these counts of distinct adapters, e.g. 1,32")  # fmt: skip
    parser.add_argument("--prefill-only", action="store_true",
                        help="no decoding; rows measured before keep theirs")  # fmt: skip
    args = parser.parse_args()
    device, quick = gpu_benchmark_device(args, "~0.9B", cpu_shapes=True)
    cuda = device.type == "cuda"
    full = QUICK if quick else (FULL if cuda else CPU)  # every row, when no option narrows it
    shape = replace(full, counts=tuple(args.counts)) if args.counts else full
    dtype = torch.bfloat16 if cuda else torch.float32
    name = "multi_lora_smoke" if quick else ("multi_lora" if cuda else "multi_lora_cpu")
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    # a run of some rows adds to the rows an earlier run on this device and shape measured
    committed = Path(__file__).parent / "results" / f"{name}.json"  # on a GPU, results go elsewhere
    earlier = earlier_rows(committed, device_name, full, dtype)
    rows: list[dict[str, Any]] = []

    def save(complete: bool) -> Any:  # after every row: a run cut short keeps what it measured
        every = merged_rows(earlier, rows)
        wanted = {(t, c) for t in TARGETS for c in full.counts}
        done = complete and wanted <= {(r["targets"], r["distinct_adapters"]) for r in every}
        return write_result(
            name, {"device": device_name, "quick": quick, "dtype": str(dtype),
                   "shape": asdict(full),
                   "rows": every, "complete": done},
        )  # fmt: skip

    for targets in args.targets or TARGETS:
        for row in measure(shape, device, dtype, targets, decode=not args.prefill_only):
            rows.append(row)
            save(complete=False)
    print(f"wrote {save(complete=True)}")


def merged_rows(earlier: list[Any], rows: list[dict[str, Any]]) -> list[Any]:
    """``rows`` measured now over ``earlier``'s, in table order: a row measured again takes the
    new numbers, and keeps its earlier decode numbers if this run measured none
    (``--prefill-only``)."""
    merged = {(r["targets"], r["distinct_adapters"]): r for r in earlier}
    for row in rows:
        key = (row["targets"], row["distinct_adapters"])
        before = merged.get(key, {})
        kept = {k: v for k, v in before.items() if k.startswith("decode_")}
        merged[key] = row if "decode_ours_tokens_per_s" in row else {**kept, **row}
    return sorted(merged.values(), key=lambda r: (list(TARGETS).index(r["targets"]),
                                                  r["distinct_adapters"]))  # fmt: skip


def earlier_rows(path: Path, device_name: str, shape: Shape, dtype: torch.dtype) -> list[Any]:
    """The rows of the result file ``path`` if they were measured on ``device_name`` with
    ``shape`` and ``dtype``; none otherwise."""
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    same = (old.get("device"), old.get("shape"), old.get("dtype")) == (
        device_name, json.loads(json.dumps(asdict(shape))), str(dtype),
    )  # fmt: skip
    return list(old["rows"]) if same else []


if __name__ == "__main__":
    main()
