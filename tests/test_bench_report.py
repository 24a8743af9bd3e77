"""The results section is rendered from result files: every number shown comes from them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import report

ROOT = Path(__file__).resolve().parents[1]
MACHINE = {"date": "2026-01-02T03:04:05+00:00", "cpus": 2, "packages": {"torch": "9.9"}}


def quality() -> dict:
    def row(method: str, accuracy: float, share: float) -> dict:
        return {
            "language": "en", "method": method, "seeds": 3, "accuracy_mean": accuracy,
            "accuracy_std": 0.0123, "macro_f1_mean": accuracy - 0.01,
            "gap_to_full_points": 100 * (accuracy - 0.8111), "trainable_params": 4321,
            "trainable_percent": share, "adapter_file_bytes": 54321, "train_seconds_mean": 77.0,
        }  # fmt: skip

    return {
        "machine": MACHINE, "quick": False, "steps": 123, "batch_size": 16, "seeds": 3,
        "majority_class_accuracy": {"en": 0.5092},
        "summary": [row("full", 0.8111, 100.0), row("lora", 0.7987, 0.33)],
    }  # fmt: skip


@pytest.fixture
def results(tmp_path: Path) -> Path:
    (tmp_path / "quality.json").write_text(json.dumps(quality()))
    names = (
        "composition", "registry", "storage", "startup", "packing", "multi_lora_cpu", "lora_init",
        "fsdp_memory", "offload", "predict", "gc", "move", "probes", "scoring_order",
    )  # fmt: skip
    for name in (*names, "quantized_load"):
        shutil.copy(ROOT / "bench" / "results" / f"{name}.json", tmp_path)
    return tmp_path


def test_tables_carry_the_numbers_of_the_result_files(results: Path):
    text = report.render(results)
    assert (
        "| en | LoRA r=8 (q, v) | 79.9 ± 1.2 | 78.9 | -1.2 | 4,321 (0.33%) | 54 KB | 77 s |" in text
    )
    assert "123 steps x 16" in text and "majority class en 50.9%" in text
    composition = json.loads((results / "composition.json").read_text())
    first = composition["mixed_batch"][0]
    distinct = f"{first['distinct_adapters']} ({first.get('rows', 32)} rows)"
    assert f"| {first.get('targets', 'q,v')} | {distinct} | {first['ours_ms']:.0f} ms |" in text
    assert "_2026-01-02, 2 CPUs, torch 9.9._" in text
    move = json.loads((results / "move.json").read_text())
    assert (
        f"{move['versions']:,} versions ({move['files']:,} files, {move['megabytes']:.0f} MB, "
        f"{move['events']:,} events) from SQLite and a local folder into PostgreSQL and S3"
    ) in text
    packing = json.loads((results / "packing.json").read_text())
    padded = packing["rows"][0]
    assert f"packed is **{packing['speedup_packed_over_padded']:.2f}x** padded" in text
    assert (
        f"| padded | {padded['step_ms_median']:.0f} ms | {padded['computed_tokens']:,} for "
        f"{padded['real_tokens']:,} | {padded['tokens_per_second']:,.0f} |"
    ) in text


def test_the_quantized_load_table_gives_both_ways_and_their_ratios(results: Path):
    text = report.render(results)
    data = json.loads((results / "quantized_load.json").read_text())
    whole = data["rows"][0]
    assert f"takes **{data['time_ratio']:.2f}x** the time" in text
    assert f"with {data['memory_ratio']:.2f}x its heap peak; the NF4 codes are identical" in text
    row = f"| whole, then quantised | {whole['seconds']:.1f} s | "
    assert row + f"{report.size(whole['anonymous_peak_bytes'])} | - |" in text


def test_the_multi_lora_table_gives_each_way_over_one_adapter(results: Path):
    text = report.render(results)
    row = json.loads((results / "multi_lora_cpu.json").read_text())["rows"][-1]
    prefill = row["prefill_ours_ms"] / row["prefill_one_adapter_ms"]
    decode = row["decode_one_adapter_tokens_per_s"] / row["decode_peft_tokens_per_s"]
    line = (
        f"| {row['targets']} | {row['distinct_adapters']} ({row['rows']} rows) | {prefill:.2f}x |"
    )
    assert line in text and f"| {decode:.2f}x |" in text


def test_the_startup_table_compares_each_command_with_its_floor(results: Path):
    text = report.render(results)
    startup = json.loads((results / "startup.json").read_text())
    first = startup["rows"][0]
    row = (
        f"| `{first['command']}` | {first['seconds']:.2f} s | {first['floor']} "
        f"{first['floor_seconds']:.2f} s ({first['over_floor']:.2f}x) |"
    )
    assert row in text


def test_the_lora_init_table_gives_each_init_against_the_default_and_peft(results: Path):
    text = report.render(results)
    pissa = next(r for r in json.loads((results / "lora_init.json").read_text())["rows"]
                 if r["variant"] == "pissa")  # fmt: skip
    assert (
        f"| pissa | {pissa['ours_s']:.3f} s | {pissa['ours_s_per_layer']:.3f} s | "
        f"{pissa['ours_over_default']:.1f}x | {pissa['peft_s']:.3f} s | "
        f"{pissa['ours_over_peft']:.2f} |"
    ) in text


def test_the_fsdp_memory_table_gives_the_estimate_against_the_real_range(results: Path):
    text = report.render(results)
    row = json.loads((results / "fsdp_memory.json").read_text())["rows"][0]
    mib = 2**20
    assert (
        f"| {row['case']} | {row['processes']} | {row['estimate_bytes'] / mib:.1f} MiB | "
        f"{row['real_low_bytes'] / mib:.1f}-{row['real_high_bytes'] / mib:.1f} MiB | "
        f"{row['ratio_low']:.2f}-{row['ratio_high']:.2f} |"
    ) in text


def test_the_offload_table_gives_each_way_against_the_whole_model(results: Path):
    text = report.render(results)
    whole, disk = json.loads((results / "offload.json").read_text())["rows"]
    assert f"| in memory | - | {whole['forward_ms_median']:.1f} ms | 1.00x |" in text
    assert (
        f"| half on disk | {disk['offloaded_bytes'] / 2**20:,.0f} MiB | "
        f"{disk['forward_ms_median']:.1f} ms | {disk['ratio_to_whole']:.2f}x |"
    ) in text


def test_plots_are_written_and_missing_benchmarks_are_named(results: Path):
    text = report.render(results)
    assert (results / "quality.png").stat().st_size > 1000
    assert (results / "composition.png").stat().st_size > 1000
    assert "_Not run yet: training_cost, madx (`make bench`)._" in text
    assert (
        "_Not run yet on a CUDA GPU: gpu, llm_train, packing_cuda, quantized_load_cuda, "
        "multi_lora, lora_init_cuda, offload_cuda (`bash bench/device_run.sh` there)._"
    ) in text


def test_the_readme_section_is_replaced_between_its_markers(results: Path, tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\nbefore\n\n{report.START}\nold text\n{report.END}\n\nafter\n")
    report.update_readme(readme, results)
    text = readme.read_text()
    assert text.startswith("# T\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert "old text" not in text and "79.9 ± 1.2" in text


def test_the_committed_readme_matches_the_committed_results(tmp_path: Path):
    """Results and README are committed together: re-rendering changes nothing."""
    copy = tmp_path / "results"
    shutil.copytree(ROOT / "bench" / "results", copy)
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    report.update_readme(readme, copy)
    assert readme.read_text() == (ROOT / "README.md").read_text()


def gpu_result() -> dict:
    def row(library: str, step: float, memory: float, **extra) -> dict:
        return {"library": library, "checkpointing": False, "step_seconds": step,
                "tokens_per_second": 8192 / step, "peak_memory_gib": memory, "mfu": 0.25,
                "parameters": 1_100_048_384, **extra}  # fmt: skip

    return {
        "machine": MACHINE, "device": "NVIDIA H200", "quick": False, "complete": True,
        "shape": {"hidden": 2048, "layers": 16, "batch": 8, "seq": 1024, "steps": 12},
        "rows": [
            row("peft", 0.5, 40.0), row("ours", 0.45, 36.0, estimated_peak_gib=37.25),
            row("ours-nf4", 0.6, 20.0),
            {"library": "peft-nf4", "checkpointing": False, "error": "OutOfMemoryError: x"},
        ],
        "ratios": {"plain": {"time_ours_over_peft": 0.9, "memory_ours_over_peft": 0.9,
                             "time_nf4_over_bf16": 4 / 3, "memory_nf4_over_bf16": 20 / 36},
                   "checkpointing": {}},
    }  # fmt: skip


def test_the_gpu_section_shows_each_configuration_its_failures_and_the_ratios(tmp_path: Path):
    (tmp_path / "gpu.json").write_text(json.dumps(gpu_result()))
    text = report.render(tmp_path)
    assert "**LoRA fine-tuning on NVIDIA H200** (a 1.10B-parameter Llama-shaped model" in text
    assert "3 of 4 configurations measured" in text and "Cut short" not in text
    assert "| ours | no | 450 ms | 18,204 | 25.0% | 36.0 GiB | 37.2 GiB |" in text
    assert "| peft | no | 500 ms | 16,384 | 25.0% | 40.0 GiB | - |" in text
    assert (
        "| peft, NF4 base (bitsandbytes) | no | failed: OutOfMemoryError: x |  |  |  |  |" in text
    )
    assert "| ours / peft | plain | 0.90x | 0.90x |" in text
    assert "| our QLoRA / our bf16 LoRA | plain | 1.33x | 0.56x |" in text
    assert "our QLoRA / peft's QLoRA" not in text and "with checkpointing" not in text


def test_the_llm_train_section_shows_each_recipe(tmp_path: Path):
    ok = {"variant": "bf16 base, float32 LoRA", "ok": True, "steps": 20, "final_loss": 1.23456,
          "metrics": {"perplexity": 3.4567}, "median_step_seconds": 0.0425,
          "file_dtypes": ["BF16"]}  # fmt: skip
    failed = {"variant": "NF4 base", "ok": False, "exit_code": 2, "error": "x"}
    data = {"machine": MACHINE, "device": "NVIDIA H200", "parameters": 968_884_224,
            "shape": {"num_hidden_layers": 22, "hidden_size": 2048}, "rows": [ok, failed]}  # fmt: skip
    (tmp_path / "llm_train.json").write_text(json.dumps(data))
    text = report.render(tmp_path)
    assert "**`adapterops train` on NVIDIA H200** (968,884,224-parameter" in text
    assert "| bf16 base, float32 LoRA | 20 | 1.235 | 3.46 | 42 ms | BF16 |" in text
    assert "| NF4 base | failed (exit 2) |  |  |  |  |" in text
