"""Quality per method on real SST-2 (English and Portuguese) with all-MiniLM-L6-v2.

    python -m bench.quality_bench [--quick] [--steps N] [--seeds K] [--languages en pt]

Full fine-tuning, BitFit, LoRA (r=8 on q, v), Houlsby and Pfeiffer (reduction 16): the same data
budget (``steps`` x 16 training examples, the same seeded sample for every method) and the same
seeds; each method at the learning rate that suits it (``flows.quickstart.METHOD_RECIPES``).
Reported per language and method: validation accuracy and macro-F1 (mean and standard deviation
over seeds, on the full 872-sentence validation set), trainable parameters (count and share),
the adapter file's size on disk, and training time. The seed papers' claim it checks: PEFT methods
within about one point of full fine-tuning while training under 1-4% of the parameters.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import datasets
import transformers

from bench.common import write_result
from flows.quickstart import minilm_sst2_spec
from flows.train_job import train_from_spec

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
METHODS = ("full", "bitfit", "lora", "houlsby", "pfeiffer")


def run_one(method: str, language: str, seed: int, steps: int, work: Path) -> dict[str, Any]:
    """Train and evaluate one (method, language, seed); the numbers of that run."""
    spec = minilm_sst2_spec(
        method, DATA / language, steps=steps, language=language, seed=seed,
        name=f"bench-{language}-{method}-{seed}",
    )  # fmt: skip
    report = train_from_spec(spec, work / spec.name)
    files = Path(report.output)
    return {
        "method": method,
        "language": language,
        "seed": seed,
        "accuracy": report.metrics["accuracy"],
        "macro_f1": report.metrics["macro_f1"],
        "trainable_params": report.trainable_params,
        "total_params": report.total_params,
        "adapter_file_bytes": (files / "adapter.safetensors").stat().st_size,
        "train_seconds": report.train_seconds,
        "median_step_seconds": report.median_step_seconds,
    }


def majority_share(language: str) -> float:
    """Accuracy of always answering the validation set's most common label."""
    labels = [
        line.rsplit("\t", 1)[-1]
        for line in (DATA / language / "validation.tsv").read_text().splitlines()[1:]
    ]
    return max(labels.count(label) for label in set(labels)) / len(labels)


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread per (language, method), with the gap to full fine-tuning."""
    rows = []
    for language in dict.fromkeys(r["language"] for r in runs):
        groups = {
            m: [r for r in runs if r["language"] == language and r["method"] == m] for m in METHODS
        }
        full = statistics.fmean(r["accuracy"] for r in groups["full"]) if groups["full"] else None
        for method, group in groups.items():
            if not group:
                continue
            accuracies = [r["accuracy"] for r in group]
            mean = statistics.fmean(accuracies)
            first = group[0]
            rows.append(
                {
                    "language": language,
                    "method": method,
                    "seeds": len(group),
                    "accuracy_mean": mean,
                    "accuracy_std": statistics.stdev(accuracies) if len(group) > 1 else 0.0,
                    "macro_f1_mean": statistics.fmean(r["macro_f1"] for r in group),
                    "gap_to_full_points": None if full is None else 100 * (mean - full),
                    "trainable_params": first["trainable_params"],
                    "trainable_percent": 100 * first["trainable_params"] / first["total_params"],
                    "adapter_file_bytes": first["adapter_file_bytes"],
                    "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in group),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 steps, one seed, English only")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--languages", nargs="+", default=None)
    args = parser.parse_args()
    steps = args.steps or (100 if args.quick else 200)
    seeds = args.seeds or (1 if args.quick else 3)
    languages = args.languages or (["en"] if args.quick else ["en", "pt"])
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    work = Path(tempfile.mkdtemp(prefix="quality-"))
    runs = []
    started = time.perf_counter()
    for language in languages:
        for seed in range(seeds):
            for method in METHODS:
                runs.append(run_one(method, language, seed, steps, work))
                r = runs[-1]
                print(
                    f"{language} {method:<8} seed {seed}: accuracy {r['accuracy']:.4f} "
                    f"({r['train_seconds']:.0f} s)", flush=True,
                )  # fmt: skip
    path = write_result(
        "quality",
        {
            "quick": args.quick,
            "steps": steps,
            "batch_size": 16,
            "seeds": seeds,
            "languages": languages,
            "majority_class_accuracy": {lang: majority_share(lang) for lang in languages},
            "wall_seconds": time.perf_counter() - started,
            "summary": summarise(runs),
            "runs": runs,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
