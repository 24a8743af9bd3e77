"""Commands that build adapters from specs: ``plan``, ``train``, ``quickstart``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from registry.settings import adapterops_home

if TYPE_CHECKING:
    import peft_core as pc

    from ..inference_placement import InferencePlacement, Memory
    from ..spec import AdapterSpec, PlanSpec

from .common import open_registry, require_spec_file, user_errors
from .options import JsonOption
from .output import console, emit_json, errors, human_bytes, print_columns
from .prefect_server import prefect_answers, prefect_settings_valid, start_temporary_prefect
from .progress import LOADING_FLOW_LIBRARIES, waiting
from .quiet import quiet_libraries

# torch, transformers and datasets load inside the commands that need them (marked noqa below), so
# that registry commands start in a fraction of a second.

__all__ = ["OutOption", "SetOption", "SpecArgument", "app", "checking", "progress"]

app = typer.Typer()

SpecArgument = Annotated[Path, typer.Argument(help="Adapter spec (YAML).", metavar="SPEC")]
OutOption = Annotated[Path | None, typer.Option(help="Folder for the adapter (default out/NAME).")]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override a spec field: --set train.max_steps=50 (repeatable).",
    ),
]


StepOption = Annotated[
    bool,
    typer.Option(
        "--step/--no-step",
        help="Estimate a training step's peak memory too (on fake tensors: seconds, no memory).",
    ),
]


ProcessesOption = Annotated[
    int | None,
    typer.Option(
        "--processes",
        min=1,
        max=1024,  # as the spec's train.processes (flows.spec imports torch: not at start-up)
        help="How many processes will train (default: the spec's train.processes; under "
        "torchrun, --nproc_per_node x nodes): with train.sharding fsdp the step's peak is one "
        "process's (its shard of the weights, what it gathers, its own rows).",
    ),
]


GpusOption = Annotated[
    str | None,
    typer.Option(
        "--gpus",
        metavar="COUNTxGIB",
        help="Where evaluation and predict would put the base on COUNT GPUs with GIB free each "
        "(8x80): one GPU, spread over several, offloaded (load.offload) or refused.",
    ),
]


def _gpus_option(value: str) -> Memory:
    """``8x80`` -> eight GPUs with 80 GiB free each (and room in host memory to offload to)."""
    from ..errors import DataError  # noqa: PLC0415
    from ..inference_placement import Memory  # noqa: PLC0415

    count, _, gib = value.lower().partition("x")
    try:
        gpus, size = int(count), float(gib)
    except ValueError:
        raise DataError(
            f"--gpus {value}: write COUNTxGIB, e.g. 8x80 for eight 80 GiB GPUs"
        ) from None
    if gpus < 1 or size <= 0:
        raise DataError(f"--gpus {value}: at least one GPU with some memory, e.g. 1x24")
    return Memory(gpus=(int(size * 2**30),) * gpus, cpu=4 * gpus * int(size * 2**30))


@app.command()
def plan(
    spec_file: SpecArgument,
    overrides: SetOption = None,
    step: StepOption = True,
    processes: ProcessesOption = None,
    gpus: GpusOption = None,
    as_json: JsonOption = False,
) -> None:
    """Parameters, adapter size and memory, from the base model's config.json only: the base
    and the training state, and the peak of a training step at train.batch_size x
    train.max_length (one process's, with --processes N and train.sharding fsdp); with --gpus,
    where evaluation and predict would put the base. The spec needs only base_model, head and
    method."""
    peak, why_not = None, ""
    with user_errors(as_json):
        require_spec_file(spec_file, overrides=overrides)
        import peft_core as pc  # noqa: PLC0415

        from ..planning import (  # noqa: PLC0415
            check_max_length,
            check_quantized_storage,
            plan_spec,
            plan_step,
        )
        from ..spec import load_plan_spec  # noqa: PLC0415

        machine = _gpus_option(gpus) if gpus is not None else None
        spec = load_plan_spec(spec_file, overrides)
        if step:  # a step longer than the base's positions would fail inside the model
            check_max_length(spec)
        processes = processes or spec.train.processes
        check_quantized_storage(spec, processes)  # what build would refuse, said here too
        result = plan_spec(spec)
        try:
            peak = plan_step(spec, processes) if step else None
        except pc.NotEstimableError as exc:  # the rest of the plan stands
            why_not = str(exc)
        placed = _placement(spec, machine) if machine is not None else None
    if as_json:
        document: dict[str, Any] = result.to_dict()
        if step:
            document["step"] = peak.to_dict() if peak else {"error": why_not}
        if placed is not None:
            document["inference"] = placed if isinstance(placed, dict) else placed.to_dict()
        emit_json(document)
        return
    rows = _plan_rows(spec, result, processes, peak if step else None, why_not, step=step)
    if placed is not None:
        rows.append(
            (f"evaluation on {gpus} GiB", "does not fit", placed["error"])
            if isinstance(placed, dict)
            else (f"evaluation on {gpus} GiB", placed.summary(), placed.describe())
        )
    table = Table(title=f"{spec.name}: {spec.method.type} on {spec.base_model}", show_header=False)
    table.add_column("", overflow="fold")
    table.add_column("", justify="right", overflow="fold")
    table.add_column("", style="dim", overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _placement(
    spec: AdapterSpec | PlanSpec, machine: Memory
) -> InferencePlacement | dict[str, str]:
    """Where evaluation would put the base on ``machine``, or ``{"error": why it cannot}``."""
    from ..errors import DataError  # noqa: PLC0415
    from ..inference_placement import place_for_inference  # noqa: PLC0415

    try:
        return place_for_inference(spec, machine)
    except DataError as exc:  # a plan reports it; build or predict would refuse
        return {"error": str(exc)}


def _plan_rows(
    spec: AdapterSpec | PlanSpec,
    result: pc.Plan,
    processes: int,
    peak: pc.StepMemory | None,
    why_not: str,
    *,
    step: bool,
) -> list[tuple[str, str, str]]:
    """The plan table's rows: one per figure (seven columns do not fit an 80-column CI log)."""
    from ..planning import planned_precision  # noqa: PLC0415

    stored = str(spec.load.torch_dtype()).removeprefix("torch.")
    if spec.load.quantization != "none":
        stored += f", {spec.load.quantization}"
    rows = [
        ("trainable params", f"{result.trainable_params:,}",
         f"{100 * result.trainable_fraction:.3f}% of {result.total_params:,}"),
        ("adapter file", human_bytes(result.adapter_bytes), "as save_adapter writes it"),
        ("base in memory", human_bytes(result.base_bytes), stored),
        ("training state", human_bytes(result.training_bytes),
         "trainable weights, their gradients, AdamW's two moments"),
    ]  # fmt: skip
    if not step:
        return rows
    shape = f"{spec.train.batch_size} rows x {spec.train.max_length} tokens"
    if peak is not None and peak.processes > 1:
        rows.append(("step peak per process", human_bytes(peak.peak_bytes),
                     f"one of {peak.processes} (FSDP), {shape}, {planned_precision(spec)}: "
                     f"its shard of every weight ({human_bytes(peak.weights_bytes)}), whole "
                     f"weights gathered (up to {human_bytes(peak.gathered_bytes)}), "
                     "activations, its shard of the gradients and AdamW (the CUDA context "
                     "comes on top)"))  # fmt: skip
    elif peak is not None:
        each = f" in each of {processes} processes (DDP)" if processes > 1 else ""
        rows.append(("step peak", human_bytes(peak.peak_bytes),
                     f"{shape}{each}, {planned_precision(spec)}: weights, activations, "
                     "gradients, AdamW (fake tensors; the CUDA context comes on top)"))  # fmt: skip
    else:
        rows.append(("step peak", "n/a", why_not))
    return rows


@app.command()
def methods(as_json: JsonOption = False) -> None:
    """The PEFT methods a spec's method.type can name, with what each can do."""
    import dataclasses  # noqa: PLC0415

    import peft_core as pc  # noqa: PLC0415

    rows: list[dict[str, Any]] = [
        {
            "type": kind,
            "summary": method.summary,
            "module": type(method).__module__,
            "fields": [f.name for f in dataclasses.fields(method.config_class) if f.init],
            "mergeable": method.mergeable,
            "merges": method.merge_scope or ("yes" if method.mergeable else "no"),
            "peft_format": method.peft_type or ("any" if method.places_itself else None),
        }
        for kind, method in pc.all_methods().items()
    ]
    if as_json:
        emit_json(rows)
        return
    table = Table(title="methods (spec method.type)")
    for column in ("type", "what it does", "fields", "merges", "PEFT file"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["type"],
            row["summary"],
            ", ".join(row["fields"]) or "-",
            row["merges"],
            row["peft_format"] or "-",
        )
    console.print(table)


@app.command()
def train(
    spec_file: SpecArgument,
    out: OutOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train, evaluate and save one adapter from a spec (no registry yet)."""
    with user_errors(as_json):
        require_spec_file(spec_file, overrides=overrides, out=out, data=True)
        adapterops_home()  # its cache of prepared data: a file there is refused before torch
        with waiting(checking(spec_file), enabled=not as_json):
            from ..spec import load_spec  # noqa: PLC0415

            spec = load_spec(spec_file, overrides)  # before the training modules load
            from ..prepare_job import check_inputs  # noqa: PLC0415

            quiet_libraries()
            # bad input fails here, as in build, before the model is loaded (train evaluates
            # the model it trained: no second base to place)
            check_inputs(spec, evaluates_apart=False)
            from ..train_job import no_phases, train_from_spec  # noqa: PLC0415
        with progress(spec.name, enabled=not as_json) as on_step:
            report = train_from_spec(
                spec, out or Path("out") / spec.name, on_step=on_step,
                on_phase=on_step.phase if on_step else no_phases,
                on_scoring=on_step.rows if on_step else None,
            )  # fmt: skip
    if not report.output:  # a torchrun worker other than rank 0: rank 0 reports
        return
    if as_json:
        emit_json({"ok": True, **report.to_dict()})
        return
    _report_table([report.to_dict()])


@app.command()
def quickstart(
    data: Annotated[
        Path | None,
        typer.Option(
            help="Folder with train.tsv and validation.tsv (sentence, label), e.g. "
            "../shared/data/sst2/en. Default: a small sentiment set the quickstart writes itself."
        ),
    ] = None,
    steps: Annotated[int, typer.Option(help="Training steps per method.", min=1)] = 150,
    as_json: JsonOption = False,
) -> None:
    """Build LoRA, BitFit and Pfeiffer adapters on MiniLM (train, evaluate, register, promote,
    as Prefect flow runs on the embedded defaults) and compare them in one table."""
    with user_errors(as_json):
        prefect_settings_valid()  # importing the flows asks Prefect for them (before a spinner:
        # it holds back what Prefect's import prints, which would hold the spinner's frames)
    with waiting(LOADING_FLOW_LIBRARIES, enabled=not as_json):
        from .. import pipelines  # noqa: PLC0415
        from ..prepare_job import check_inputs  # noqa: PLC0415
        from ..quickstart import quickstart_specs, write_spec_file  # noqa: PLC0415
        from ..quickstart_data import write_sentiment_data  # noqa: PLC0415

        quiet_libraries()
    rows = []
    with user_errors(as_json, one_line_failures=True):
        home = adapterops_home() / "quickstart"
        folder = data if data is not None else write_sentiment_data(home / "data")
        task = "sst2" if data is not None else "sentiment"
        specs = quickstart_specs(folder, steps=steps, task=task)
        check_inputs(specs[0])  # a bad --data, before any flow (the three share base and data)
        prefect_answers()
        start_temporary_prefect(None if as_json else LineProgress("quickstart").phase)
        for spec in specs:
            spec_path = write_spec_file(spec, home / "specs")
            output = Path("out") / spec.name
            with (
                progress(spec.name, enabled=not as_json) as on_step,
                pipelines.reporting_progress(on_step),
            ):
                result = pipelines.build(str(spec_path), output=str(output))
            report = _built_report(result["ref"], output)
            rows.append({**report, **result, "spec": str(spec_path), "data": str(folder)})
    if as_json:
        emit_json({"ok": True, "adapters": rows})
        return
    _report_table(rows)
    _next_steps(rows)


def checking(spec_file: Path) -> str:
    """What a spec command does before its first line: imports torch, reads the base model's
    config and tokenizer, and the data, to refuse bad input before any work."""
    return f"checking {spec_file.name}: its base model, method and data"


@contextmanager
def progress(label: str, *, enabled: bool) -> Iterator[StepProgress | None]:
    """Training progress and the build's phases, for a person: a bar on a terminal, plain lines
    in a log (CI), nothing with ``--json``."""
    if not enabled:
        yield None
        return
    if not sys.stderr.isatty():  # CI logs: a plain line at every tenth of the run, no bar
        yield LineProgress(label)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[steps]}"),  # empty until training starts (was "0/None ... nan")
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=errors, transient=False) as bar:
        yield BarProgress(bar, bar.add_task(label, total=None, steps=""), label)


class StepProgress:
    """Called after every optimiser step; ``phase`` names what the build does now."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __call__(self, step: int, total: int, loss: float, learning_rate: float) -> None:
        raise NotImplementedError

    def phase(self, name: str) -> None:
        """The build moved on to ``name`` (prepare data, train, evaluate, register and promote)."""
        raise NotImplementedError

    def rows(self, what: str, done: int, total: int) -> None:
        """The evaluation after training has ``done`` of ``total`` rows (``what``: "rows
        scored", "answers generated")."""
        raise NotImplementedError

    def begin(self, label: str) -> None:
        """Another build starts (``retrain`` runs several): report under ``label`` from now."""
        self.label = label


class BarProgress(StepProgress):
    """A rich progress bar whose description says the phase."""

    def __init__(self, bar: Progress, task: Any, label: str) -> None:
        super().__init__(label)
        self.bar, self.task, self.used = bar, task, False
        self.counting = ""  # what the bar counts when it counts rows

    def __call__(self, step: int, total: int, loss: float, learning_rate: float) -> None:
        steps = f"{step + 1}/{total} steps  loss {loss:.4f}"
        self.bar.update(self.task, completed=step + 1, total=total, steps=steps)
        self.used = True

    def phase(self, name: str) -> None:
        self.bar.update(self.task, description=f"{self.label}: {name}")
        self.used = True

    def rows(self, what: str, done: int, total: int) -> None:
        # the bar counted steps until now (or the pass before): a new count, a new estimate
        if self.counting != what:
            self.counting = what
            self.bar.reset(self.task, total=total, description=f"{self.label}: evaluate")
        self.bar.update(self.task, completed=done, total=total, steps=f"{done}/{total} {what}")

    def begin(self, label: str) -> None:
        super().begin(label)
        if self.used:  # a bar of its own: the finished builds' bars stay on screen
            self.task = self.bar.add_task(label, total=None, steps="")
        self.bar.update(self.task, description=label)


class LineProgress(StepProgress):
    """Lines a log keeps: ``label: step 30/300 (10%) loss 0.6931``, ``label: evaluate`` and
    ``label: evaluate: 448/872 rows scored (51%)``."""

    def __init__(self, label: str) -> None:
        super().__init__(label)
        self.said: tuple[str, int] = ("", -1)  # the last tenth of rows said, and of what

    def __call__(self, step: int, total: int, loss: float, learning_rate: float) -> None:
        done = step + 1
        if done in (1, total) or done % max(1, total // 10) == 0:
            self._line(f"step {done}/{total} ({100 * done // total}%) loss {loss:.4f}")

    def phase(self, name: str) -> None:
        self._line(name)

    def rows(self, what: str, done: int, total: int) -> None:
        tenth = 10 * done // max(total, 1)  # a line at every tenth of each pass, as for steps
        if (what, tenth) != self.said:
            self.said = (what, tenth)
            self._line(f"evaluate: {done}/{total} {what} ({100 * done // max(total, 1)}%)")

    def _line(self, text: str) -> None:
        errors.print(f"{self.label}: {text}", highlight=False, soft_wrap=True)


def _built_report(ref: str, output: Path) -> dict[str, Any]:
    """The training report of a build (fetched from the registry when this run reused it)."""
    if not (output / "report.json").is_file():
        open_registry().fetch(ref, output)
    report: dict[str, Any] = json.loads((output / "report.json").read_text())
    return report


def _next_steps(rows: list[dict[str, Any]]) -> None:
    from ..tracking import tracking_uri  # noqa: PLC0415

    champion = next((r for r in rows if r.get("alias") == "champion"), rows[0])
    name = champion["name"]
    lines = [
        f"Data: {rows[0]['data']}   Specs: {Path(rows[0]['spec']).parent}   Adapters: out/",
        f"Review runs and versions:  mlflow ui --backend-store-uri {tracking_uri()}",
        "The registry:              adapterops ls   |   adapterops show " + f"{name}@champion",
        f"Try the champion:          adapterops predict {name}@champion "
        '--text "the plot is not dull"',
        f"Score it on a file:        adapterops evaluate {name}@champion --data FILE",
        f"Build your own:            adapterops build {Path(rows[0]['spec'])}",
    ]
    # whole lines, however narrow the terminal: a command folded by us is copied in pieces
    console.print("\n".join(lines), highlight=False, soft_wrap=True)


def _headline(metrics: dict[str, Any]) -> str:
    """The metric a person compares adapters by, short: accuracy, exact match (instruction
    data that generates) or perplexity."""
    if "accuracy" in metrics:
        return f"acc {metrics['accuracy']:.3f}"
    if "exact_match" in metrics:
        return f"exact {metrics['exact_match']:.3f}"
    return f"ppl {metrics['perplexity']:.1f}"


def _report_table(reports: list[dict[str, Any]]) -> None:
    """One row per adapter built, what a person compares methods by leftmost. At 80 columns (a
    CI log, a small terminal) the names fold and the last columns go (every cell was cut to
    fit: "quickst…", "champi…")."""
    versioned = all("ref" in r for r in reports)
    named = "version" if versioned else "adapter"
    rows = {
        named: [r["ref"] if versioned else r["name"] for r in reports],
        "method": [r["method"] for r in reports],
        "trainable": [f"{r['trainable_params']:,}" for r in reports],
        "size": [human_bytes(r["adapter_bytes"]) for r in reports],
        "metric": [_headline(r["metrics"]) for r in reports],
        "time": [f"{r['train_seconds']:.0f} s" for r in reports],
        **({"alias": [r["alias"] or "" for r in reports]} if versioned else {}),
        # an early stop: the steps trained
        "steps": [str(r.get("stopped_at") or r["steps"]) for r in reports],
    }
    numbers = ("trainable", "size", "time", "steps")
    print_columns(rows, keep=2, numbers=numbers, title="Adapters", fold=(named,))


def __getattr__(name: str) -> Any:
    """``plan_spec`` and ``plan_step`` live in ``flows.planning`` now; imported from here too."""
    if name in ("plan_spec", "plan_step"):
        from .. import planning  # noqa: PLC0415 - torch only when a plan is asked for

        return getattr(planning, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
