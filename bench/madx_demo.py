"""MAD-X on real data: does a Portuguese language adapter carry an English task adapter over to
Portuguese SST-2?

    python -m bench.madx_demo [--steps N]

The MAD-X recipe (Pfeiffer et al. 2020b), on all-MiniLM-L6-v2, Pfeiffer adapters, the same budget
for every adapter (``--steps`` x 16 examples):

1. language adapters ``en-lang`` and ``pt-lang``: masked-LM on the English / Portuguese sentences;
2. task adapter ``en-sst2-madx``: trained on English SST-2 *stacked on* ``en-lang`` (only the task
   adapter and its head train), so it learns to work on top of a language adapter;
3. references: ``en-sst2`` (trained alone, no language adapter) and ``pt-sst2`` (trained on
   Portuguese: the upper bound zero-shot transfer aims at).

Evaluated on the Portuguese validation set: ``en-sst2`` alone; the MAD-X transfer
``Stack(pt-lang, en-sst2-madx)``; the same task adapter on its training stack
``Stack(en-lang, en-sst2-madx)``; ``pt-sst2``. Whatever the numbers are, they are reported.

all-MiniLM-L6-v2 ships no masked-LM head: transformers initialises the head's transform layer at
random. A random frozen layer would make masked-LM training meaningless, so here the weights the
checkpoint lacked train with each language adapter (and are discarded with it: only the adapter
is used on top of the classifier).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from transformers import AutoModelForMaskedLM

import peft_core as pc
from bench.common import write_result
from flows.data import make_loader, prepare
from flows.evaluation import evaluate
from flows.models import resolve_base_model
from flows.quickstart import MINILM, minilm_sst2_spec
from flows.spec import AdapterSpec, parse_spec
from flows.train_job import load_base_model, load_tokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
BATCH = 16
PFEIFFER = pc.Pfeiffer(reduction_factor=16)


def language_spec(language: str, steps: int) -> AdapterSpec:
    """Masked-LM on the sentences of ``language``'s SST-2 (labels unused)."""
    return parse_spec(
        {
            "name": f"{language}-lang",
            "base_model": MINILM,
            "task": "mlm",
            "language": language,
            "head": {"type": "masked-lm"},
            "method": {"type": "pfeiffer", "reduction_factor": 16},
            "data": {
                "train": str(DATA / language / "train.tsv"),
                "validation": str(DATA / language / "validation.tsv"),
                "label": None,
                "max_train_samples": steps * BATCH,
            },
            "train": {"max_steps": steps, "batch_size": BATCH, "max_length": 64},
            "evaluate": {"metric": "perplexity"},
        }
    )


def train_language_adapter(spec: AdapterSpec, folder: Path) -> float:
    """Train, save, and return the validation perplexity of a language adapter."""
    torch.manual_seed(0)
    tokenizer = load_tokenizer(spec)
    model, info = AutoModelForMaskedLM.from_pretrained(
        resolve_base_model(spec.base_model), output_loading_info=True
    )
    pc.add_adapter(model, spec.name, PFEIFFER)
    missing = set(info["missing_keys"])  # the randomly initialised LM-head weights
    for name, parameter in model.named_parameters():
        if name in missing:
            parameter.requires_grad_(True)
    data = prepare(spec, tokenizer)
    loader = make_loader(data.train, tokenizer, head="masked-lm", batch_size=BATCH, shuffle=True)
    pc.train(model, loader, max_steps=spec.train.max_steps or 1, learning_rate=1e-3)
    validation = make_loader(
        data.validation, tokenizer, head="masked-lm", batch_size=64, shuffle=False
    )
    perplexity = float(evaluate(model, validation, head="masked-lm")["perplexity"])
    pc.save_adapter(model, spec.name, folder / spec.name)
    return perplexity


def train_task_adapter(
    spec: AdapterSpec, folder: Path, *, on_top_of: str | None, work: Path
) -> float:
    """Train a task adapter (optionally stacked on a language adapter); returns its accuracy on
    its own language's validation set, evaluated the way it was trained."""
    torch.manual_seed(0)
    model, tokenizer = load_base_model(spec)
    if on_top_of is not None:
        pc.load_adapter(model, work / on_top_of)
    pc.add_adapter(model, spec.name, PFEIFFER)  # makes only this adapter (and its head) train
    if on_top_of is not None:
        pc.set_active(model, pc.Stack(on_top_of, spec.name))
    data = prepare(spec, tokenizer)
    loader = make_loader(
        data.train, tokenizer, head="classification", batch_size=BATCH, shuffle=True
    )
    pc.train(model, loader, max_steps=spec.train.max_steps or 1, learning_rate=1e-3)
    validation = make_loader(
        data.validation, tokenizer, head="classification", batch_size=64, shuffle=False
    )
    accuracy = float(evaluate(model, validation, head="classification")["accuracy"])
    pc.save_adapter(model, spec.name, folder / spec.name)
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    work = Path(tempfile.mkdtemp(prefix="madx-"))
    steps = args.steps
    perplexity = {}
    for language in ("en", "pt"):
        print(f"training {language}-lang (masked LM) ...", flush=True)
        perplexity[language] = train_language_adapter(language_spec(language, steps), work)
    own_language: dict[str, Any] = {}
    tasks = {
        "en-sst2": (DATA / "en", "en", None),
        "en-sst2-madx": (DATA / "en", "en", "en-lang"),
        "pt-sst2": (DATA / "pt", "pt", None),
    }
    for name, (data, language, on_top_of) in tasks.items():
        print(f"training {name} ...", flush=True)
        spec = minilm_sst2_spec("pfeiffer", data, steps=steps, language=language, name=name)
        own_language[name] = train_task_adapter(spec, work, on_top_of=on_top_of, work=work)

    pt_task = minilm_sst2_spec("pfeiffer", DATA / "pt", steps=steps, language="pt", name="pt-sst2")
    model, tokenizer = load_base_model(pt_task)  # a classifier; Portuguese validation data
    for name in ("en-lang", "pt-lang", "en-sst2", "en-sst2-madx", "pt-sst2"):
        pc.load_adapter(model, work / name)
    loader = make_loader(
        prepare(pt_task, tokenizer).validation, tokenizer, head="classification",
        batch_size=64, shuffle=False,
    )  # fmt: skip
    accuracies = {}
    for label, active in {
        "en-sst2 alone": "en-sst2",
        "Stack(pt-lang, en-sst2-madx) (MAD-X transfer)": pc.Stack("pt-lang", "en-sst2-madx"),
        "Stack(en-lang, en-sst2-madx) (its training stack)": pc.Stack("en-lang", "en-sst2-madx"),
        "pt-sst2 (trained on Portuguese)": "pt-sst2",
    }.items():
        pc.set_active(model, active)
        accuracies[label] = evaluate(model, loader, head="classification")["accuracy"]
        print(f"  {label:<50} accuracy on pt validation: {accuracies[label]:.4f}", flush=True)
    path = write_result(
        "madx",
        {
            "steps": steps,
            "batch_size": BATCH,
            "method": "pfeiffer reduction_factor 16",
            "language_adapter_perplexity": perplexity,
            "task_adapter_accuracy_on_own_language": own_language,
            "accuracy_on_pt_validation": accuracies,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
