"""Scoring and predicting with rows of like lengths batched together (longest first) against the
rows in their file's order, which each batch pads to its longest row.

    python -m bench.scoring_order_bench [--quick] [--device cpu|cuda]

MiniLM classification on SST-2's real validation sentences (``../shared/data``: 4 to 55 tokens),
LoRA r=8 on q, v with random non-zero weights, one loaded model. Three loops, each timed both ways
in turn within every repeat, and each must give the same answers both ways before it is timed:

- ``evaluate`` (``flows.train_job.evaluate_model``, behind ``adapterops evaluate`` and every
  build's evaluation): the tokenised split in 64-row batches.
- ``predict`` (``flows.predict_job.answer_texts``, behind ``adapterops predict``): 32 texts a
  batch. In file order means one call per 32 texts, so no batch holds texts from elsewhere.
- ``evaluate (causal LM)``: the same sentences as language-model rows through a 4-layer,
  256-wide Llama-shaped model with random weights (its perplexity, 64-row batches).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import peft_core as pc
from bench.common import gpu_benchmark_parser, write_result
from bench.composition_bench import interleaved_medians
from bench.predict_bench import add_random_lora
from flows.data import make_loader, prepare
from flows.evaluation import evaluate
from flows.predict_job import BATCH_ROWS, Prediction, answer_texts
from flows.quickstart import minilm_sst2_spec
from flows.train_job import evaluate_model, load_base_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "en"


def causal_lm(device: torch.device) -> Any:
    """A small Llama-shaped causal LM with random weights, for MiniLM's token ids."""
    config = LlamaConfig(
        vocab_size=30522, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device).eval()


def agree(first: Any, second: Any) -> bool:
    """Equal, floats to a relative 1e-5 (a sum over other batches rounds otherwise)."""
    if isinstance(first, float):
        return math.isclose(first, second, rel_tol=1e-5)
    if isinstance(first, tuple):
        return all(agree(a, b) for a, b in zip(first, second, strict=True))
    return bool(first == second)


def in_file_order(model: Any, tokenizer: Any, texts: list[str], spec: Any) -> list[Prediction]:
    """``answer_texts`` one batch of texts at a time, as they come in the file."""
    answers: list[Prediction] = []
    for start in range(0, len(texts), BATCH_ROWS):
        chunk = texts[start : start + BATCH_ROWS]
        answers += answer_texts(model, tokenizer, chunk, [spec], batch_size=BATCH_ROWS)[0]
    return answers


def main() -> None:
    parser = gpu_benchmark_parser(__doc__.split("\n")[0])
    args = parser.parse_args()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    rows, repeats = (96, 1) if args.quick else (872, 5)
    spec = minilm_sst2_spec("lora", DATA, steps=1)
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"max_eval_samples": rows})})
    model, tokenizer = load_base_model(spec, device)
    add_random_lora(model, "scored", torch.Generator().manual_seed(0))
    pc.set_active(model, "scored")
    validation = prepare(spec, tokenizer).validation
    texts = [line.split("\t")[0] for line in (DATA / "validation.tsv").read_text().splitlines()]
    texts = texts[1 : rows + 1]

    def classification_in_file_order() -> Any:
        loader = make_loader(
            validation, tokenizer, head="classification", batch_size=64, shuffle=False
        )
        return evaluate(model, loader, head="classification")["confusion_matrix"]

    causal, rows_lm = causal_lm(device), validation.remove_columns("labels")

    def causal_in_file_order() -> tuple[int, float]:
        loader = make_loader(rows_lm, tokenizer, head="causal-lm", batch_size=64, shuffle=False)
        metrics = evaluate(causal, loader, head="causal-lm")
        return metrics["tokens"], metrics["eval_loss"]

    def causal_longest_first() -> tuple[int, float]:
        metrics = evaluate_model(causal, rows_lm, tokenizer, head="causal-lm")
        return metrics["tokens"], metrics["eval_loss"]

    loops: dict[str, tuple[Any, Any]] = {
        "evaluate": (
            classification_in_file_order,
            lambda: evaluate_model(model, validation, tokenizer, head="classification")[
                "confusion_matrix"
            ],
        ),
        "predict": (
            lambda: [p.label for p in in_file_order(model, tokenizer, texts, spec)],
            lambda: [
                p.label
                for p in answer_texts(model, tokenizer, texts, [spec], batch_size=BATCH_ROWS)[0]
            ],
        ),
        "evaluate (causal LM)": (causal_in_file_order, causal_longest_first),
    }
    results = []
    for loop, (file_order, longest_first) in loops.items():
        assert agree(file_order(), longest_first()), f"{loop}: the two orders disagree"
        seconds = interleaved_medians([file_order, longest_first], repeats=repeats, warmup=1)
        results.append(
            {
                "loop": loop,
                "rows": rows,
                "file_order_seconds": seconds[0],
                "longest_first_seconds": seconds[1],
                "speedup": seconds[0] / seconds[1],
            }
        )
        print(
            f"{loop}: {rows} rows in file order {seconds[0]:.2f} s, longest first "
            f"{seconds[1]:.2f} s ({seconds[0] / seconds[1]:.2f}x)"
        )
    name = "scoring_order_smoke" if args.quick else f"scoring_order{'_cuda' if cuda else ''}"
    write_result(name, {"repeats": repeats, "device": device.type, "rows": results})


if __name__ == "__main__":
    main()
