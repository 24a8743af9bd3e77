"""Commands that put adapters to work: ``deploy`` (scheduled builds on a Prefect server) and
``predict`` (run a registered adapter on text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from registry.compositions import answers_per_member

from ..data_files import check_scoring_sources, check_text_sources
from ..errors import DataError
from ..export_target import checked_export_target, engine_named, vllm_rank_limit
from ..mlflow_links import run_url
from ..prediction_files import Written, check_predictions_path, write_predictions
from .common import (
    EXIT_FAILURE,
    from_stack_env,
    open_registry,
    require_known,
    spec_files,
    user_errors,
)
from .options import (
    BatchSizeOption,
    JsonOption,
    LabelColumnOption,
    MaxNewTokensOption,
    PredictDataOption,
    PredictionsOutOption,
    ReplaceOption,
    SkipProbeOption,
    TextColumnOption,
    TextOption,
    input_texts,
)
from .output import console, emit_json, errors, labelled, print_columns, warn
from .prefect_server import prefect_settings_valid
from .progress import LOADING_LIBRARIES, counting_with_steps, waiting
from .quiet import quiet_libraries

__all__ = ["app"]

app = typer.Typer()


@app.command()
def deploy(
    spec_paths: Annotated[
        list[Path], typer.Argument(help="Spec files or folders of them.", metavar="SPEC...")
    ],
    pool: Annotated[str, typer.Option(help="Prefect work pool (process type).")] = "adapterops",
    sync_every: Annotated[
        int,
        typer.Option(
            help="Seconds between runs of sync/aliases, which takes alias moves made in the "
            "MLflow UI into the registry (0: no sync deployment).",
            min=0,
        ),
    ] = 300,  # deploy_job.SYNC_EVERY (not imported here: it loads torch)
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Update a deployment of the same name even where it runs on another work "
            "pool or builds another spec file (refused without it: another registry's?).",
        ),
    ] = False,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Delete this registry's deployments on POOL that these specs no longer name "
            "(a spec removed from the repository; with --sync-every 0, the sync deployment).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Create a Prefect deployment of the build flow per spec, on the cron of its ``schedule``,
    and one of the sync flow on an interval; a worker on POOL runs them (``prefect worker start
    --pool POOL``), each one run at a time (a build's next run waits for it), each for the
    registry this environment names. One of the same name on another pool, or building another
    spec file, is refused unless --replace; so is a pool running another registry's
    deployments (give each registry a pool of its own)."""
    with user_errors(as_json, one_line_failures=True):
        files = spec_files(spec_paths, nothing="nothing was deployed")
        prefect_settings_valid()
        from ..deploy_job import (  # noqa: PLC0415
            deploy_specs,
            pool_status,
            pool_warning,
            prune_deployments,
        )
        from ..unresponsive_runs import (  # noqa: PLC0415
            AUTOMATION_NAME,
            SILENT_SECONDS,
            ensure_heartbeat_automation,
        )

        deployed = deploy_specs(files, pool=pool, sync_every=sync_every, replace=replace)
        removed = prune_deployments(pool, {d.name for d in deployed}) if prune else []
        status = pool_status(pool)
        # runs whose machine was lost are set Crashed once their heartbeats stop
        change = ensure_heartbeat_automation()
        automation = {
            "name": AUTOMATION_NAME,
            "created": change == "created",
            "updated": change == "updated",
        }
    idle = pool_warning(pool, status)
    if idle:
        warn(idle)
    if as_json:
        emit_json(
            {
                "ok": True,
                "deployments": [d.to_dict() for d in deployed],
                "removed": removed,
                "pool": {"name": pool, "status": status},
                "heartbeat_automation": automation,
            }
        )
        return
    table = Table(title=f"Deployments on work pool {pool}")
    for column in ("deployment", "schedule", "spec"):
        table.add_column(column, overflow="fold")
    for d in deployed:
        table.add_row(d.name, d.schedule, d.spec or "(all adapters and compositions)")
    console.print(table)
    if removed:
        console.print(
            f"Removed (no longer among these specs): {', '.join(removed)}", soft_wrap=True
        )
    if change != "unchanged":
        console.print(
            f"{change.capitalize()} the automation {AUTOMATION_NAME!r}: a run of these flows "
            "whose heartbeats "
            f"stop for {SILENT_SECONDS} s (its machine lost) is set Crashed",
            soft_wrap=True,
            highlight=False,
        )
    # `prefect` reads PREFECT_API_URL: from the stack's configuration, a fresh shell needs it
    stack_env = 'eval "$(adapterops stack env)" && ' if from_stack_env("PREFECT_API_URL") else ""
    console.print(
        f"Run one now: {stack_env}prefect deployment run '{deployed[0].name}'",
        soft_wrap=True,
        highlight=False,
    )


@app.command()
def predict(
    refs: Annotated[
        list[str],
        typer.Argument(
            help="name, name@VERSION or name@ALIAS (several: shared batches)", metavar="REF"
        ),
    ],
    text: TextOption = None,
    data: PredictDataOption = None,
    text_column: TextColumnOption = None,
    out: PredictionsOutOption = None,
    force: ReplaceOption = False,
    skip_probe: SkipProbeOption = False,
    batch_size: BatchSizeOption = 32,
    max_new_tokens: MaxNewTokensOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run registered adapters on text: label and probabilities (classification), top tokens
    for the mask (masked LM) or a continuation (causal LM). Several REFs over one base model
    share each batch, each row through its own adapter; over several base models, each base
    loads once for its REFs."""

    run_predict(
        refs, text=text, data=data, text_column=text_column, out=out, force=force,
        skip_probe=skip_probe, batch_size=batch_size, max_new_tokens=max_new_tokens,
        as_json=as_json,
    )  # fmt: skip


def run_predict(
    refs: list[str],
    *,
    composition: bool = False,
    text: list[str] | None,
    data: Path | None,
    text_column: str | None,
    out: Path | None,
    force: bool,
    skip_probe: bool,
    batch_size: int,
    max_new_tokens: int | None = None,
    as_json: bool,
) -> None:
    """``predict REF...`` and ``composition predict REF`` (``composition``): the arguments
    checked before torch loads, the texts answered in windows, then shown or written to
    ``out``. A composition answers as itself, or once per member where it is Parallel."""
    with user_errors(as_json):
        check_out(out, force)
        # a slip in the arguments: before torch, and before standard input is read (`--text -
        # --data FILE` at a terminal waited for Ctrl-D, then said "not both")
        check_text_sources(text or [], data, text_column)
        registry = open_registry()
        require_known(registry, refs, compositions=composition)
        texts = input_texts(text)  # a name that is not there is said before this waits, too
        with waiting(f"predict: {LOADING_LIBRARIES}", enabled=not as_json):
            from .. import predict_job as job  # noqa: PLC0415 - torch

            quiet_libraries()
        # a composition: one version from here on, however its aliases move
        pinned = registry.composition(refs[0]) if composition else None
        versions = list(pinned.members) if pinned is not None else refs
        # a composition answering as one model (not once per member, as Parallel does)
        itself = (
            pinned if pinned is not None and not answers_per_member(pinned.definition) else None
        )
        texts, pairs = job.gather_inputs(
            registry, pinned.ref if pinned is not None else refs[0], texts, data,
            composition=composition, text_column=text_column,
        )  # fmt: skip
        with counting_with_steps("predict", enabled=not as_json) as (say, on_progress):
            options: dict[str, Any] = {
                "pairs": pairs, "skip_probe": skip_probe, "batch_size": batch_size,
                "max_new_tokens": max_new_tokens, "on_progress": on_progress, "on_phase": say,
            }  # fmt: skip
            if out is not None:
                stream = (
                    job.composition_stream(registry, itself.ref, texts, **options) if itself
                    else job.predict_stream(registry, versions, texts, **options)
                )  # fmt: skip
                written = write_predictions(out, stream, with_pairs=pairs is not None)
            elif itself is not None:
                results = [job.predict_composition(registry, itself.ref, texts, **options)]
            else:
                results = job.predict_many(registry, versions, texts, **options)
    if out is not None:
        show_written(written, len(texts), as_json)
    else:
        show_predictions(results, as_json)


def check_out(out: Path | None, force: bool) -> None:
    """predict's ``--out`` file, checked before the registry opens (``--force`` alone is a
    slip: it replaces nothing without ``--out``)."""
    refuse_force_without_out(out, force)
    if out is not None:
        check_predictions_path(out, replace=force)


def refuse_force_without_out(out: Path | None, force: bool) -> None:
    """``--force`` alone is a slip: it replaces the ``--out`` file, and there is none."""
    if force and out is None:
        raise DataError("--force replaces the --out file: give --out FILE too")


def show_written(written: Written, texts: int, as_json: bool) -> None:
    """Where the answers went: JSON, or one line."""
    if as_json:
        emit_json({"ok": True, "texts": texts, **written.to_dict()})
        return
    answered = f"{texts} text{'s' if texts != 1 else ''}"
    by = ", ".join(written.refs)
    console.print(
        f"Wrote {written.lines} answers ({answered}, by {by}) to {written.path}",
        highlight=False,
        soft_wrap=True,
    )


def show_predictions(results: list[tuple[str, list[Any]]], as_json: bool) -> None:
    """Each ref's prediction for each text: one JSON document, or a table (a column per ref)."""
    if as_json:
        documents = [
            {"ref": ref, "predictions": [p.to_dict() for p in predictions]}
            for ref, predictions in results
        ]
        one = documents[0] if len(documents) == 1 else {"results": documents}
        emit_json({"ok": True, **one})
        return
    table = Table(title=", ".join(ref for ref, _ in results))
    table.add_column("text", overflow="fold")
    for ref, _ in results:
        # folded, not cut: "quickstart-sentiment-e…" and "…-en…" could not be told apart
        table.add_column(ref if len(results) > 1 else "prediction", overflow="fold")
    for row, first in enumerate(results[0][1]):
        shown = f"{first.text} / {first.pair}" if first.pair else first.text
        table.add_row(shown, *(_answer(predictions[row]) for _, predictions in results))
    console.print(table)


def _answer(prediction: Any) -> str:
    if prediction.label is not None:
        name = prediction.label_name or f"label {prediction.label}"
        return f"{name} ({max(prediction.probabilities):.1%})"
    return ", ".join(prediction.tokens) or prediction.continuation


DataOption = Annotated[
    Path | None,
    typer.Option(
        metavar="FILE",
        help="A TSV/CSV/JSON/Parquet file with the columns the spec reads "
        "(default: the validation split it was built with).",
    ),
]
MaxSamplesOption = Annotated[
    int | None, typer.Option(min=1, help="Score a seeded subset of this many rows.")
]
AnswersOutOption = Annotated[
    Path | None,
    typer.Option(
        "--out",
        metavar="FILE",
        help="Write each row scored with its answer (label, probability and whether it is "
        "right; a language model's loss; a generated answer) to a .jsonl, .csv or .tsv file, "
        "also kept with the MLflow run: the rows it gets wrong, to read.",
    ),
]


@app.command()
def evaluate(
    refs: Annotated[
        list[str],
        typer.Argument(
            help="name, name@VERSION or name@ALIAS; several are scored on the same data and "
            "compared in one table",
            metavar="REF",
        ),
    ],
    data: DataOption = None,
    text_column: TextColumnOption = None,
    label_column: LabelColumnOption = None,
    max_samples: MaxSamplesOption = None,
    out: AnswersOutOption = None,
    force: ReplaceOption = False,
    skip_probe: SkipProbeOption = False,
    as_json: JsonOption = False,
) -> None:
    """Score a registered version on a data file, or on the validation split it was built
    with: accuracy and macro-F1 (classification), perplexity (language models), exact match
    (instructions). Recorded as an MLflow run (with the --out file of each row's answer).
    Several versions are scored one after another on the same file (or each on its own
    validation split) and compared in one table; those on one base model load it once."""

    with user_errors(as_json):
        if len(refs) > 1 and out is not None:
            raise DataError(
                f"--out writes one version's answers, and {len(refs)} are given: evaluate each "
                "with its own --out FILE"
            )
        check_evaluation_arguments(data, text_column, label_column, out, force)
        registry = open_registry()
        require_known(registry, refs)
        options = {"data": data, "max_samples": max_samples, "skip_probe": skip_probe,
                   "text_column": text_column, "label_column": label_column}  # fmt: skip
        if len(refs) > 1:
            results = evaluate_several(registry, refs, as_json=as_json, **options)
        else:
            result = evaluate_with_steps(
                registry, refs[0], composition=False, as_json=as_json, out=out, **options
            )
    if len(refs) > 1:
        show_evaluations(results, as_json)
        return
    show_evaluation(result, as_json)


def check_evaluation_arguments(
    data: Path | None,
    text_column: str | None,
    label_column: str | None,
    out: Path | None,
    force: bool,
) -> None:
    """evaluate's data and ``--out`` file, before torch loads (``--force`` alone is a slip)."""
    refuse_force_without_out(out, force)
    check_scoring_sources(data, text_column, label_column, out=out, replace=force)


def evaluate_with_steps(
    registry: Any, ref: str, *, composition: bool, as_json: bool, **options: Any
) -> Any:
    """``evaluate_composition`` or ``evaluate_version`` of ``ref`` with ``options``; at a
    terminal a spinner says each step (loading torch, the data, the model, scoring, MLflow)."""
    with waiting(f"evaluate {ref}: {LOADING_LIBRARIES}", enabled=not as_json) as say:
        from .. import evaluate_job  # noqa: PLC0415 - torch

        quiet_libraries()
        say(f"evaluate {ref}: read the data")
        score = evaluate_job.evaluate_composition if composition else evaluate_job.evaluate_version
        return score(registry, ref, **options, on_phase=lambda step: say(f"evaluate {ref}: {step}"))


def evaluate_several(registry: Any, refs: list[str], *, as_json: bool, **options: Any) -> Any:
    """``evaluate_versions`` of ``refs`` with ``options``; at a terminal a spinner says each
    step of each version."""
    what = f"evaluate {len(refs)} versions"
    with waiting(f"{what}: {LOADING_LIBRARIES}", enabled=not as_json) as say:
        from .. import evaluate_job  # noqa: PLC0415 - torch

        quiet_libraries()
        say(f"{what}: read the data")
        return evaluate_job.evaluate_versions(
            registry, refs, **options, on_phase=lambda step: say(f"{what}: {step}")
        )


def show_evaluations(results: list[Any], as_json: bool) -> None:
    """Several evaluations: JSON, or one table of their metrics, a row per version, with the
    MLflow run of each. A version that could not be scored is a row saying so and an
    ``error:`` line with why; the command then exits 1 (the others' runs are recorded)."""
    failed = [result for result in results if result.failed]
    if as_json:
        evaluations = [result.to_dict() for result in results]
        emit_json({"ok": not failed, "evaluations": evaluations})
    else:
        _evaluations_table(results)
    for result in failed:
        errors.print(labelled("error:", "bold red", result.failed), highlight=False,
                     soft_wrap=True)  # fmt: skip
    if failed:
        raise typer.Exit(EXIT_FAILURE)


def _evaluations_table(results: list[Any]) -> None:
    sources = {result.data for result in results}
    on = sources.pop() if len(sources) == 1 else "each on its own validation split"
    failed = sum(1 for result in results if result.failed)
    scored = f": {failed} could not be scored" if failed else ""
    console.print(f"{len(results)} versions on {on}{scored}", highlight=False, soft_wrap=True)
    metrics = list(
        dict.fromkeys(
            metric
            for result in results
            for metric, value in result.metrics.items()
            if isinstance(value, int | float)
        )
    )
    rows = {"version": [result.ref for result in results]}
    for metric in metrics:
        rows[metric] = [
            "-" if result.failed else _metric_cell(result.metrics.get(metric)) for result in results
        ]
    rows["MLflow run"] = [
        "not scored" if result.failed else result.mlflow_run_id for result in results
    ]
    # at 80 columns (a CI log) the run ids go first, then the last metrics: never the versions
    print_columns(rows, keep=2, numbers=metrics)
    for result in results:  # with an MLflow server, where a reviewer opens each run
        if page := run_url(result.mlflow_run_id):
            console.print(f"review {result.ref}: {page}", style="dim", soft_wrap=True,
                          highlight=False)  # fmt: skip


def _metric_cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def show_evaluation(result: Any, as_json: bool) -> None:
    """An evaluation's metrics: JSON, or a table with the confusion matrix under it."""
    if as_json:
        emit_json({"ok": True, **result.to_dict()})
        return
    # a line of its own: as the table's title it wrapped a file's path to the table's width
    console.print(f"{result.ref} on {result.data}", highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("metric", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    for metric, value in result.metrics.items():
        if isinstance(value, float):
            table.add_row(metric, f"{value:.4f}")
        elif isinstance(value, int):
            table.add_row(metric, str(value))
    console.print(table)
    if matrix := result.metrics.get("confusion_matrix"):
        console.print(confusion_table(matrix, result.label_names))
    if result.out:
        wrong = "" if result.missed is None else f": {result.missed} answered wrong"
        console.print(f"each row's answer in {result.out}{wrong}", highlight=False, soft_wrap=True)
    console.print(f"recorded as MLflow run {result.mlflow_run_id}")
    page = run_url(result.mlflow_run_id)
    if page:
        console.print(f"review: {page}", style="dim", soft_wrap=True, highlight=False)


def confusion_table(matrix: list[list[int]], label_names: list[str]) -> Table:
    """The confusion matrix with its labels on both sides (the spec's names, else numbers):
    bare rows of counts left a reader to remember which label came first."""
    names = label_names if len(label_names) == len(matrix) else [str(i) for i in range(len(matrix))]
    table = Table(title="confusion matrix")
    table.add_column("true \\ predicted", overflow="fold")
    for name in names:
        table.add_column(name, justify="right", overflow="fold")
    for name, row in zip(names, matrix, strict=True):
        table.add_row(name, *(str(count) for count in row))
    return table


EngineOption = Annotated[
    str,
    typer.Option(
        "--for",
        metavar="ENGINE",
        help="peft, vllm, lorax, merged (a full checkpoint) or adapterhub.",
        callback=engine_named,
    ),
]
OutFolderOption = Annotated[Path, typer.Option(help="A new (or empty) folder to write.")]
MaxLoraRankOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="vLLM's --max-lora-rank on the server that will load it (default: 16, vLLM's).",
    ),
]
ForceOption = Annotated[
    bool, typer.Option("--force", help="Write even what the engine would refuse or ignore.")
]


@app.command()
def export(
    ref: Annotated[str, typer.Argument(help="name, name@VERSION or name@ALIAS", metavar="REF")],
    engine: EngineOption,
    out: OutFolderOption,
    max_lora_rank: MaxLoraRankOption = None,
    force: ForceOption = False,
    as_json: JsonOption = False,
) -> None:
    """Write a version for a serving engine, after listing what that engine would refuse or
    silently ignore (nothing is written then, unless --force)."""
    run_export(ref, engine, out, max_lora_rank, force=force, as_json=as_json)


def run_export(
    ref: str,
    engine: str,
    out: Path,
    max_lora_rank: int | None,
    *,
    force: bool,
    as_json: bool,
    composition: bool = False,
) -> None:
    """``export`` and ``composition export``: the destination and engine checked before torch
    loads, then the version (or ``composition``) written, and what was written shown."""
    with user_errors(as_json):
        checked_export_target(out, engine)  # before torch loads (the job checks it again)
        rank_limit = vllm_rank_limit(engine, max_lora_rank, warn)
        registry = open_registry()
        require_known(registry, [ref], compositions=composition)
        with waiting(f"export {ref}: {LOADING_LIBRARIES}", enabled=not as_json) as say:
            from .. import export_job  # noqa: PLC0415 - torch

            quiet_libraries()
            say(f"export {ref} for {engine}")
            write = export_job.export_composition if composition else export_job.export
            result = write(registry, ref, engine, out, max_lora_rank=rank_limit, force=force)
    show_export(result, as_json)


def show_export(result: Any, as_json: bool) -> None:
    """An export's outcome: JSON, or the warnings --force let through and where it went."""
    if as_json:
        emit_json({"ok": True, **result.to_dict()})
        return
    for finding in result.findings:  # only with --force
        warn(str(finding))
    files = ", ".join(result.files)
    console.print(f"{result.ref} for {result.engine}: {result.folder} ({files})", soft_wrap=True)
    if result.serve:
        console.print(f"use it: {result.serve}", style="dim", soft_wrap=True, highlight=False)
