"""Render the README's results section and its plots from ``bench/results/*.json``.

    python -m bench.report [--readme README.md]

Every figure in the section comes from a result file (nothing is typed in by hand); a benchmark
that has not been run yet is listed as missing. The section lives between the markers
``<!-- results:start -->`` and ``<!-- results:end -->``; plots go to ``bench/results/*.png``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.common import RESULTS

START, END = "<!-- results:start -->", "<!-- results:end -->"
METHOD_LABELS = {
    "full": "full fine-tuning",
    "bitfit": "BitFit",
    "lora": "LoRA r=8 (q, v)",
    "houlsby": "Houlsby (reduction 16)",
    "pfeiffer": "Pfeiffer (reduction 16)",
}


def load(name: str, folder: Path = RESULTS) -> dict[str, Any] | None:
    """``folder/name.json``, or None when that benchmark has not run."""
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def size(n: float) -> str:
    """Bytes as KB / MB."""
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def measured_on(data: dict[str, Any]) -> str:
    """Where and when: the provenance line under each section."""
    machine = data["machine"]
    quick = " (quick mode)" if data.get("quick") else ""
    torch = machine["packages"].get("torch", "?")
    return f"_{machine['date'][:10]}, {machine['cpus']} CPUs, torch {torch}{quick}._"


def quality_section(data: dict[str, Any], plots: Path) -> str:
    rows = []
    for r in data["summary"]:
        gap = r["gap_to_full_points"]
        rows.append(
            [
                r["language"],
                METHOD_LABELS[r["method"]],
                f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f}",
                f"{100 * r['macro_f1_mean']:.1f}",
                "—" if r["method"] == "full" or gap is None else f"{gap:+.1f}",
                f"{r['trainable_params']:,} ({r['trainable_percent']:.2f}%)",
                size(r["adapter_file_bytes"]),
                f"{r['train_seconds_mean']:.0f} s",
            ]
        )
    majority = ", ".join(f"{k} {100 * v:.1f}%" for k, v in data["majority_class_accuracy"].items())
    _quality_plot(data, plots / "quality.png")
    return "\n\n".join(
        [
            f"**Quality on SST-2** (all-MiniLM-L6-v2; {data['steps']} steps x {data['batch_size']} "
            f"examples, the same sample for every method; {data['seeds']} seed(s); full validation "
            f"set, majority class {majority}; `python -m bench.quality_bench`):",
            table(
                [
                    "lang",
                    "method",
                    "accuracy % (mean ± sd)",
                    "macro-F1 %",
                    "vs full (points)",
                    "trainable params",
                    "adapter file",
                    "train time",
                ],
                rows,
            ),
            "![accuracy against trainable parameters](bench/results/quality.png)",
            measured_on(data),
        ]
    )


def _quality_plot(data: dict[str, Any], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    for language, marker in (("en", "o"), ("pt", "s")):
        rows = [r for r in data["summary"] if r["language"] == language]
        if not rows:
            continue
        axis.errorbar(
            [r["trainable_percent"] for r in rows],
            [100 * r["accuracy_mean"] for r in rows],
            yerr=[100 * r["accuracy_std"] for r in rows],
            fmt=marker,
            capsize=3,
            label=f"SST-2 {language}",
        )
        for r in rows:
            axis.annotate(
                r["method"],
                (r["trainable_percent"], 100 * r["accuracy_mean"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
    axis.set_xscale("log")
    axis.set_xlabel("trainable parameters (% of the model, log scale)")
    axis.set_ylabel("validation accuracy (%)")
    axis.set_title("Accuracy against trainable parameters (MiniLM)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def training_cost_section(data: dict[str, Any], plots: Path) -> str:
    parts = []
    for device in data["results"]:
        rows = [
            [
                METHOD_LABELS[m["method"]],
                f"{1000 * m['median_step_seconds']:.0f} ms",
                f"{m['tokens_per_second']:,.0f}",
                f"{m['training_memory_bytes'] / 2**20:,.0f} MiB",
                f"{100 * m['model_flops_utilisation']:.1f}%",
            ]
            for m in device["methods"]
        ]
        versus = device["lora_vs_peft"]
        peak = device["matmul_peak_flops"] / 1e9
        parts += [
            f"**Training cost on {device['device']}** (batch {data['batch_size']} x "
            f"{data['sequence_length']} tokens, AdamW; matmul peak {peak:,.0f} GFLOP/s "
            f"{device['matmul_dtype']}; `python -m bench.training_cost_bench`):",
            table(["method", "step", "tokens/s", "memory while training", "MFU"], rows),
            f"LoRA, ours against HF peft on the same model and batch (interleaved rounds): "
            f"{1000 * versus['ours_median_step_seconds']:.0f} ms vs "
            f"{1000 * versus['peft_median_step_seconds']:.0f} ms per step, ratio ours/peft "
            f"**{versus['ratio_ours_over_peft']:.2f}**.",
        ]
    _training_cost_plot(data, plots / "training_cost.png")
    parts += [
        "![step time and memory per method](bench/results/training_cost.png)",
        measured_on(data),
    ]
    return "\n\n".join(parts)


def _training_cost_plot(data: dict[str, Any], path: Path) -> None:
    device = data["results"][0]
    methods = [m["method"] for m in device["methods"]]
    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    left.bar(methods, [1000 * m["median_step_seconds"] for m in device["methods"]])
    left.set_ylabel("ms per step")
    right.bar(
        methods, [m["training_memory_bytes"] / 2**20 for m in device["methods"]], color="tab:orange"
    )
    right.set_ylabel("MiB above the loaded model")
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=30)
    figure.suptitle(f"Training cost per method ({device['device']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def composition_section(data: dict[str, Any], plots: Path) -> str:
    mixed = data["mixed_batch"]
    rows = [
        [
            m.get("targets", "q,v"),
            f"{m['distinct_adapters']} ({m.get('rows', 32)} rows)",
            f"{m['ours_ms']:.0f} ms",
            f"{m['peft_adapter_names_ms']:.0f} ms",
            f"{m['single_adapter_ms']:.0f} ms",
            f"{m['ours_over_single']:.2f}x",
            f"{m['speedup_vs_peft']:.2f}x",
        ]
        for m in mixed
    ]
    names = ["lora_merged", "lora_unmerged", "pfeiffer", "houlsby", "stack_of_two_pfeiffer"]
    latency = [
        [name.replace("_", " ")]
        + [
            f"{100 * (data['latency'][b][f'{name}_over_base'] - 1):+.1f}%"
            for b in ("batch_1", "batch_32")
        ]
        for name in names
    ]
    figure, axis = plt.subplots(figsize=(5.6, 3.4))
    for targets in dict.fromkeys(m.get("targets", "q,v") for m in mixed):
        part = [m for m in mixed if m.get("targets", "q,v") == targets]
        counts = [m["distinct_adapters"] for m in part]
        for key, label, style in (
            ("ours_over_single", "ours (per_row)", "-"),
            ("peft_over_single", "peft adapter_names", "--"),
        ):
            values = [m.get(key, m["peft_adapter_names_ms"] / m["single_adapter_ms"]) for m in part]
            axis.plot(counts, values, style, marker="o", label=f"{label}, {targets}")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("distinct LoRA adapters in the batch")
    axis.set_ylabel("time / one adapter for all rows")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(plots / "composition.png", dpi=110)
    plt.close(figure)
    return "\n\n".join(
        [
            f"**Multi-adapter inference** (MiniLM, LoRA r=8, 32 rows x "
            f"{data['sequence_length']} tokens, same weights in both libraries, ``per_row`` "
            "entered for every pass; `python -m bench.composition_bench`):",
            table(
                [
                    "targets",
                    "distinct adapters",
                    "ours (per_row)",
                    "peft (adapter_names)",
                    "one adapter (set_active)",
                    "ours / one adapter",
                    "ours vs peft",
                ],
                rows,
            ),
            "![time against distinct adapters](bench/results/composition.png)",
            "Latency over the base model:",
            table(["adapter", "batch 1", "batch 32"], latency),
            measured_on(data),
        ]
    )


def registry_section(data: dict[str, Any], plots: Path) -> str:
    del plots
    queries = data["queries"]
    rows = [
        [backend]
        + [
            f"{q[k]['p50_ms']:.2f} / {q[k]['p99_ms']:.2f} ms"
            for k in ("find", "get_by_alias", "resolve")
        ]
        for backend, q in queries.items()
    ]
    s3 = data["s3"]
    transfers = [
        [
            f"{v['files']} file(s), {v['megabytes']:.0f} MB",
            f"{v['upload_mb_s']['ratio_ours_over_boto3']:.2f}x",
            f"{v['download_mb_s']['ratio_ours_over_boto3']:.2f}x",
        ]
        for v in s3.values()
    ]
    return "\n\n".join(
        [
            f"**Registry at {data['versions']:,} versions** ({data['adapters']:,} adapters; "
            "p50 / p99; "
            "`python -m bench.registry_bench`):",
            table(
                [
                    "backend",
                    "find (base, task, language; by accuracy)",
                    "get name@champion",
                    "resolve",
                ],
                rows,
            ),
            "S3 (SeaweedFS) through our store, as a ratio to plain boto3 on the same files:",
            table(["transfer", "upload ours/boto3", "download ours/boto3"], transfers),
            measured_on(data),
        ]
    )


def gc_section(data: dict[str, Any], plots: Path) -> str:
    del plots
    rows = [
        [
            f"{r['blobs']:,}",
            f"{r['one_request_each_s']:.2f} s",
            f"{r['batched_s']:.3f} s",
            f"{r['speedup']:.1f}x",
        ]
        for r in data["rows"]
    ]
    return "\n\n".join(
        [
            "**gc's deletes on S3** (SeaweedFS on this machine; registrations wait on gc's lock "
            "meanwhile; median of rounds; `python -m bench.gc_bench`):",
            table(
                ["orphaned blobs", "one request each", "batched (1,000 a request)", "faster"], rows
            ),
            *_manifest_reads(data.get("manifests")),
            measured_on(data),
        ]
    )


def _manifest_reads(manifests: dict[str, Any] | None) -> list[str]:
    """The line on gc learning what every version's manifest lists, before it takes the lock."""
    if manifests is None:
        return []
    return [
        f"Before it takes the lock, gc needs the files every version's manifest lists: read from "
        f"SQL (recorded at registration since schema 0008), a dry run over "
        f"{manifests['versions']:,} versions took {manifests['recorded_s']:.2f} s; downloading "
        f"every manifest instead (what gc did before, and does once for older versions) took "
        f"{manifests['eight_at_once_s']:.2f} s 8 at once (**{manifests['speedup']:.1f}x** "
        f"slower), {manifests['one_at_a_time_s']:.2f} s one at a time."
    ]


def move_section(data: dict[str, Any], plots: Path) -> str:
    del plots
    return "\n\n".join(
        [
            f"**Moving a registry** (`adapterops db move`; `python -m bench.move_bench`): "
            f"{data['versions']:,} versions ({data['files']:,} files, {data['megabytes']:.0f} "
            f"MB, {data['events']:,} events) from SQLite and a local folder into PostgreSQL and "
            f"S3 (SeaweedFS on this machine) took **{data['eight_at_once_s']:.1f} s** copying 8 "
            f"files at once, {data['one_at_a_time_s']:.1f} s one at a time "
            f"(**{data['speedup']:.1f}x**); median of {data['rounds']} rounds.",
            measured_on(data),
        ]
    )


def probes_section(data: dict[str, Any], plots: Path) -> str:
    del plots
    rows = [
        [
            "as saved" if not r["load"] else ", ".join(f"{k} {v}" for k, v in r["load"].items()),
            f"{r['shared_s']:.2f} s",
            f"{r['per_version_s']:.2f} s",
            f"{r['speedup']:.1f}x",
        ]
        for r in data["rows"]
    ]
    first = data["rows"][0]
    return "\n\n".join(
        [
            f"**Golden probes of a registry** (`adapterops db verify --probes`; `python -m "
            f"bench.probes_bench`): {first['versions']} LoRA versions on one Llama-shaped base "
            f"({first['base_params'] / 1e6:.0f}M weights, {first['base_megabytes']:.0f} MB in "
            f"float32), every probe passing; the base loaded once and each version beside it "
            f"in turn, against a load of the base per version (what it did before); median of "
            f"{first['rounds']} rounds. A float32 base as saved loads in little time here (its "
            "file in the page cache); one quantised as it loads (QLoRA) is quantised again at "
            "every load, and on a GPU every load copies the weights over too.",
            table(["base loaded", "once", "once per version", "faster"], rows),
            measured_on(data),
        ]
    )


def storage_section(data: dict[str, Any], plots: Path) -> str:
    del plots
    rows = [
        [
            r["model"],
            METHOD_LABELS[r["method"]],
            size(r["adapter_bytes"]),
            f"{r['adapter_share_percent']:.2f}%",
            f"{r['adapters_in_two_full_models']:,}",
        ]
        for r in data["rows"]
    ]
    return "\n\n".join(
        [
            "**Storage** against a fully fine-tuned copy of the model (the seed paper: "
            "125 adapters "
            "in the space of 2 fine-tuned models; `python -m bench.storage_bench`):",
            table(
                [
                    "model",
                    "method",
                    "adapter",
                    "share of the model",
                    "adapters in the space of 2 models",
                ],
                rows,
            ),
            measured_on(data),
        ]
    )


def madx_section(data: dict[str, Any], plots: Path) -> str:
    del plots
    rows = [
        [label, f"{100 * value:.1f}%"] for label, value in data["accuracy_on_pt_validation"].items()
    ]
    perplexity = data.get("language_adapter_perplexity")
    detail = (
        ", ".join(f"{k} {v:.0f}" for k, v in perplexity.items())
        if isinstance(perplexity, dict)
        else f"{perplexity:.0f}"
    )
    return "\n\n".join(
        [
            f"**MAD-X on real data** (Pfeiffer adapters, {data['steps']} steps x "
            f"{data['batch_size']} "
            f"each; accuracy on the Portuguese SST-2 validation set; language adapters' masked-LM "
            f"perplexity {detail}; `python -m bench.madx_demo`):",
            table(["adapter", "accuracy"], rows),
            measured_on(data),
        ]
    )


def startup_section(data: dict[str, Any], plots: Path) -> str:
    del plots
    baseline = data.get("baseline")
    rows = []
    for r in data["rows"]:
        target = f"< {r['target_seconds']:.1f} s" if r.get("target_seconds") else "-"
        before = f"{r['baseline_seconds']:.2f} s ({r['speedup']:.1f}x)" if "speedup" in r else "-"
        rows.append(
            [
                f"`{r['command']}`",
                f"{r['seconds']:.2f} s",
                f"{r['floor']} {r['floor_seconds']:.2f} s ({r['over_floor']:.2f}x)",
                *([before] if baseline else []),
                target,
            ]
        )
    header = ["command", "time", "floor: what it must import (ratio)"]
    header += [f"before (`{baseline}`), speed-up"] if baseline else []
    return "\n\n".join(
        [
            "**CLI start-up** (median of "
            f"{data['repeats']} fresh processes on the embedded defaults; each against a bare "
            "Python that imports what the command cannot avoid, in the same run; "
            "`python -m bench.startup_bench`):",
            table([*header, "target"], rows),
            measured_on(data),
        ]
    )


def predict_section(data: dict[str, Any], plots: Path) -> str:
    """``adapterops predict`` over a file of texts (``bench.predict_bench``): texts per second
    by rows per forward pass, for one version and several."""
    del plots
    rows = [
        [
            str(r["versions"]),
            f"{r['versions'] if r['batch_rows'] == 1 else r['batch_rows']} "
            f"({r['texts_per_batch']} text{'s' if r['texts_per_batch'] > 1 else ''})",
            f"{r['texts_per_second']:.0f}",
            f"{r['speedup_vs_one_text']:.1f}x",
        ]
        for r in data["rows"]
    ]
    return "\n\n".join(
        [
            f"**predict over a file of texts** ({data['texts']} SST-2 sentences through MiniLM "
            f"LoRA versions on {data['device']}, median of {data['repeats']}; "
            "`python -m bench.predict_bench`):",
            table(["versions", "rows a forward pass", "texts/s", "over one text a pass"], rows),
            measured_on(data),
        ]
    )


def scoring_order_section(data: dict[str, Any], plots: Path) -> str:
    """Scoring and predicting rows of like lengths together against file order
    (``bench.scoring_order_bench``)."""
    del plots
    rows = [
        [
            f"`{r['loop']}`",
            str(r["rows"]),
            f"{r['file_order_seconds']:.2f} s",
            f"{r['longest_first_seconds']:.2f} s",
            f"{r['speedup']:.2f}x",
        ]
        for r in data["rows"]
    ]
    return "\n\n".join(
        [
            "**rows of like lengths batched together** (SST-2 validation sentences through a "
            f"MiniLM LoRA on {data['device']}, median of {data['repeats']}, both orders giving "
            "the same answers; `python -m bench.scoring_order_bench`):",
            table(["loop", "rows", "file order", "longest first", "speed-up"], rows),
            measured_on(data),
        ]
    )


def multi_lora_section(data: dict[str, Any], plots: Path) -> str:
    """Prefill and decode of mixed-adapter batches (``bench.multi_lora_bench``), ours with each
    kernel against peft and one adapter for every row, with a plot of the same ratios."""
    shape = data["shape"]

    def cost(row: dict[str, Any], phase: str, way: str) -> float | None:
        """``way``'s cost over one adapter's: time for prefill, inverse throughput for decode."""
        if phase == "prefill":
            value = row.get(f"prefill_{way}_ms")
            return value / row["prefill_one_adapter_ms"] if value else None
        value = row.get(f"decode_{way}_tokens_per_s")
        return row["decode_one_adapter_tokens_per_s"] / value if value else None

    def ratio(row: dict[str, Any], phase: str, way: str) -> str:
        value = cost(row, phase, way)
        return f"{value:.2f}x" if value is not None else "-"

    ways = {"ours": "per_row gather", "ours_segmented": "per_row segmented"}
    for way in ("triton", "auto"):  # measured on a GPU only
        if any(f"prefill_ours_{way}_ms" in r for r in data["rows"]):
            ways[f"ours_{way}"] = f"per_row {way}"
    ways["peft"] = "peft"
    rows = [
        [
            r["targets"],
            f"{r['distinct_adapters']} ({r['rows']} rows)",
            *(ratio(r, "prefill", way) for way in ways),
            *(ratio(r, "decode", way) for way in ways),
        ]
        for r in data["rows"]
    ]
    picture = "multi_lora_cpu.png" if data["device"] == "cpu" else "multi_lora.png"
    # a way keeps its colour in every plot
    colors = {"ours": "C0", "ours_segmented": "C1", "ours_triton": "C2", "ours_auto": "C4"}
    colors["peft"] = "C3"
    figure, axes = plt.subplots(1, 2, figsize=(8.4, 3.4), sharey=True)
    for axis, phase in zip(axes, ("prefill", "decode"), strict=True):
        for targets, style in (("q,v", "--"), ("all linear", "-")):
            part = [r for r in data["rows"] if r["targets"] == targets]
            for way, label in ways.items():
                color = colors[way]
                points = [(r["distinct_adapters"], cost(r, phase, way)) for r in part]
                points = [(x, y) for x, y in points if y is not None]
                if points:
                    axis.plot(*zip(*points, strict=True), style, color=color, marker="o",
                              label=f"{label}, {targets}")  # fmt: skip
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log", base=2)
        axis.set_xlabel("distinct LoRA adapters in the batch")
        axis.set_title(phase, fontsize=9)
    axes[0].set_ylabel("cost / one adapter for every row")
    axes[1].legend(fontsize=6)
    figure.suptitle(f"{data['device']}, {data['dtype']}", fontsize=9)
    figure.tight_layout()
    figure.savefig(plots / picture, dpi=110)
    plt.close(figure)
    return "\n\n".join(
        [
            f"**Mixed-adapter prefill and decode** ({data['device']}, {data['dtype']}; a "
            f"{shape['layers']}-layer, {shape['hidden']}-wide Llama-shaped model, LoRA r=16, "
            f"{shape['prompt']}-token prompts, {shape['new_tokens']} new tokens with the KV "
            "cache; each cost over one adapter for every row, timed interleaved; "
            "`python -m bench.multi_lora_bench`):"
            + ("" if data.get("complete", True) else " Cut short: the rows measured in time."),
            table(
                [
                    "targets",
                    "distinct adapters",
                    *(
                        f"prefill: {label}" if i == 0 else label
                        for i, label in enumerate(ways.values())
                    ),
                    *(
                        f"decode: {label}" if i == 0 else label
                        for i, label in enumerate(ways.values())
                    ),
                ],
                rows,
            ),
            f"![cost over one adapter against distinct adapters](bench/results/{picture})",
            measured_on(data),
        ]
    )


def packing_section(data: dict[str, Any], plots: Path) -> str:
    del plots
    shape = data["shape"]
    rows = [
        [
            r["variant"],
            f"{r['step_ms_median']:.0f} ms",
            f"{r['computed_tokens']:,} for {r['real_tokens']:,}",
            f"{r['tokens_per_second']:,.0f}",
        ]
        for r in data["rows"]
    ]
    return "\n\n".join(
        [
            f"**Packing** (`train.packing`) against padding: LoRA r=16 on every linear layer of a "
            f"{shape['layers']}-layer, {shape['hidden']}-wide Llama-shaped model ({data['dtype']}, "
            f"{data['device']}), {shape['batches']} batches of {shape['batch']} rows of lognormal "
            f"length up to {shape['max_length']} tokens, timed interleaved; "
            f"{data['padding_share']:.0%} of the padded batches is padding; packed is "
            f"**{data['speedup_packed_over_padded']:.2f}x** padded "
            "(`python -m bench.packing_bench`):",
            table(["batches", "median step", "tokens computed", "real tokens/s"], rows),
            measured_on(data),
        ]
    )


def lora_init_section(data: dict[str, Any], plots: Path) -> str:
    """What starting a LoRA from the weights costs (``bench.lora_init_bench``)."""
    del plots
    shape = data["shape"]
    rows = [
        [
            r["variant"],
            f"{r['ours_s']:.3f} s",
            f"{r['ours_s_per_layer']:.3f} s",
            f"{r['ours_over_default']:.1f}x",
            f"{r['peft_s']:.3f} s",
            f"{r['ours_over_peft']:.2f}",
        ]
        for r in data["rows"]
    ]
    return "\n\n".join(
        [
            f"**LoRA init** (`method.init`): adding a rank-{data['rank']} LoRA to every linear "
            f"layer of {shape['layers']} Llama-shaped layers ({shape['hidden']} wide, FFN "
            f"{shape['intermediate']}; {data['dtype']}, {data['device']}), median of "
            f"{data['repeats']}, against peft's `init_lora_weights` on the same model "
            "(`python -m bench.lora_init_bench`):",
            table(
                ["init", "ours", "ours per layer", "ours / default", "peft", "ours / peft"], rows
            ),
            measured_on(data),
        ]
    )


def fsdp_memory_section(data: dict[str, Any], plots: Path) -> str:
    """``plan --processes N`` under FSDP against FSDP2's real allocations
    (``bench.fsdp_memory_bench``)."""
    del plots
    mib = 2**20
    rows = [
        [
            r["case"],
            str(r["processes"]),
            f"{r['estimate_bytes'] / mib:.1f} MiB",
            f"{r['real_low_bytes'] / mib:.1f}-{r['real_high_bytes'] / mib:.1f} MiB",
            f"{r['ratio_low']:.2f}-{r['ratio_high']:.2f}",
            f"{r['shard_bytes'] / mib:.1f} MiB",
            f"{r['gathered_bytes'] / mib:.1f} MiB",
            f"{r['one_process_bytes'] / mib:.1f} MiB",
        ]
        for r in data["rows"]
    ]
    return "\n\n".join(
        [
            "**FSDP memory per process** (`adapterops plan --processes N` with `train.sharding: "
            "fsdp`): the estimate for one of N FSDP2 processes against the peak each of N gloo "
            "processes on this CPU really allocated over two training steps (the profiler's "
            f"record of every allocation and free; {data['repeats']} runs, the range over runs "
            "and ranks: gloo's asynchronous collectives move it), beside the estimate for one "
            "unsharded process (`python -m bench.fsdp_memory_bench`):",
            table(
                [
                    "case",
                    "processes",
                    "estimate",
                    "real",
                    "estimate / real",
                    "its shard",
                    "gathered (most)",
                    "one process",
                ],
                rows,
            ),
            measured_on(data),
        ]
    )


GPU_LIBRARIES = {
    "peft": "peft", "ours": "ours", "ours-nf4": "ours, NF4 base (torchao)",
    "peft-nf4": "peft, NF4 base (bitsandbytes)",
}  # fmt: skip


def gpu_section(data: dict[str, Any], plots: Path) -> str:
    """LoRA fine-tuning of a ~1B Llama-shaped model on a GPU (``bench.gpu_bench``): each
    configuration's speed and memory, then the ratios that decide (ours over peft)."""
    del plots
    shape, rows = data["shape"], data["rows"]
    parameters = next((r["parameters"] for r in rows if "parameters" in r), None)
    table_rows = []
    for r in rows:
        cells = [
            GPU_LIBRARIES.get(r["library"], r["library"]),
            "yes" if r["checkpointing"] else "no",
        ]
        if "error" in r:
            table_rows.append([*cells, f"failed: {r['error']}", "", "", "", ""])
            continue
        memory, estimate = r.get("peak_memory_gib"), r.get("estimated_peak_gib")
        table_rows.append(
            [
                *cells,
                f"{r['step_seconds'] * 1000:.0f} ms",
                f"{r['tokens_per_second']:,.0f}",
                f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-",
                f"{memory:.1f} GiB" if memory else "-",
                f"{estimate:.1f} GiB" if estimate else "-",
            ]
        )
    labels = {
        "ours_over_peft": "ours / peft",
        "nf4_over_bf16": "our QLoRA / our bf16 LoRA",
        "nf4_ours_over_peft": "our QLoRA / peft's QLoRA",
    }
    ratio_rows = [
        [
            label,
            "with checkpointing" if mode == "checkpointing" else "plain",
            *(
                f"{value:.2f}x" if (value := data["ratios"][mode].get(f"{what}_{key}")) else "-"
                for what in ("time", "memory")
            ),
        ]
        for key, label in labels.items()
        for mode in ("plain", "checkpointing")
        if any(f"_{key}" in name for name in data["ratios"][mode])
    ]
    measured = sum("error" not in r for r in rows)
    cut_short = "" if data.get("complete", True) else f" Cut short after {len(rows)} rows."
    size_text = (
        "a"
        if not parameters
        else f"a {parameters / 1e9:.2f}B-parameter"
        if parameters >= 1e9
        else f"a {parameters / 1e6:.1f}M-parameter"
    )
    return "\n\n".join(
        [
            f"**LoRA fine-tuning on {data['device']}** ({size_text} Llama-shaped model, "
            f"{shape['layers']} layers, {shape['hidden']} wide, random weights, bf16 base; "
            f"float32 LoRA r=16 on every linear layer; batch {shape['batch']} x {shape['seq']} "
            f"tokens, AdamW, median of {shape['steps']} steps after the first; MFU = 6 x "
            f"parameters x tokens/s over the bf16 peak; {measured} of {len(rows)} configurations "
            f"measured; `python -m bench.gpu_bench`):{cut_short}",
            table(
                [
                    "library",
                    "checkpointing",
                    "step",
                    "tokens/s",
                    "MFU",
                    "peak memory",
                    "plan's estimate",
                ],
                table_rows,
            ),
            table(["ratio", "training", "time", "peak memory"], ratio_rows),
            measured_on(data),
        ]
    )


def llm_train_section(data: dict[str, Any], plots: Path) -> str:
    """``adapterops train`` on a 1B-class base (``bench.llm_train_check``): did each recipe
    train through the command, and how fast."""
    del plots
    rows = []
    for r in data["rows"]:
        if not r["ok"]:
            rows.append([r["variant"], f"failed (exit {r['exit_code']})", "", "", "", ""])
            continue
        rows.append(
            [
                r["variant"],
                str(r["steps"]),
                f"{r['final_loss']:.3f}",
                f"{r['metrics']['perplexity']:.2f}",
                f"{r['median_step_seconds'] * 1000:.0f} ms",
                ", ".join(r["file_dtypes"]),
            ]
        )
    return "\n\n".join(
        [
            f"**`adapterops train` on {data['device']}** ({data['parameters']:,}-parameter "
            f"Llama-shaped base, {data['shape']['num_hidden_layers']} blocks of "
            f"{data['shape']['hidden_size']}, random weights; the `examples/llm` recipe on chat "
            "data, each run a fresh process; `python -m bench.llm_train_check`):",
            table(
                ["recipe", "steps", "final loss", "perplexity", "median step", "adapter file"],
                rows,
            ),
            measured_on(data),
        ]
    )


def quantized_load_section(data: dict[str, Any], plots: Path) -> str:
    """Loading a base in NF4 two ways (``bench.quantized_load_bench``)."""
    del plots
    rows = [
        [
            r["way"],
            f"{r['seconds']:.1f} s",
            size(r["anonymous_peak_bytes"]),
            size(r["gpu_peak_bytes"]) if r["gpu_peak_bytes"] else "-",
            size(r["model_bytes"]),
        ]
        for r in data["rows"]
    ]
    same = "identical" if data["same_codes"] else "**different**"
    return "\n\n".join(
        [
            f"**Loading a base in NF4** onto {data['device']} (a {data['weights']:,}-weight "
            f"Llama-shaped checkpoint, {size(data['checkpoint_bytes'])} of bf16 safetensors, "
            "each way in a fresh process): quantised while loading takes "
            f"**{data['time_ratio']:.2f}x** the time of loading whole and quantising after, with "
            f"{data['memory_ratio']:.2f}x its heap peak; the NF4 codes are {same} "
            "(`python -m bench.quantized_load_bench`)"
            + (
                ". On a CPU both ways do the same work; they differ on a GPU (quantized_load_cuda):"
                if data["device"] == "cpu"
                else ":"
            ),
            table(["way", "until on the device", "CPU heap peak", "GPU peak", "NF4 model"], rows),
            measured_on(data),
        ]
    )


def offload_section(data: dict[str, Any], plots: Path) -> str:
    """What evaluating with blocks off the device costs (``bench.offload_bench``)."""
    del plots
    shape = data["shape"]
    mib = 2**20
    rows = [
        [
            r["variant"],
            f"{r['offloaded_bytes'] / mib:,.0f} MiB" if r["offloaded_bytes"] else "-",
            f"{r['forward_ms_median']:.1f} ms",
            f"{r['ratio_to_whole']:.2f}x",
        ]
        for r in data["rows"]
    ]
    return "\n\n".join(
        [
            f"**Offloaded evaluation** (`load.offload`): one forward pass of {shape['rows']} x "
            f"{shape['tokens']} tokens through a {shape['layers']}-block, {shape['hidden']}-wide "
            f"Llama-shaped model ({data['dtype']}, {data['device']}) with a LoRA r=16 on every "
            "linear layer, its second half of blocks kept off the device by accelerate, against "
            "the whole model in memory; the same logits every way; medians of "
            f"{shape['rounds']} interleaved rounds (`python -m bench.offload_bench`)"
            + (
                ". On a CPU the blocks on disk are read through the page cache, which keeps them "
                "after the first pass when memory allows; on a GPU every forward copies them to "
                "it (offload_cuda):"
                if data["device"] == "cpu"
                else ":"
            ),
            table(["blocks", "kept off the device", "forward", "over in memory"], rows),
            measured_on(data),
        ]
    )


SECTIONS: list[tuple[str, Callable[[dict[str, Any], Path], str]]] = [
    ("quality", quality_section),
    ("training_cost", training_cost_section),
    ("storage", storage_section),
    ("composition", composition_section),
    ("madx", madx_section),
    ("registry", registry_section),
    ("gc", gc_section),
    ("move", move_section),
    ("probes", probes_section),
    ("startup", startup_section),
    ("predict", predict_section),
    ("scoring_order", scoring_order_section),
    ("gpu", gpu_section),
    ("llm_train", llm_train_section),
    ("packing", packing_section),
    ("packing_cuda", packing_section),
    ("quantized_load", quantized_load_section),
    ("quantized_load_cuda", quantized_load_section),
    ("multi_lora_cpu", multi_lora_section),
    ("multi_lora", multi_lora_section),
    ("lora_init", lora_init_section),
    ("lora_init_cuda", lora_init_section),
    ("fsdp_memory", fsdp_memory_section),
    ("offload", offload_section),
    ("offload_cuda", offload_section),
]


# Results only a CUDA GPU produces (the same benchmarks write other files on a CPU).
NEEDS_CUDA = (
    "gpu", "llm_train", "packing_cuda", "quantized_load_cuda", "multi_lora",
    "lora_init_cuda", "offload_cuda",
)  # fmt: skip


def render(results: Path = RESULTS) -> str:
    """The results section's Markdown (plots are written beside the result files)."""
    parts, missing = [], []
    for name, section in SECTIONS:
        data = load(name, results)
        if data is None:
            missing.append(name)
            continue
        parts.append(section(data, results))
    here = [name for name in missing if name not in NEEDS_CUDA]
    if here:
        parts.append(f"_Not run yet: {', '.join(here)} (`make bench`)._")
    if gpu := [name for name in missing if name in NEEDS_CUDA]:
        parts.append(
            f"_Not run yet on a CUDA GPU: {', '.join(gpu)} (`bash bench/device_run.sh` there)._"
        )
    return "\n\n".join(parts)


def update_readme(readme: Path, results: Path = RESULTS) -> None:
    """Replace the text between the markers with a fresh rendering."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{render(results)}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--readme", type=Path, default=Path(__file__).resolve().parents[1] / "README.md"
    )
    parser.add_argument(
        "--markdown", type=Path, default=None, help="write the section to this file instead"
    )
    args = parser.parse_args()
    if args.markdown is not None:  # beside the plots: link them by file name
        text = render(RESULTS).replace("](bench/results/", "](")
        args.markdown.write_text(text + "\n")
        print(f"wrote {args.markdown}")
        return
    update_readme(args.readme)
    print(f"updated {args.readme}")


if __name__ == "__main__":
    main()
