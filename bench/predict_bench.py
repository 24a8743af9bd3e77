"""Throughput of ``adapterops predict`` over a file of texts: one text per forward pass against
batches of rows, for one registered version and for several at once.

    python -m bench.predict_bench [--quick] [--device cpu|cuda]

MiniLM classification on real SST-2 validation sentences (``../shared/data``), LoRA r=8 on q, v
with random non-zero weights. Each way runs ``flows.predict_job.answer_texts``, the loop behind
``adapterops predict``, on the same loaded model: ``batch_size`` 1 (one text per pass, as predict
ran before for several versions) against 32 and 64 rows (each text takes a row per version, so
with 4 versions a 32-row batch holds 8 texts). The ways are timed in turn within each repeat and
must give the same labels before they are timed.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

import peft_core as pc
from bench.common import gpu_benchmark_parser, write_result
from bench.composition_bench import interleaved_medians
from flows.predict_job import answer_texts
from flows.quickstart import minilm_sst2_spec
from flows.train_job import load_base_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "en"
BATCHES = (1, 32, 64)  # rows per forward pass (1: one text's rows per pass)


def sentences(count: int) -> list[str]:
    """The first ``count`` SST-2 validation sentences (their real lengths vary: padding counts)."""
    lines = (DATA / "validation.tsv").read_text().splitlines()[1:]
    return [line.split("\t")[0] for line in lines[:count]]


def add_random_lora(model: Any, name: str, generator: torch.Generator) -> None:
    """A LoRA r=8 on q, v named ``name`` with trained-looking (random non-zero) weights."""
    pc.add_adapter(model, name, pc.LoRA(rank=8, alpha=16, targets=("q", "v")))
    with torch.no_grad():  # the state shares the parameters'
        for value in pc.adapter_state_dict(model, name).values():
            value.copy_(torch.randn(value.shape, generator=generator) * 0.05)


def throughput(
    model: Any, tokenizer: Any, texts: list[str], spec: Any, *, adapters: list[str], repeats: int
) -> list[dict[str, Any]]:
    """Texts per second of each batch size, with as many versions as ``adapters``."""
    specs = [spec] * len(adapters)
    route = adapters if len(adapters) > 1 else None
    ways = [
        functools.partial(
            answer_texts, model, tokenizer, texts, specs, batch_size=rows, adapters=route
        )
        for rows in BATCHES
    ]
    labels = [[[p.label for p in mine] for mine in way()] for way in ways]
    assert all(found == labels[0] for found in labels), "batch sizes disagree"
    seconds = interleaved_medians(ways, repeats=repeats, warmup=1)
    one_at_a_time = seconds[0]
    return [
        {
            "versions": len(adapters),
            "batch_rows": rows,
            "texts_per_batch": 1 if rows == 1 else max(1, rows // len(adapters)),
            "seconds": s,
            "texts_per_second": len(texts) / s,
            "speedup_vs_one_text": one_at_a_time / s,
        }
        for rows, s in zip(BATCHES, seconds, strict=True)
    ]


def main() -> None:
    parser = gpu_benchmark_parser(__doc__.split("\n")[0])
    args = parser.parse_args()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    count, repeats, versions = (24, 1, 2) if args.quick else (256, 5, 4)
    spec = minilm_sst2_spec("lora", DATA, steps=1)
    model, tokenizer = load_base_model(spec, device)
    names = [f"v{i}" for i in range(versions)]
    generator = torch.Generator().manual_seed(0)
    for name in names:
        add_random_lora(model, name, generator)
    pc.set_active(model, names[0])
    texts = sentences(count)
    rows = throughput(model, tokenizer, texts, spec, adapters=names[:1], repeats=repeats)
    rows += throughput(model, tokenizer, texts, spec, adapters=names, repeats=repeats)
    name = "predict_smoke" if args.quick else ("predict_cuda" if cuda else "predict")
    write_result(name, {"texts": count, "repeats": repeats, "device": device.type, "rows": rows})
    for row in rows:
        print(
            f"{row['versions']} version(s), {row['batch_rows']:>2} rows a batch: "
            f"{row['texts_per_second']:7.1f} texts/s ({row['speedup_vs_one_text']:.2f}x one text "
            "a pass)"
        )


if __name__ == "__main__":
    main()
