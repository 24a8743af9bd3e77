"""``adapterops composition save | ls | show | diff | trend | alias | unalias | history |
predict | evaluate | export``: saved compositions (stacks, averages over exact member
versions), their aliases, metrics and event logs, and predictions through them. Compositions
are saved here, from Python (``Registry.register_composition``) and by the retraining
cascade."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

import registry as rg
from registry import Composition, InvalidCompositionError
from registry.compositions import BLOCK_KINDS
from registry.metrics import unrecorded_metric
from registry.names import check_new_alias

from ..errors import DataError, TrackingUnavailableError
from .common import (
    drop_mirror,
    mlflow_after_sync,
    mlflow_client,
    open_registry,
    refuse_a_version,
    require_known,
    require_spec_file,
    user_errors,
)
from .operate import (
    AnswersOutOption,
    DataOption,
    EngineOption,
    ForceOption,
    MaxLoraRankOption,
    MaxSamplesOption,
    OutFolderOption,
    check_evaluation_arguments,
    evaluate_with_steps,
    run_export,
    run_predict,
    show_evaluation,
)
from .options import (
    BatchSizeOption,
    JsonOption,
    LabelColumnOption,
    MaxNewTokensOption,
    MetricOption,
    PredictDataOption,
    PredictionsOutOption,
    ReplaceOption,
    SkipProbeOption,
    TextColumnOption,
    TextOption,
    metric_values,
)
from .output import console, emit_json, metrics_text, print_card, print_columns, warn
from .progress import waiting, waiting_for_a_gate
from .registry import RefArgument
from .review import (
    PlotOutOption,
    check_plot_path,
    plot_trend,
    print_changes,
    show_events,
    show_trend,
)

__all__ = ["composition_app"]

composition_app = typer.Typer(
    help="Saved compositions (stacks, averages) and their aliases.", no_args_is_help=True
)


@composition_app.command()
def save(
    name: Annotated[str, typer.Argument(help="Composition name.")],
    members: Annotated[
        list[str],
        typer.Argument(
            help="Member references (name, name@VERSION, name@ALIAS), in the order of the "
            "definition's leaves; each is saved as the exact version it names now.",
            metavar="MEMBER",
        ),
    ],
    definition: Annotated[
        str,
        typer.Option(
            help='The block as JSON, e.g. {"type": "average", "weights": [0.7, 0.3]}, or a '
            "kind alone (stack; average: equal weights); its leaves are the members, in order."
        ),
    ] = '{"type": "stack"}',
    evaluation: Annotated[
        Path | None,
        typer.Option(
            help="A spec file whose base model, head, validation data and gate the retraining "
            "cascade scores the composition with.",
            metavar="SPEC",
        ),
    ] = None,
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    metric: MetricOption = None,
    as_json: JsonOption = False,
) -> None:
    """Save a composition over exact member versions as its next version, with the metrics it
    scored (--metric; the retraining cascade records the score its gate weighed)."""
    with user_errors(as_json):
        block = _definition(definition)
        scored = _evaluation_spec(evaluation, announce=not as_json) if evaluation else None
        registry = open_registry()
        with waiting(f"{name}: check and save its members", enabled=not as_json) as say:
            composition = registry.register_composition(
                name, block, members, description=description, evaluation=scored,
                metrics=metric_values(metric or []),
            )  # fmt: skip
            say(f"{composition.ref}: mirror it to MLflow")
            _mirror(registry, composition)
    base = registry.get(composition.members[0]).base_model
    if scored and scored["base_model"] != base:  # a path to the same model is fine: not refused
        warn(
            f"the evaluation spec's base_model {scored['base_model']!r} is not the members' "
            f"({base!r}): the cascade loads it to score {composition.ref}, and every member is "
            "refused on another model's weights"
        )
    _print([composition], as_json, single=True)


def _evaluation_spec(path: Path, *, announce: bool) -> dict[str, Any]:
    """The spec file ``--evaluation`` names, checked, as the registry stores it (the methods'
    plug-ins check a spec: torch loads; a file that is not there is said before)."""
    require_spec_file(path)
    with waiting(f"checking {path.name}", enabled=announce):
        from ..spec import load_spec  # noqa: PLC0415

        return load_spec(path).model_dump(mode="json")


def _mirror(registry: rg.Registry, composition: Composition) -> None:
    """The saved version in MLflow too; if MLflow is down, say that it is saved all the same."""
    from .. import tracking  # noqa: PLC0415 - MLflow loads only for commands that use it
    from ..mlflow_compositions import ensure_composition_versions  # noqa: PLC0415

    try:
        ensure_composition_versions(tracking.client(), registry, composition.name)
    except TrackingUnavailableError as exc:
        # re-running `save` would save another version: the advice is `sync` here
        reason = str(exc).removesuffix(tracking.RERUN_COMPLETES)
        raise TrackingUnavailableError(
            f"{composition.ref} is saved in the registry but not yet in MLflow: {reason}"
            "`adapterops sync` mirrors it once MLflow answers."
        ) from None


def _definition(text: str) -> dict[str, Any]:
    # a kind alone is that block, its weights default (equal, for an average)
    if text.strip().lower() in BLOCK_KINDS:  # --definition average: {"type": "average"}
        return {"type": text.strip().lower()}
    try:
        block = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidCompositionError(
            f"--definition is not JSON ({exc.msg}): {text!r:.80}; give a block such as "
            f'{{"type": "stack"}}, or one of {", ".join(BLOCK_KINDS)} alone'
        ) from None
    if not isinstance(block, dict):
        raise InvalidCompositionError(
            f'--definition is a JSON object such as {{"type": "stack"}}, got {text!r:.80}'
        )
    return block


@composition_app.command("ls")
def list_compositions(
    order_by: Annotated[
        str | None,
        typer.Option(
            "--order-by",
            help="A metric: best first (lowest first for perplexity and losses), those "
            "without it last.",
            metavar="METRIC",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """The newest version of every composition (by name, or best first by --order-by)."""
    with user_errors(as_json):
        compositions = open_registry().compositions()
        if order_by is not None and compositions:
            compositions = _best_first(compositions, order_by)
    if not compositions and not as_json:  # one line, not an empty table
        console.print("no compositions yet: `adapterops composition save NAME MEMBER...` adds one")
        return
    _print(compositions, as_json)


def _best_first(compositions: list[Composition], metric: str) -> list[Composition]:
    """``compositions`` ordered by ``metric`` as ``ls --order-by`` orders versions."""
    recorded = sorted({key for c in compositions for key in c.metrics})
    if metric not in recorded:  # a typo would order nothing, silently
        raise DataError(unrecorded_metric("no composition here", metric, recorded, " to order by"))
    sign = -1.0 if rg.higher_is_better(metric) else 1.0
    scored = sorted(
        (c for c in compositions if metric in c.metrics), key=lambda c: sign * c.metrics[metric]
    )
    return scored + [c for c in compositions if metric not in c.metrics]


@composition_app.command()
def show(ref: RefArgument, as_json: JsonOption = False) -> None:
    """One composition version: its definition, members, metrics, aliases, how the retraining
    cascade scores it and what it found the last time it scored this version."""
    with user_errors(as_json):
        registry = open_registry()
        composition = registry.composition(ref)
        cascades = [
            e
            for e in registry.composition_history(composition.name)
            if e.kind == "composition_cascade" and e.version == composition.version
        ]
    last_cascade = cascades[-1] if cascades else None
    if as_json:
        emit_json(
            {**composition.to_dict(), "last_cascade": last_cascade and last_cascade.to_dict()}
        )
        return
    scoring = composition.evaluation
    lines = {
        "blocks": rg.blocks_text(composition.definition),
        "members": ", ".join(composition.members),
        "created": composition.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        "metrics": metrics_text(composition.metrics, "  ") or "-",
        "scored": (
            f"by the retraining cascade: {scoring.get('evaluate', {}).get('metric')} on the "
            f"validation data of spec {scoring.get('name')}"
            if scoring
            else "no (saved without --evaluation: the cascade lists it, cannot score it)"
        ),
        "last cascade": (
            f"{last_cascade.at:%Y-%m-%d %H:%M}, {last_cascade.summary()}" if last_cascade else ""
        ),
        "description": composition.description,
    }
    print_card(composition.ref, composition.aliases, lines)


@composition_app.command()
def diff(
    before: Annotated[
        str,
        typer.Argument(
            help="The version to compare from: name@VERSION or name@ALIAS.", metavar="BEFORE"
        ),
    ],
    after: Annotated[str, typer.Argument(help="The version to compare with it.", metavar="AFTER")],
    as_json: JsonOption = False,
) -> None:
    """What changed from one composition version to another (after a cascade re-saved it, say):
    its members' versions, how its blocks combine them, how it is scored; then the command that
    shows what changed in each member. Exit 0 whether or not anything differs."""
    with user_errors(as_json):
        changes = open_registry().composition_diff(before, after)
    if as_json:
        emit_json(changes.to_dict())
        return
    loads = "same adapters, combined the same way" if changes.same_load else "loads differently"
    print_changes(
        f"before {changes.before} -> after {changes.after}: {loads}",
        changes.changes,
        nothing="no recorded difference (members, blocks, evaluation and description agree)",
    )
    for old, new in changes.member_diffs():
        console.print(
            f"what changed in a member: adapterops diff {old} {new}",
            highlight=False,
            soft_wrap=True,
        )


@composition_app.command()
def alias(
    ref: RefArgument,
    name: Annotated[str, typer.Argument(help="Alias to set or move, e.g. champion.")],
    as_json: JsonOption = False,
) -> None:
    """Point an alias at a composition version (moving it from another version if needed),
    through MLflow (moves made in the MLflow UI are taken first)."""
    with user_errors(as_json):
        check_new_alias(name)  # before MLflow loads, as the name below
        registry = open_registry()
        composition_name = registry.composition(ref).name  # before MLflow loads
        with mlflow_client(announce=not as_json) as client:
            from ..mlflow_compositions import move_composition_alias, sync_composition_aliases  # noqa: PLC0415

            waited = waiting_for_a_gate(composition_name, composition=True)
            with registry.composition_alias_lock(composition_name, on_wait=waited):
                sync_composition_aliases(registry, client, [composition_name])
                composition = move_composition_alias(registry, client, ref, name, origin="cli")
    _print([composition], as_json, single=True)


@composition_app.command()
def unalias(
    composition: Annotated[str, typer.Argument(help="Composition name.")],
    name: Annotated[str, typer.Argument(help="Alias to remove.")],
    as_json: JsonOption = False,
) -> None:
    """Take an alias off a composition, in MLflow and the registry."""
    with user_errors(as_json):
        refuse_a_version(
            composition,
            "composition unalias",
            lambda bare: (
                f"`adapterops composition unalias {bare} {name}` takes {name} off "
                "whichever version holds it"
            ),
            takes="a composition",
        )
        registry = open_registry()
        composition_name = registry.composition(composition).name  # before MLflow loads
        with mlflow_client(announce=not as_json) as client:
            from ..mlflow_compositions import (  # noqa: PLC0415
                remove_composition_alias,
                sync_composition_aliases,
            )

            waited = waiting_for_a_gate(composition_name, composition=True)
            with registry.composition_alias_lock(composition_name, on_wait=waited):
                sync_composition_aliases(registry, client, [composition_name])
                remove_composition_alias(registry, client, composition, name, origin="cli")
    if as_json:
        emit_json({"ok": True, "composition": composition, "removed": name})
        return
    console.print(f"removed alias {name} from {composition}")


@composition_app.command("rm")
def remove(
    ref: Annotated[
        str, typer.Argument(help="name@VERSION (name alone: its newest version).", metavar="REF")
    ],
    as_json: JsonOption = False,
) -> None:
    """Delete a composition version that no alias points at (aliases moved in the MLflow UI
    count), and the MLflow version that mirrors it; its members can be deleted then. Its
    number is never given to another version."""
    with user_errors(as_json):
        registry = open_registry()
        name = registry.composition(ref).name  # no such version: one line, before MLflow loads
        client, unreachable = mlflow_after_sync(
            registry, name, composition=True, announce=not as_json
        )
        deleted = registry.delete_composition(ref, origin="cli")
    from ..mlflow_compositions import mlflow_name  # noqa: PLC0415 - MLflow has loaded by now

    drop_mirror(
        registry,
        client,
        unreachable,
        mlflow_name(name),
        deleted.version,
        f"composition {deleted.ref}",
    )
    if as_json:
        emit_json({"ok": True, "deleted": deleted.ref, "members": list(deleted.members)})
        return
    console.print(
        f"deleted composition {deleted.ref}; its members ({', '.join(deleted.members)}) are "
        "still registered"
    )


@composition_app.command()
def trend(
    name: Annotated[str, typer.Argument(help="The composition.", metavar="NAME")],
    metric: Annotated[
        str | None,
        typer.Option(help="The metric (default: the one its evaluation spec's gate compares on)."),
    ] = None,
    out: PlotOutOption = None,
    as_json: JsonOption = False,
) -> None:
    """A composition's metric across its versions (what each scored when saved: the cascade's
    gate, or save --metric), as a plot and a table, as trend draws an adapter's."""
    with user_errors(as_json):
        if out is not None:
            check_plot_path(out)
        versions = open_registry().composition_versions(name)  # unknown: one line, no plot
        from ..trend import metric_trend  # noqa: PLC0415

        found = metric_trend(versions, metric)
        path = plot_trend(found, out, as_json)
    show_trend(found, path, as_json)


@composition_app.command()
def history(
    name: Annotated[str, typer.Argument(help="Composition name.")], as_json: JsonOption = False
) -> None:
    """The composition's event log: versions saved and alias moves, with their origin."""
    with user_errors(as_json):
        events = open_registry().composition_history(name)
    show_events(events, f"history of composition {name}", as_json)


@composition_app.command()
def predict(
    ref: RefArgument,
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
    """Run a composition on text: every member loaded and checked, the composition active; the
    head is its evaluation spec's, else its last member's (a MAD-X stack's task adapter). A
    Parallel composition answers once per member, side by side (as predict does given its
    members)."""
    run_predict(
        [ref], composition=True, text=text, data=data, text_column=text_column, out=out,
        force=force, skip_probe=skip_probe, batch_size=batch_size,
        max_new_tokens=max_new_tokens, as_json=as_json,
    )  # fmt: skip


@composition_app.command()
def evaluate(
    ref: RefArgument,
    data: DataOption = None,
    text_column: TextColumnOption = None,
    label_column: LabelColumnOption = None,
    max_samples: MaxSamplesOption = None,
    out: AnswersOutOption = None,
    force: ReplaceOption = False,
    skip_probe: SkipProbeOption = False,
    as_json: JsonOption = False,
) -> None:
    """Score a composition on a data file, or on its evaluation spec's validation split (else
    its last member's): every member loaded and checked, the composition active. Recorded as
    an MLflow run (with the --out file of each row's answer)."""
    with user_errors(as_json):
        check_evaluation_arguments(data, text_column, label_column, out, force)
        registry = open_registry()
        require_known(registry, [ref], compositions=True)
        result = evaluate_with_steps(
            registry, ref, composition=True, as_json=as_json, data=data,
            max_samples=max_samples, skip_probe=skip_probe, text_column=text_column,
            label_column=label_column, out=out,
        )  # fmt: skip
    show_evaluation(result, as_json)


@composition_app.command()
def export(
    ref: RefArgument,
    engine: EngineOption,
    out: OutFolderOption,
    max_lora_rank: MaxLoraRankOption = None,
    force: ForceOption = False,
    as_json: JsonOption = False,
) -> None:
    """Write a composition for a serving engine that serves one adapter: a stack or an average
    of LoRA (or BitFit) adapters becomes the one adapter computing the same (peft, vllm, lorax;
    over every module a member adapts), or is merged into a full checkpoint (merged). Anything
    else is refused, before any member loads."""
    run_export(ref, engine, out, max_lora_rank, force=force, as_json=as_json, composition=True)


def _print(compositions: list[Composition], as_json: bool, *, single: bool = False) -> None:
    if as_json:
        emit_json(compositions[0].to_dict() if single else [c.to_dict() for c in compositions])
        return
    rows = {
        "ref": [c.ref for c in compositions],
        "aliases": [", ".join(c.aliases) for c in compositions],
        "members": [", ".join(c.members) for c in compositions],
        "kind": [str(c.definition.get("type", "")) for c in compositions],
        "metrics": [metrics_text(c.metrics) for c in compositions],
        "scored": ["yes" if c.evaluation else "no" for c in compositions],
    }
    print_columns(rows, keep=2)
