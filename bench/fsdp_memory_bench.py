"""How close ``adapterops plan --processes N`` is under FSDP: ``pc.estimate_step_memory`` for
one of N FSDP2 processes against what such a process really allocates, counted in N gloo
processes on this CPU.

    python -m bench.fsdp_memory_bench            # Llama and BERT shapes, LoRA and full, 2 and 4
    python -m bench.fsdp_memory_bench --quick    # one small Llama, LoRA, 2 processes (CI)

Each case runs under ``torchrun --nproc_per_node N``: every process shards the model with
``flows.distributed.shard``, trains two ``pc.train`` steps, and counts every allocation and free
the PyTorch profiler records (FSDP2 frees a block's gathered weights by resizing their storage,
which only the allocator sees); its peak on top of its shard of the weights is the "real"
figure. gloo runs the all-gathers and reduce-scatters asynchronously, so the real peak moves
from run to run and rank to rank: every case runs twice and the table gives the range over
runs and ranks. No GPU is needed (nor used: FSDP with several processes needs several GPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import transformers as T
from torch.distributed.tensor import DTensor
from torch.profiler import ProfilerActivity, profile

import peft_core as pc
from bench.common import write_result
from flows.distributed import placement, shard

REPEATS = 2


@dataclass(frozen=True)
class Case:
    """One model, method and step shape."""

    family: str  # "llama" or "bert"
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    method: str  # "lora" or "full"
    rows: int
    length: int
    checkpointing: bool = False


CASES = {
    "llama-512-lora": Case("llama", 512, 1376, 4, 2000, "lora", 2, 64),
    "llama-512-full": Case("llama", 512, 1376, 4, 2000, "full", 2, 64),
    "llama-1024-lora": Case("llama", 1024, 2752, 4, 4000, "lora", 2, 64),
    "llama-1024-full": Case("llama", 1024, 2752, 4, 4000, "full", 2, 64),
    "llama-1024-lora-checkpointing": Case("llama", 1024, 2752, 4, 4000, "lora", 2, 64, True),
    "bert-384-lora": Case("bert", 384, 1536, 6, 30522, "lora", 8, 64),
    "bert-384-full": Case("bert", 384, 1536, 6, 30522, "full", 8, 64),
}
FULL_RUN = [(name, 2) for name in CASES] + [("llama-1024-lora", 4), ("llama-1024-full", 4)]
QUICK_RUN = [("llama-512-lora", 2)]


def config_of(case: Case) -> T.PretrainedConfig:
    """The case's base model configuration (random weights are built from it)."""
    if case.family == "bert":
        return T.BertConfig(
            hidden_size=case.hidden, intermediate_size=case.intermediate,
            num_hidden_layers=case.layers, num_attention_heads=6, vocab_size=case.vocab,
            num_labels=2,
        )  # fmt: skip
    return T.LlamaConfig(
        hidden_size=case.hidden, intermediate_size=case.intermediate,
        num_hidden_layers=case.layers, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=case.vocab, pad_token_id=0,
    )  # fmt: skip


def setting_of(case: Case) -> tuple[pc.MethodConfig, pc.HeadKind, torch.dtype, pc.Precision]:
    """The method, head, base dtype and training precision of a case: Llama in bf16 with a
    causal-LM head, BERT in float32 with a classifier."""
    method: pc.MethodConfig = (
        pc.LoRA(rank=8, targets=("q", "k", "v", "o", "ffn_in", "ffn_out"))
        if case.method == "lora"
        else pc.FullFineTune()
    )
    if case.family == "bert":
        return method, "classification", torch.float32, "fp32"
    return method, "causal-lm", torch.bfloat16, "bf16"


def allocated_peak(run: Callable[[], object]) -> int:
    """The most ``run()`` had allocated at once on top of what existed before, from the
    profiler's record of every allocation and free."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recorded:
        run()
    events = [e for e in recorded.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def measure(names: list[str], out: Path) -> None:
    """In each ``torchrun`` process: shard, train two steps, count; write ``rank<r>.json`` with,
    per case, the bytes held of the weights, the step's peak on top, and the estimate."""
    results = {}
    with placement() as where:
        for name in names:
            case = CASES[name]
            config = config_of(case)
            method, head, dtype, precision = setting_of(case)
            torch.manual_seed(0)
            auto = (
                T.BertForSequenceClassification if head == "classification" else T.LlamaForCausalLM
            )
            model = auto._from_config(config, dtype=dtype)
            pc.add_adapter(model, name, method)
            model = shard(model, where)
            held = sum(
                (p.to_local() if isinstance(p, DTensor) else p).nbytes for p in model.parameters()
            )
            ids = torch.randint(1, case.vocab, (case.rows, case.length))
            labels = torch.zeros(case.rows, dtype=torch.long) if head == "classification" else ids
            batch = {"input_ids": ids, "labels": labels}

            step = allocated_peak(
                partial(
                    pc.train, model, [batch], max_steps=2, learning_rate=1e-3,
                    precision=precision, gradient_checkpointing=case.checkpointing,
                )
            )  # fmt: skip
            estimate = pc.estimate_step_memory(
                config, method, head=head, batch_size=case.rows, sequence_length=case.length,
                dtype=dtype, precision=precision, gradient_checkpointing=case.checkpointing,
                processes=where.world_size,
            )  # fmt: skip
            results[name] = {"held": held, "step": step, "estimate": estimate.to_dict()}
        (out / f"rank{where.rank}.json").write_text(json.dumps(results))


def run_processes(names: list[str], processes: int, out: Path) -> list[dict]:
    """``measure(names)`` in ``processes`` gloo processes; each rank's results."""
    out.mkdir(parents=True, exist_ok=True)
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(root)
    done = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", str(processes),
         "--log-dir", str(out / "torchrun"),
         "-m", "bench.fsdp_memory_bench", "--measure", str(out), *names],
        cwd=root, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"torchrun failed:\n{done.stderr[-6000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]


@dataclass
class Row:
    case: str
    processes: int
    estimate_bytes: int
    real_low_bytes: int
    real_high_bytes: int
    shard_bytes: int
    gathered_bytes: int
    one_process_bytes: int
    ratio_low: float  # estimate / the highest real peak
    ratio_high: float  # estimate / the lowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small case (CI)")
    parser.add_argument("--device", default="cpu", help="ignored: always gloo on the CPU")
    parser.add_argument("--measure", nargs="+", metavar=("OUT", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # inside torchrun
        measure(args.measure[1:], Path(args.measure[0]))
        return
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, processes in QUICK_RUN if args.quick else FULL_RUN:
            case = CASES[name]
            runs = [
                run_processes([name], processes, Path(scratch) / f"{name}-{processes}-{repeat}")
                for repeat in range(REPEATS)
            ]
            reals = [rank[name]["held"] + rank[name]["step"] for run in runs for rank in run]
            estimate = runs[0][0][name]["estimate"]
            method, head, dtype, precision = setting_of(case)
            whole = pc.estimate_step_memory(
                config_of(case), method, head=head, batch_size=case.rows,
                sequence_length=case.length, dtype=dtype, precision=precision,
                gradient_checkpointing=case.checkpointing,
            )  # fmt: skip
            peak = estimate["peak_bytes"]
            row = Row(
                name, processes, peak, min(reals), max(reals), estimate["weights_bytes"],
                estimate["gathered_bytes"], whole.peak_bytes, peak / max(reals), peak / min(reals),
            )  # fmt: skip
            rows.append(row)
            print(
                f"{name:32} {processes} processes: estimate {peak / 2**20:7.1f} MiB, real "
                f"{min(reals) / 2**20:7.1f}-{max(reals) / 2**20:7.1f} MiB "
                f"(estimate / real {row.ratio_low:.2f}-{row.ratio_high:.2f}); one process "
                f"{whole.peak_bytes / 2**20:7.1f} MiB",
                flush=True,
            )
    write_result(
        "fsdp_memory_smoke" if args.quick else "fsdp_memory",
        {
            "repeats": REPEATS,
            "quick": args.quick,
            "cases": {name: asdict(case) for name, case in CASES.items()},
            "rows": [asdict(r) for r in rows],
        },
    )


if __name__ == "__main__":
    main()
