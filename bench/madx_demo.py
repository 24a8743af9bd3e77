"""MAD-X on real data: does a Portuguese language adapter help an English task adapter on
Portuguese SST-2?

    python -m bench.madx_demo [--steps N]

Three adapters on all-MiniLM-L6-v2, same budget each (``--steps`` x 16 examples):
1. ``pt-lang``: a Pfeiffer language adapter trained with masked-LM on the Portuguese sentences;
2. ``en-sst2``: a Pfeiffer task adapter trained on English SST-2;
3. ``pt-sst2``: a Pfeiffer task adapter trained on Portuguese SST-2 (the upper reference).
All evaluated on the Portuguese validation set: ``en-sst2`` alone, ``Stack(pt-lang, en-sst2)``,
and ``pt-sst2``. Whatever the numbers are, they are reported as measured.

Note: all-MiniLM-L6-v2 ships no masked-LM head, so transformers initialises the head's transform
layer at random; as a pre-existing LM head it stays frozen and the language adapter learns around
it. That handicaps the language adapter, and is part of what this measures.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import peft_core as pc
from bench.common import write_result
from flows.data import make_loader, prepare
from flows.evaluation import evaluate
from flows.quickstart import MINILM, minilm_sst2_spec
from flows.spec import AdapterSpec, parse_spec
from flows.train_job import load_base_model, train_from_spec

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def language_spec(steps: int) -> AdapterSpec:
    return parse_spec(
        {
            "name": "pt-lang",
            "base_model": MINILM,
            "task": "mlm",
            "language": "pt",
            "head": {"type": "masked-lm"},
            "method": {"type": "pfeiffer", "reduction_factor": 16},
            "data": {
                "train": str(DATA / "pt" / "train.tsv"),
                "validation": str(DATA / "pt" / "validation.tsv"),
                "label": None,
                "max_train_samples": steps * 16,
            },
            "train": {
                "max_steps": steps,
                "batch_size": 16,
                "learning_rate": 1e-3,
                "max_length": 64,
            },
            "evaluate": {"metric": "perplexity"},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="madx-"))
    pt_task = minilm_sst2_spec(
        "pfeiffer", DATA / "pt", steps=args.steps, language="pt", name="pt-sst2"
    )
    en_task = minilm_sst2_spec("pfeiffer", DATA / "en", steps=args.steps, name="en-sst2")
    reports = {}
    for spec in (language_spec(args.steps), en_task, pt_task):
        print(f"training {spec.name} ...", flush=True)
        reports[spec.name] = train_from_spec(spec, work / spec.name)
    perplexity = reports["pt-lang"].metrics["perplexity"]
    print(f"pt-lang masked-LM perplexity on pt validation: {perplexity:.1f}")

    model, tokenizer = load_base_model(pt_task)  # a classifier; Portuguese validation data
    for name in ("pt-lang", "en-sst2", "pt-sst2"):
        pc.load_adapter(model, work / name)
    loader = make_loader(
        prepare(pt_task, tokenizer).validation,
        tokenizer,
        head="classification",
        batch_size=64,
        shuffle=False,
    )
    accuracies = {}
    for label, active in {
        "en-sst2 alone": "en-sst2",
        "Stack(pt-lang, en-sst2)": pc.Stack("pt-lang", "en-sst2"),
        "pt-sst2 (trained on Portuguese)": "pt-sst2",
    }.items():
        pc.set_active(model, active)
        accuracies[label] = evaluate(model, loader, head="classification")["accuracy"]
        print(f"  {label:<34} accuracy on pt validation: {accuracies[label]:.4f}", flush=True)
    path = write_result(
        "madx",
        {
            "steps": args.steps,
            "batch_size": 16,
            "method": "pfeiffer reduction_factor 16",
            "language_adapter_perplexity": reports["pt-lang"].metrics["perplexity"],
            "english_task_adapter_on_en_validation": reports["en-sst2"].metrics["accuracy"],
            "accuracy_on_pt_validation": accuracies,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
