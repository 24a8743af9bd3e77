"""Multi-adapter inference on MiniLM: per-row routing against peft, and adapter latency.

    python -m bench.composition_bench [--quick]

1. A mixed batch of 32 rows x 64 tokens (64 rows for 64 adapters) with 1, 4, 16, 32 and 64
   distinct LoRA adapters (r=8, on q, v and on every linear layer): our ``per_row`` (one batched
   pass; one adapter for every row runs as ``set_active`` would) vs peft's ``adapter_names`` (one
   sub-batch per adapter) vs the same batch through one adapter (``set_active``); same weights in
   both libraries, forward passes under ``no_grad``; ``per_row`` is entered for every pass.
2. Latency at batch 1 and 32: the base model vs merged LoRA, unmerged LoRA, Houlsby, Pfeiffer and a
   Stack of two Pfeiffer adapters (ratios to the base model).
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import time
from typing import Any

import peft
import torch
import transformers as T

import peft_core as pc
from bench.common import write_result
from tests.helpers import minilm_path

SEQ = 64


def median_seconds(
    function: Any, *args: Any, repeats: int, warmup: int = 2, **kwargs: Any
) -> float:
    """Median wall time of ``function(*args, **kwargs)`` after ``warmup`` calls."""
    for _ in range(warmup):
        function(*args, **kwargs)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function(*args, **kwargs)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def interleaved_medians(functions: list[Any], *, repeats: int, warmup: int = 2) -> list[float]:
    """Median wall time of each function, timed in turn within every repeat, so that a slow
    stretch of a noisy machine lands on all of them alike and the ratios stay fair."""
    for _ in range(warmup):
        for function in functions:
            function()
    samples: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for function, times in zip(functions, samples, strict=True):
            started = time.perf_counter()
            function()
            times.append(time.perf_counter() - started)
    return [statistics.median(times) for times in samples]


def routed(model: torch.nn.Module, rows: list[str], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One forward pass with a different adapter per row."""
    with pc.per_row(model, rows):
        return model(**batch).logits


def inputs(rows: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 29000, (rows, SEQ), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def base_model() -> torch.nn.Module:
    return T.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2).eval()


# targets: (our roles, peft's target_modules)
TARGETS: dict[str, tuple[tuple[str, ...], list[str] | str]] = {
    "q,v": (("q", "v"), ["query", "value"]),
    # every linear layer of the encoder (not the pooler, which our roles leave out too)
    "all linear": (
        ("q", "k", "v", "o", "ffn_in", "ffn_out"),
        r".*encoder\.layer\.\d+\..*(query|key|value|dense)$",
    ),
}


def mixed_batches(counts: list[int], repeats: int, targets: str) -> list[dict[str, Any]]:
    roles, modules = TARGETS[targets]
    base = base_model()  # one head for both: a new classifier is randomly initialised per load
    ours = copy.deepcopy(base)
    lora = peft.LoraConfig(r=8, lora_alpha=16, target_modules=modules)
    reference = peft.get_peft_model(copy.deepcopy(base), lora, adapter_name="a0")
    names = [f"a{i}" for i in range(max(counts))]
    generator = torch.Generator().manual_seed(1)
    for i, name in enumerate(names):
        if i:
            reference.add_adapter(name, lora)
        pc.add_adapter(ours, name, pc.LoRA(rank=8, alpha=16, targets=roles))
        with torch.no_grad():  # identical non-zero weights in both libraries
            for module_name, module in reference.named_modules():
                if hasattr(module, "lora_A") and name in module.lora_A:
                    target = ours.get_submodule(module_name.removeprefix("base_model.model."))
                    for which in ("lora_A", "lora_B"):
                        shape = getattr(module, which)[name].weight.shape
                        values = torch.randn(shape, generator=generator) * 0.05
                        getattr(module, which)[name].weight.copy_(values)
                        getattr(target.adapters[name], which).weight.copy_(values)
    reference.eval()
    results = []
    for count in counts:
        batch = inputs(max(32, count))
        rows = [names[i % count] for i in range(max(32, count))]
        with torch.no_grad():
            # same adapters, same rows: the two libraries must agree before we time them
            expected = reference(**batch, adapter_names=rows).logits
            torch.testing.assert_close(routed(ours, rows, batch), expected, atol=1e-4, rtol=1e-4)
            pc.set_active(ours, names[0])  # for the single-adapter pass; per_row overrides it
            ours_s, peft_s, single_s = interleaved_medians(
                [
                    functools.partial(routed, ours, rows, batch),
                    functools.partial(reference, **batch, adapter_names=rows),
                    functools.partial(ours, **batch),
                ],
                repeats=repeats,
            )
        results.append(
            {
                "targets": targets,
                "rows": len(rows),
                "distinct_adapters": count,
                "ours_ms": 1000 * ours_s,
                "peft_adapter_names_ms": 1000 * peft_s,
                "single_adapter_ms": 1000 * single_s,
                "speedup_vs_peft": peft_s / ours_s,
                "peft_over_single": peft_s / single_s,
                "ours_over_single": ours_s / single_s,
            }
        )
        times = f"ours {1000 * ours_s:7.1f} ms, peft {1000 * peft_s:7.1f} ms"
        print(f"  {count:>2} adapters: {times}, one adapter {1000 * single_s:7.1f} ms", flush=True)
    return results


def latencies(repeats: int) -> dict[str, dict[str, float]]:
    model = base_model()
    configs: dict[str, pc.MethodConfig] = {
        "lora": pc.LoRA(rank=8, alpha=16, targets=("q", "v")),
        "houlsby": pc.Houlsby(reduction_factor=16),
        "pfeiffer": pc.Pfeiffer(reduction_factor=16),
        "pfeiffer_lang": pc.Pfeiffer(reduction_factor=16),
    }
    for name, config in configs.items():
        pc.add_adapter(model, name, config)
    variants: dict[str, pc.Block | None] = {
        "base": None,
        "lora_unmerged": "lora",
        "lora_merged": "lora",
        "houlsby": "houlsby",
        "pfeiffer": "pfeiffer",
        "stack_of_two_pfeiffer": pc.Stack("pfeiffer_lang", "pfeiffer"),
    }
    results: dict[str, dict[str, float]] = {}
    for rows in (1, 32):
        batch = inputs(rows)
        samples: dict[str, list[float]] = {label: [] for label in variants}
        with torch.no_grad():
            # Interleaved rounds: every variant once per round, so drift in the machine's speed
            # (other load, clocks) spreads over all variants instead of biasing the first.
            for _ in range(2 + repeats * (4 if rows == 1 else 1)):
                for label, active in variants.items():
                    pc.set_active(model, active)
                    if label == "lora_merged":
                        pc.merge(model, "lora")
                    samples[label].append(median_seconds(model, **batch, repeats=1, warmup=0))
                    if label == "lora_merged":
                        pc.unmerge(model, "lora")
        timings = {label: statistics.median(values[2:]) for label, values in samples.items()}
        base = timings["base"]
        results[f"batch_{rows}"] = {f"{k}_ms": 1000 * v for k, v in timings.items()} | {
            f"{k}_over_base": v / base for k, v in timings.items() if k != "base"
        }
        ratios = ", ".join(f"{k} {v / base:.3f}x" for k, v in timings.items() if k != "base")
        print(f"  batch {rows:>2} x {SEQ}: {ratios}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    torch.manual_seed(0)
    repeats = 5 if args.quick else 15
    mixed = []
    for targets in TARGETS:
        print(f"mixed batch of 32 rows, LoRA r=8 on {targets}:", flush=True)
        mixed += mixed_batches([1, 4, 16, 32, 64], repeats, targets)
    print("latency, ratio to the base model:", flush=True)
    latency = latencies(repeats)
    path = write_result(
        "composition",
        {
            "quick": args.quick,
            "sequence_length": SEQ,
            "threads": torch.get_num_threads(),
            "mixed_batch": mixed,
            "latency": latency,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
