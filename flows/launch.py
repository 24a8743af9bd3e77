"""Training in several processes from one command: ``train.processes: N`` in a spec makes
``train_from_spec`` (and so ``adapterops train``, ``build``, ``retrain`` and the scheduled
deployments) start ``torchrun --nproc_per_node N`` itself, instead of asking the user to wrap
the command in torchrun.

Each of the N processes runs this module (``python -m flows.launch``), which calls
``train_from_spec`` under torchrun: DDP or FSDP as ``train.sharding`` says, one GPU per process
(NCCL) or gloo on a CPU. Rank 0 prints each optimiser step as one marked JSON line, which the
launching process turns back into ``on_step`` calls (progress bars, MLflow curves), and each
phase (load, prepare data, train, evaluate, save) as a marked line that becomes an ``on_phase``
call, and the rows of its share of the evaluation after training (``on_scoring``); it writes
its report (and, for a build, each validation row's outcome) for the launcher to return.
Registration and tracking stay in the launching process, as for one process. Bad input found
inside a process (a ``DataError``, a peft_core configuration error) is written beside the
report and raised again in the launching process as a ``DataError``: one line, as with one
process, not torchrun's failure.
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
from pathlib import Path
from typing import Any

from .errors import DataError
from .spec import AdapterSpec

__all__ = [
    "EVALUATION_MARK",
    "PHASE_MARK",
    "SCORING_MARK",
    "STEP_MARK",
    "launched_here",
    "train_in_processes",
]

STEP_MARK = "@adapterops-step "  # the start of a progress line on rank 0's stdout
PHASE_MARK = "@adapterops-phase "  # the start of a line naming rank 0's phase
EVALUATION_MARK = "@adapterops-evaluation "  # rank 0's validation loss (train.eval_every)
SCORING_MARK = "@adapterops-scoring "  # rank 0's rows scored after training
BAD_INPUT_FILE = "bad-input"  # bad-input.<rank> beside the report: a process's DataError
OUTCOMES_FILE = "outcomes.json"  # beside the report: each validation row's outcome
# torchrun, stopped, SIGTERMs its processes and waits for them (30 s by default) before SIGKILL
TORCHRUN_GRACE_SECONDS = 45
# what a process says when a peer it waited on in a collective exited (gloo, NCCL)
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "remote process exited")
StepCallback = Callable[[int, int, float, float], None]
PhaseCallback = Callable[[str], None]
EvaluationCallback = Callable[[int, float], None]  # (steps done, validation loss)
# (what, done, total): flows.evaluation.EvaluationProgress, not imported here (torch loads with it)
ScoringCallback = Callable[[str, int, int], None]


def launched_here(spec: AdapterSpec) -> bool:
    """Whether ``spec`` asks for several processes and this is not one of them yet."""
    return spec.train.processes > 1 and "WORLD_SIZE" not in os.environ


def train_in_processes(
    spec: AdapterSpec,
    output: str | Path,
    *,
    on_step: StepCallback | None = None,
    evaluate_after: bool = True,
    checkpoint_dir: str | Path | None = None,
    fingerprint: str | None = None,
    on_phase: PhaseCallback | None = None,
    on_evaluation: EvaluationCallback | None = None,
    keep_outcomes: bool = False,
    on_scoring: ScoringCallback | None = None,
) -> Any:
    """``train_from_spec`` in ``spec.train.processes`` processes under torchrun; rank 0's
    :class:`~flows.train_job.TrainReport` (with ``keep_outcomes``, each validation row's
    outcome too). ``on_step``, ``on_phase``, ``on_evaluation`` and ``on_scoring`` hear rank
    0's. Raises ``RuntimeError`` with the failing process's last words if torchrun fails."""
    from .evaluation import RowOutcome  # noqa: PLC0415 - torch loads with it
    from .train_job import TrainReport  # noqa: PLC0415

    if on_phase is not None:
        on_phase(f"start {spec.train.processes} processes")
    with tempfile.TemporaryDirectory(prefix="adapterops-launch-") as scratch:
        spec_file, report_file = Path(scratch) / "spec.json", Path(scratch) / "report.json"
        spec_file.write_text(spec.model_dump_json())
        command = [  # torchrun, as a module of this interpreter's torch (no PATH needed)
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(spec.train.processes),
            # its own log folder, else torchrun makes a torchelastic_* one in /tmp and leaves it
            "--log-dir", str(Path(scratch) / "torchrun"),
            "-m", "flows.launch", str(spec_file), str(output), str(report_file),
        ]  # fmt: skip
        if checkpoint_dir is not None:
            command += ["--checkpoints", str(checkpoint_dir)]
        if fingerprint is not None:
            command += ["--fingerprint", fingerprint]
        if not evaluate_after:
            command.append("--no-evaluate")
        if keep_outcomes:
            command.append("--keep-outcomes")
        errors = Path(scratch) / "stderr.log"
        with errors.open("w") as stderr:
            listeners = _Listeners(on_step, on_phase, on_evaluation, on_scoring)
            returncode = _relay(command, stderr, listeners)
        if returncode != 0:
            _raise_bad_input(Path(scratch))
            raise RuntimeError(
                f"training in {spec.train.processes} processes failed (torchrun exit "
                f"{returncode}): {_last_error(errors.read_text(errors='replace'))}"
            )
        report = TrainReport(**json.loads(report_file.read_text()))
        outcomes_file = Path(scratch) / OUTCOMES_FILE
        if keep_outcomes and outcomes_file.exists():
            report.outcomes = [RowOutcome(**o) for o in json.loads(outcomes_file.read_text())]
    return report


@dataclass(frozen=True)
class _Listeners:
    """Who hears rank 0's marked lines (None: nobody)."""

    on_step: StepCallback | None = None
    on_phase: PhaseCallback | None = None
    on_evaluation: EvaluationCallback | None = None
    on_scoring: ScoringCallback | None = None

    def hear(self, line: str) -> None:
        """Turn one of rank 0's lines into a call (other lines are not ours: ignored)."""
        if line.startswith(STEP_MARK) and self.on_step is not None:
            step = json.loads(line.removeprefix(STEP_MARK))
            self.on_step(step["step"], step["total"], step["loss"], step["learning_rate"])
        elif line.startswith(PHASE_MARK) and self.on_phase is not None:
            self.on_phase(line.removeprefix(PHASE_MARK).rstrip("\n"))
        elif line.startswith(EVALUATION_MARK) and self.on_evaluation is not None:
            measured = json.loads(line.removeprefix(EVALUATION_MARK))
            self.on_evaluation(measured["step"], measured["loss"])
        elif line.startswith(SCORING_MARK) and self.on_scoring is not None:
            rows = json.loads(line.removeprefix(SCORING_MARK))
            self.on_scoring(rows["what"], rows["done"], rows["total"])


def _relay(command: list[str], stderr: Any, listeners: _Listeners) -> int:
    """Run ``command``, turning rank 0's marked lines into ``listeners``' calls; its exit
    code."""
    environment = {**os.environ, "PYTHONPATH": _with_this_project(os.environ.get("PYTHONPATH"))}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=environment
    ) as process:
        assert process.stdout is not None
        try:
            for line in process.stdout:
                listeners.hear(line)
        except BaseException:
            # Stopped (SIGTERM, Ctrl-C) or a listener failed: leaving the block waited for
            # torchrun to finish the whole training, or, the process gone, the group trained
            # on, holding its GPUs, until it next printed a step.
            _stop(process)
            raise
        return process.wait()


def _stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM torchrun, which stops its processes; SIGKILL it after
    :data:`TORCHRUN_GRACE_SECONDS`."""
    process.terminate()
    try:
        process.wait(timeout=TORCHRUN_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _with_this_project(path: str | None) -> str:
    """``PYTHONPATH`` with this project's root first, so the processes import this code."""
    root = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join([root, path] if path else [root])


def _raise_bad_input(scratch: Path) -> None:
    """Raise the bad input a process reported (the lowest rank's), if any did."""
    reported = sorted(scratch.glob(f"{BAD_INPUT_FILE}.*"), key=lambda f: int(f.suffix[1:]))
    if reported:
        raise DataError(reported[0].read_text())


def _last_error(text: str) -> str:
    """The line that says what went wrong: the last ``...Error: ...`` line, else the last line.
    A process that failed first takes its peers down with "connection closed" errors of the
    collective they waited in: the failing one's own line is preferred."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [
        line.split("]: ", 1)[-1]
        for line in lines
        if "Error: " in line and not line.startswith("torch.distributed.elastic")
    ]
    causes = [line for line in errors if not any(word in line for word in _PEER_GONE)]
    if causes or errors:
        return (causes or errors)[-1]
    return lines[-1] if lines else "no output"


def _print_step(step: int, total: int, loss: float, learning_rate: float) -> None:
    record = {"step": step, "total": total, "loss": loss, "learning_rate": learning_rate}
    print(STEP_MARK + json.dumps(record), flush=True)


def _print_evaluation(step: int, loss: float) -> None:  # called on rank 0 only
    print(EVALUATION_MARK + json.dumps({"step": step, "loss": loss}), flush=True)


def _print_phase(phase: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # every rank goes through the phases; one tells
        print(PHASE_MARK + phase, flush=True)


def _print_scoring(what: str, done: int, total: int) -> None:
    if os.environ.get("RANK", "0") == "0":  # every rank scores its share; one tells
        print(SCORING_MARK + json.dumps({"what": what, "done": done, "total": total}), flush=True)


def main() -> None:
    """One of the processes: train, and on rank 0 write the report for the launcher."""
    parser = argparse.ArgumentParser(description="one process of train.processes")
    parser.add_argument("spec", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("report", type=Path)
    parser.add_argument("--checkpoints", type=Path, default=None)
    parser.add_argument("--fingerprint", default=None)
    parser.add_argument("--no-evaluate", action="store_true")
    parser.add_argument("--keep-outcomes", action="store_true")
    args = parser.parse_args()
    from peft_core import PeftCoreError  # noqa: PLC0415

    from .train_job import train_from_spec  # noqa: PLC0415

    spec = AdapterSpec.model_validate_json(args.spec.read_text())
    try:
        report = train_from_spec(
            spec, args.output, on_step=_print_step, evaluate_after=not args.no_evaluate,
            checkpoint_dir=args.checkpoints, fingerprint=args.fingerprint,
            on_phase=_print_phase, on_evaluation=_print_evaluation,
            keep_outcomes=args.keep_outcomes, on_scoring=_print_scoring,
        )  # fmt: skip
    except (DataError, PeftCoreError) as exc:  # the launching process says it, in one line
        rank = os.environ.get("RANK", "0")
        (args.report.parent / f"{BAD_INPUT_FILE}.{rank}").write_text(str(exc))
        raise
    if report.output:  # rank 0
        document = {**report.to_dict(), "losses": report.losses}
        document["learning_rates"] = report.learning_rates
        args.report.write_text(json.dumps(document))
        if args.keep_outcomes:
            outcomes = [asdict(outcome) for outcome in report.outcomes]
            (args.report.parent / OUTCOMES_FILE).write_text(json.dumps(outcomes))


if __name__ == "__main__":
    main()
