"""Registry commands: ``push``, ``import``, ``ls``, ``show``, ``diff``, ``pull``, ``resolve``,
``alias``, ``unalias``, ``history``, ``rm`` and ``gc`` (``db``: :mod:`flows.cli.database`). The
registry's location comes from ``ADAPTEROPS_REGISTRY_URL`` and ``ADAPTEROPS_ARTIFACTS_URL``
(default: SQLite and a folder under ``./.adapterops``)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.markup import escape
from rich.table import Table
from rich.text import Text

import registry as rg
from registry import AdapterVersion, RegistryError

from ..errors import DataError
from .common import (
    JsonOption,
    checkable_before_mlflow,
    console,
    emit_json,
    human_bytes,
    open_registry,
    print_columns,
    quiet_libraries,
    require_known,
    require_spec_file,
    telling_a_new_registry,
    user_errors,
    warn,
)
from .database import db_app

__all__ = ["app", "db_app"]

app = typer.Typer()

RefArgument = Annotated[str, typer.Argument(help="name, name@VERSION or name@ALIAS", metavar="REF")]


# What a new version is registered under (push and import ask the same).
NameOption = Annotated[str, typer.Option(help="Adapter name.")]
BaseModelOption = Annotated[str, typer.Option(help="Base model it was trained on.")]
TaskOption = Annotated[str, typer.Option(help="Task, e.g. sst2.")]
LanguageOption = Annotated[str, typer.Option(help="Language code, e.g. en.")]
MetricOption = Annotated[
    list[str] | None,
    typer.Option(metavar="KEY=VALUE", help="Metric, e.g. accuracy=0.91 (repeatable)."),
]
DescriptionOption = Annotated[str, typer.Option(help="Free text.")]


@app.command()
def push(
    folder: Annotated[
        Path, typer.Argument(help="Adapter folder written by peft_core.save_adapter or peft.")
    ],
    name: Annotated[str | None, typer.Option(help="Adapter name (default: the spec's).")] = None,
    base_model: Annotated[
        str | None,
        typer.Option(
            help="Base model it was trained on (default: the spec's, else the one the folder's "
            "files name: peft's base_model_name_or_path)."
        ),
    ] = None,
    task: Annotated[str | None, typer.Option(help="Task, e.g. sst2 (default: the spec's).")] = None,
    language: Annotated[
        str | None, typer.Option(help="Language code, e.g. en (default: the spec's).")
    ] = None,
    metric: MetricOption = None,
    description: DescriptionOption = "",
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec",
            help="The spec it was trained with: evaluate reads its data columns and metric, "
            "predict and export its head, labels and load settings (without one: what the "
            "folder's files tell).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Register an adapter folder as the adapter's next version (same bytes: same version).
    Without --spec give --name, --task and --language (and --base-model unless the folder's
    files name it). Without --metric, the
    metrics of the folder's report.json (written by adapterops train) are recorded. When the
    base model is on this machine, its config must match the one the adapter was trained on."""
    from ..push_job import push_folder  # noqa: PLC0415 - huggingface_hub only for this command

    with user_errors(as_json), telling_a_new_registry():
        result = push_folder(
            partial(open_registry, create=True),  # opened once the folder and flags pass
            folder,
            identity={"name": name, "base_model": base_model, "task": task, "language": language},
            spec_file=spec,
            metrics=_metrics(metric) if metric else None,
            description=description,
        )
    for warning in result.warnings:
        warn(warning)
    _print_versions([result.version], as_json, single=True)


@app.command("import")
def import_command(
    folder: Annotated[Path, typer.Argument(help="Folder written by AdapterHub's save_adapter.")],
    name: NameOption,
    base_model: BaseModelOption,
    task: TaskOption,
    language: LanguageOption,
    metric: MetricOption = None,
    description: DescriptionOption = "",
    as_json: JsonOption = False,
) -> None:
    """Register an AdapterHub (`adapters` 1.x) bottleneck adapter: loaded onto the base model
    (refused if our modules would not compute what it computes), saved in our format with the
    base's fingerprint and golden probes, then registered as the adapter's next version."""
    from ..import_job import import_adapterhub  # noqa: PLC0415 - torch only for this command

    quiet_libraries()
    with user_errors(as_json), telling_a_new_registry():
        version = import_adapterhub(
            folder,
            registry=partial(open_registry, create=True),  # opened once it converted
            base_model=base_model,
            name=name,
            task=task,
            language=language,
            metrics=_metrics(metric or []),
            description=description,
        )
    _print_versions([version], as_json, single=True)


@app.command("ls")
def list_versions(
    name: Annotated[
        str | None,
        typer.Argument(
            help="Only this adapter's versions (default: every adapter's).", metavar="[NAME]"
        ),
    ] = None,
    base_model: Annotated[str | None, typer.Option(help="Only this base model.")] = None,
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    language: Annotated[str | None, typer.Option(help="Only this language.")] = None,
    method: Annotated[str | None, typer.Option(help="Only this method.")] = None,
    alias: Annotated[str | None, typer.Option(help="Only versions holding this alias.")] = None,
    order_by: Annotated[
        str | None,
        typer.Option(
            help="Order by this metric, best first (lowest first: perplexity, losses, errors)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """List versions (by name and version, or best first with --order-by), of one adapter or
    all, filtered by base model, task, language, method or alias."""
    with user_errors(as_json):
        registry = open_registry()
        if name is not None:
            _check_adapter_name(registry, name)
        versions = registry.find(
            name=name,
            base_model=base_model,
            task=task,
            language=language,
            method=method,
            alias=alias,
            order_by=order_by,
            limit=limit,
        )
    if as_json:
        emit_json([v.to_dict() for v in versions])
        return
    if not versions:  # one line, not an empty table
        filtered = any(v is not None for v in (name, base_model, task, language, method, alias))
        console.print(
            "no version matches these filters (`adapterops ls` lists all)"
            if filtered
            else "no versions yet: `adapterops build SPEC` or `adapterops push FOLDER` adds one"
        )
        return
    _print_versions(versions, False)


@app.command()
def show(
    ref: RefArgument,
    spec_only: Annotated[
        bool,
        typer.Option(
            "--spec",
            help="Print only the spec it was built with, as YAML: adapterops build reads it "
            "back (show NAME@champion --spec > retrain.yaml).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Everything about one version: its record, metrics, lineage and spec."""
    with user_errors(as_json):
        version = open_registry().get(ref)
        if spec_only and not version.spec:
            raise DataError(
                f"{version.ref} was registered without a spec (push without --spec): there is "
                f"none to print; `adapterops show {version.ref}` prints its record"
            )
    if as_json:
        emit_json(version.spec if spec_only else version.to_dict())
    elif spec_only:
        console.print(Text(_yaml(version.spec)), soft_wrap=True)
    else:
        _print_version_card(version)


@app.command()
def diff(
    before: Annotated[
        str,
        typer.Argument(
            help="The version to compare from: name@VERSION or name@ALIAS.", metavar="BEFORE"
        ),
    ],
    after: Annotated[
        str,
        typer.Argument(
            help="The version to compare with it, or a spec file (*.yaml, *.yml) not built yet.",
            metavar="AFTER",
        ),
    ],
    as_json: JsonOption = False,
) -> None:
    """What changed from one version to another (name@VERSION or name@ALIAS each): metrics with
    their deltas (better or worse, as the gate reads them), the spec's fields, the data and code
    they were built from, base model, size and files. AFTER may be a spec file: what building it
    would change (its fields, data fingerprint, code), read before anything trains, as CI does
    on a pull request. Exit 0 whether or not anything differs."""
    with user_errors(as_json):
        registry = open_registry()
        if Path(after).suffix in (".yaml", ".yml") or Path(after).is_file():
            changes = _diff_with_spec_file(registry, before, Path(after))
        else:
            changes = _diff_versions(registry, before, after)
    if as_json:
        emit_json(changes.to_dict())
        return
    _print_diff(changes)


def _diff_versions(registry: rg.Registry, before: str, after: str) -> rg.VersionDiff:
    """``registry.diff``; two compositions are one line naming the command that compares them."""
    try:
        return registry.diff(before, after)
    except rg.NotFoundError:
        if not _are_compositions(registry, [before, after]):
            raise
        raise DataError(
            f"{before} and {after} are compositions: `adapterops composition diff {before} "
            f"{after}` compares them"
        ) from None


def _are_compositions(registry: rg.Registry, refs: list[str]) -> bool:
    try:
        for ref in refs:
            registry.composition(ref)
    except rg.NotFoundError:
        return False
    return True


@app.command()
def trend(
    name: Annotated[str, typer.Argument(help="The adapter.", metavar="NAME")],
    metric: Annotated[
        str | None,
        typer.Option(help="The metric (default: the one its spec's gate compares on)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the plot: .png, .svg or .pdf (default NAME-METRIC.png; with "
            "--json, no plot unless given)."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """An adapter's metric across its versions, as a plot and a table: is scheduled retraining
    improving it, or drifting? Each alias is written at its version, the best one ringed.
    With --json, the points (and a plot only where --out asks for one)."""
    with user_errors(as_json):
        if out is not None:
            _check_plot_path(out)
        registry = open_registry()
        _check_adapter_name(registry, name)
        from ..trend import metric_trend  # noqa: PLC0415

        found = metric_trend(registry.find(name=name), metric)
        # a script asked for numbers: no file appears in its folder unless it names one
        path = out if out is not None or as_json else Path(f"{name}-{found.metric}.png")
        if path is not None:
            from ..plots import trend_plot  # noqa: PLC0415 - matplotlib only for this command

            trend_plot(found, path)
    if as_json:
        emit_json({**found.to_dict(), "plot": str(path) if path else None})
        return
    best = found.best()
    rows: dict[str, list[str]] = {"version": [], found.metric: [], "aliases": [], "": []}
    for point in found.points:
        rows["version"].append(str(point.version))
        rows[found.metric].append(rg.shown(point.value))
        rows["aliases"].append(", ".join(point.aliases))
        rows[""].append("best" if best is not None and point.version == best.version else "")
    print_columns(rows, keep=len(rows))
    console.print(f"plot: {path}", highlight=False, soft_wrap=True)


def _check_plot_path(out: Path) -> None:
    """A file matplotlib can write, in a folder that exists: checked before the registry opens."""
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise DataError(f"--out {out}: give a .png, .svg or .pdf file (the plot's format)")
    if out.is_dir():
        raise DataError(f"--out {out} is a folder: give a file name in it ({out / 'trend.png'})")
    if not out.parent.is_dir():
        raise DataError(f"--out {out}: folder {out.parent} does not exist; create it first")


@app.command()
def pull(
    ref: RefArgument,
    destination: Annotated[Path, typer.Argument(help="Folder to write the files into.")],
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Also load it on its base model and re-run its golden probes (loads weights).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Download a version's files, verified against their digests; with --verify, also checked
    on its base model against the outputs recorded at registration (nothing is written if not)."""
    probe: dict[str, Any] = {}
    with user_errors(as_json):
        registry = open_registry()
        version = registry.get(ref)
        if verify:
            probe = _pull_verified(registry, version, destination)
            folder = destination
        else:
            folder = registry.fetch(version.ref, destination)
    if as_json:
        emit_json({"ok": True, **version.to_dict(), "path": str(folder), **probe})
        return
    checked = (
        f"; probes within {probe['probe_tolerance']:.0%} (worst {probe['probe_deviation']:.2%}, "
        f"{1000 * probe['probe_seconds']:.0f} ms)"
        if probe
        else ""
    )
    console.print(f"{version.ref} ({version.digest[:12]}) -> {folder}{checked}", soft_wrap=True)


def _pull_verified(registry: Any, version: AdapterVersion, destination: Path) -> dict[str, Any]:
    """Fetch beside ``destination``, check the probes, then move the files into place."""
    from ..verify_job import verify_on_base  # noqa: PLC0415 - torch and transformers

    quiet_libraries()
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=destination.parent) as scratch:
        staged = registry.fetch(version.ref, Path(scratch) / "adapter")
        check = verify_on_base(version, staged)
        if destination.exists() and not any(destination.iterdir()):
            destination.rmdir()
        staged.rename(destination)
    return {
        "probe_deviation": check.deviation,
        "probe_tolerance": check.tolerance,
        "probe_seconds": check.seconds,
        "probe_recorded_with": check.recorded_with,
        "probe_checked_with": check.checked_with,
    }


@app.command()
def resolve(
    base_model: Annotated[str, typer.Option(help="Base model.")],
    task: Annotated[str, typer.Option(help="Task.")],
    language: Annotated[str, typer.Option(help="Language code.")],
    metric: Annotated[
        str | None, typer.Option(help="Prefer the best value of this metric.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """The adapter to use for (base model, task, language): promoted, newest, or a MAD-X stack."""
    with user_errors(as_json):
        resolution = open_registry().resolve(
            base_model=base_model, task=task, language=language, metric=metric
        )
    if as_json:
        emit_json(resolution.to_dict())
        return
    refs = " + ".join(v.ref for v in resolution.versions)
    console.print(Text.assemble((resolution.kind, "bold"), f": {refs}"))
    console.print(resolution.explanation)


@app.command()
def alias(
    ref: RefArgument,
    name: Annotated[str, typer.Argument(help="Alias to set or move, e.g. champion.")],
    as_json: JsonOption = False,
) -> None:
    """Point an alias at a version (moving it from another version if needed), in MLflow
    first, as reviewers see aliases there; `promote` does the same behind the gate."""
    with user_errors(as_json):
        registry = open_registry()
        require_known(registry, [checkable_before_mlflow(ref)])  # before MLflow loads
        from .. import tracking  # noqa: PLC0415 - MLflow only for this command
        from ..promotion import move_alias  # noqa: PLC0415

        version = move_alias(registry, tracking.client(), ref, name, origin="cli")
    _print_versions([version], as_json, single=True)


@app.command()
def unalias(
    adapter: Annotated[str, typer.Argument(help="Adapter name.")],
    name: Annotated[str, typer.Argument(help="Alias to remove, e.g. previous.")],
    as_json: JsonOption = False,
) -> None:
    """Take an alias off an adapter, in MLflow first (then its version may be deleted)."""
    with user_errors(as_json):
        registry = open_registry()
        require_known(registry, [adapter])  # before MLflow loads
        from .. import tracking  # noqa: PLC0415 - MLflow only for this command
        from ..mlflow_models import sync_aliases  # noqa: PLC0415
        from ..promotion import remove_alias  # noqa: PLC0415

        client = tracking.client()
        sync_aliases(registry, client, [adapter])  # a move made in the UI since counts
        remove_alias(registry, client, adapter, name, origin="cli")
    if as_json:
        emit_json({"ok": True, "adapter": adapter, "removed": name})
        return
    console.print(f"removed alias {name} from {adapter}")


@app.command()
def history(
    name: Annotated[str, typer.Argument(help="Adapter name.")], as_json: JsonOption = False
) -> None:
    """The adapter's event log: registrations and alias moves with their origin."""
    with user_errors(as_json):
        events = open_registry().history(name)
    show_events(events, f"history of {name}", as_json)


def show_events(events: list[Any], title: str, as_json: bool) -> None:
    """An event log as JSON or as a table, oldest first."""
    if as_json:
        emit_json([e.to_dict() for e in events])
        return
    table = Table(title=title)
    for column in ("at", "event", "version", "alias", "origin"):
        table.add_column(column)
    for e in events:
        table.add_row(
            e.at.strftime("%Y-%m-%d %H:%M:%S"),
            e.kind,
            str(e.version or ""),
            e.alias or "",
            e.origin,
        )
    console.print(table)


@app.command("rm")
def remove(ref: RefArgument, as_json: JsonOption = False) -> None:
    """Delete a version that no alias or composition refers to (and the MLflow version that
    mirrors it, so no reviewer can point an alias at it)."""
    from .. import tracking  # noqa: PLC0415 - MLflow only for this command
    from ..errors import TrackingUnavailableError  # noqa: PLC0415
    from ..mlflow_models import delete_model_version  # noqa: PLC0415

    with user_errors(as_json):
        version = open_registry().delete(ref, origin="cli")
    try:
        delete_model_version(tracking.client(), version.name, version.version)
    except TrackingUnavailableError as exc:  # the registry's delete stands: say what is left
        warn(f"{version.ref} is deleted, but its MLflow version is still there: {exc}")
    if as_json:
        emit_json({"ok": True, "deleted": version.ref})
        return
    console.print(f"deleted {version.ref}; run `adapterops gc` to free its bytes")


_TEN_YEARS_IN_MINUTES = 10 * 365.25 * 24 * 60


@app.command()
def gc(
    older_than_minutes: Annotated[
        float, typer.Option(help="Spare blobs younger than this (uploads in flight).")
    ] = 60.0,
    dry_run: Annotated[bool, typer.Option(help="Only list what would be deleted.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete stored blobs that no version refers to (left by crashes or deletions)."""
    with user_errors(as_json):
        if not 0 <= older_than_minutes <= _TEN_YEARS_IN_MINUTES:  # also refuses nan and inf
            raise RegistryError(
                f"--older-than-minutes must be a number of minutes from 0 to "
                f"{_TEN_YEARS_IN_MINUTES:.0f}, got {older_than_minutes}"
            )
        grace = timedelta(minutes=older_than_minutes)
        removed = open_registry().gc(older_than=grace, dry_run=dry_run)
    if as_json:
        emit_json({"ok": True, "dry_run": dry_run, "removed": removed})
        return
    verb = "would remove" if dry_run else "removed"
    console.print(f"{verb} {len(removed)} unreferenced blob(s)")


def _metrics(pairs: list[str]) -> dict[str, float]:
    metrics = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            metrics[key] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key:
            raise typer.BadParameter(f"--metric {pair!r}: write key=number, e.g. accuracy=0.91")
    return metrics


def _print_versions(versions: list[AdapterVersion], as_json: bool, *, single: bool = False) -> None:
    if as_json:
        emit_json(versions[0].to_dict() if single else [v.to_dict() for v in versions])
        return
    rows = {
        "ref": [v.ref for v in versions],
        "aliases": [", ".join(v.aliases) for v in versions],
        "metrics": [_metrics_text(v.metrics) for v in versions],
        "task": [v.task for v in versions],
        "lang": [v.language for v in versions],
        "method": [v.method for v in versions],
        "base model": [v.base_model for v in versions],
        "size": [human_bytes(v.size) for v in versions],
        "digest": [v.digest[:12] for v in versions],
    }  # most wanted first: narrow terminals (CI logs at 80 columns) drop from the end
    print_columns(rows)


def _check_adapter_name(registry: rg.Registry, name: str) -> None:
    """``ls NAME``: a name with versions, or one line (``a@3``: that is ``show``'s)."""
    if "@" in name:
        raise DataError(
            f"ls takes an adapter name, not a version ({name!r}): `adapterops show {name}` "
            f"shows one version, `adapterops ls {name.partition('@')[0]}` lists them all"
        )
    registry.get(name)  # no such adapter: one line, with similar names


def _diff_with_spec_file(registry: rg.Registry, before: str, file: Path) -> rg.VersionDiff:
    """``before`` against what a build of the spec ``file`` would register (not trained)."""
    version = registry.get(before)  # a typo in BEFORE: refused before torch loads
    require_spec_file(file)
    from ..lineage import spec_lineage  # noqa: PLC0415 - the spec module loads torch
    from ..spec import load_spec  # noqa: PLC0415

    spec = load_spec(file)
    return rg.diff_with_spec(version, spec.model_dump(mode="json"), spec_lineage(spec), str(file))


def _print_version_card(version: AdapterVersion) -> None:
    """``show`` for a person: the record as labelled lines, then the spec as the YAML it was
    written in (``--json`` has every field as it is stored)."""
    aliases = f" ({', '.join(version.aliases)})" if version.aliases else ""
    console.print(Text(f"{version.ref}{aliases}", style="bold"))
    fingerprint = version.base_model_fingerprint
    revision = f" at {version.base_model_revision}" if version.base_model_revision else ""
    lines = {
        "task": f"{version.task}, language {version.language}",
        "method": f"{version.method}, head {version.head}",
        "base model": version.base_model + revision
        + (f" (fingerprint {rg.shown(fingerprint)})" if fingerprint else ""),
        "size": f"{human_bytes(version.size)}, digest {rg.shown(version.digest)}",
        "created": version.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        "metrics": "  ".join(f"{k}={v:.4g}" for k, v in sorted(version.metrics.items())) or "-",
        **{key: rg.shown(value, key) for key, value in sorted(version.lineage.items())},
        "files": version.artifact_uri,
        "description": version.description,
    }  # fmt: skip
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim")
    grid.add_column(overflow="fold")
    for label, value in lines.items():
        if value:
            grid.add_row(label, Text(value))
    console.print(grid)
    if version.spec:
        console.print(Text("spec", style="bold"))
        console.print(Text(_yaml(version.spec)))
    else:
        console.print("no spec: registered without one (push without --spec)", style="dim")


class _SpecDumper(yaml.SafeDumper):
    """Block style, but a list of plain values on one line (``targets: [q, v]``)."""


def _represent_list(dumper: yaml.SafeDumper, items: list[Any]) -> yaml.Node:
    """A list of plain values in flow style, any other list in block style."""
    nested = any(isinstance(item, dict | list) for item in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=not nested)


_SpecDumper.add_representer(list, _represent_list)


def _yaml(document: dict[str, Any]) -> str:
    """A spec as YAML, in its own order."""
    return yaml.dump(document, Dumper=_SpecDumper, sort_keys=False).rstrip()


def print_changes(title: str, changes: Sequence[rg.Change], *, nothing: str) -> None:
    """A diff for a person: ``title``, then one row per change (section, field, before, after
    and, for metrics, the change), or the line ``nothing`` when there is none."""
    console.print(title, highlight=False, soft_wrap=True)
    if not changes:
        console.print(nothing)
        return
    rows: dict[str, list[str]] = {"": [], "field": [], "before": [], "after": [], "change": []}
    for change in changes:
        rows[""].append(change.section)
        rows["field"].append(change.field)
        rows["before"].append(escape(rg.shown(change.before, change.field)))
        rows["after"].append(escape(rg.shown(change.after, change.field)))
        rows["change"].append(change.verdict)
    if not any(rows["change"]):  # no metric on both sides (a spec file): nothing to say
        del rows["change"]
    print_columns(rows, keep=len(rows))  # every column, cells folded: change matters most


def _print_diff(changes: rg.VersionDiff) -> None:
    files = {True: "same files", False: "different files", None: "not built yet"}[
        changes.same_files
    ]
    print_changes(
        f"before {changes.before} -> after {changes.after}: {files}",
        changes.changes,
        nothing="no recorded difference (record, metrics, lineage and spec agree)",
    )
    if not changes.spec_compared:
        console.print(
            "spec: not compared, one of them was registered without it (push without --spec)",
            style="dim",
        )


def _metrics_text(metrics: dict[str, Any]) -> str:
    return "\n".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
