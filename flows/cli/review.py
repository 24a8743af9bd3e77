"""Review commands: ``diff`` (what changed between two versions, or what a spec would change),
``trend`` (a metric across versions) and ``history`` (the event log), and the printing
:mod:`flows.cli.compositions` shares with them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

import registry as rg

from ..errors import DataError
from ..out_files import check_out_file
from .common import open_registry, registry_with_adapter, require_spec_file, user_errors
from .options import JsonOption
from .output import console, emit_json, print_columns

if TYPE_CHECKING:
    from ..trend import Trend

__all__ = [
    "PlotOutOption",
    "app",
    "check_plot_path",
    "plot_trend",
    "print_changes",
    "show_events",
    "show_trend",
]

app = typer.Typer()


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


PlotOutOption = Annotated[
    Path | None,
    typer.Option(
        help="Where to write the plot: .png, .svg or .pdf (default NAME-METRIC.png; with "
        "--json, no plot unless given)."
    ),
]


@app.command()
def trend(
    name: Annotated[str, typer.Argument(help="The adapter.", metavar="NAME")],
    metric: Annotated[
        str | None,
        typer.Option(help="The metric (default: the one its spec's gate compares on)."),
    ] = None,
    out: PlotOutOption = None,
    as_json: JsonOption = False,
) -> None:
    """An adapter's metric across its versions, as a plot and a table: is scheduled retraining
    improving it, or drifting? Each alias is written at its version, the best one ringed.
    With --json, the points (and a plot only where --out asks for one)."""
    with user_errors(as_json):
        if out is not None:
            check_plot_path(out)
        registry = registry_with_adapter(name, "trend")
        from ..trend import metric_trend  # noqa: PLC0415

        found = metric_trend(registry.find(name=name), metric)
        path = plot_trend(found, out, as_json)
    show_trend(found, path, as_json)


def plot_trend(found: Trend, out: Path | None, as_json: bool) -> Path | None:
    """Where ``trend`` drew its plot: ``out``, else NAME-METRIC.png (None: --json without
    --out; a script asked for numbers, and no file appears in its folder unless it names one)."""
    path = out if out is not None or as_json else Path(f"{found.name}-{found.metric}.png")
    if path is not None:
        from ..plots import trend_plot  # noqa: PLC0415 - matplotlib only for this command

        trend_plot(found, path)
    return path


def show_trend(found: Trend, path: Path | None, as_json: bool) -> None:
    """The trend's points as JSON, or as a table (the best version marked) and the plot's path."""
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


def check_plot_path(out: Path) -> None:
    """A file matplotlib can write, in a folder that exists: checked before the registry opens."""
    suffixes = (".png", ".svg", ".pdf")
    check_out_file(out, suffixes, what="the plot's format", example="trend.png", replace=True)


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
    for column in ("at", "event", "version", "alias", "origin", "what"):
        table.add_column(column, overflow="fold")
    for e in events:
        table.add_row(
            e.at.strftime("%Y-%m-%d %H:%M:%S"),
            e.kind,
            str(e.version or ""),
            e.alias or "",
            e.origin,
            e.summary(),
        )
    console.print(table)


def _diff_with_spec_file(registry: rg.Registry, before: str, file: Path) -> rg.VersionDiff:
    """``before`` against what a build of the spec ``file`` would register (not trained)."""
    version = registry.get(before)  # a typo in BEFORE: refused before torch loads
    require_spec_file(file)
    from ..lineage import spec_lineage  # noqa: PLC0415 - the spec module loads torch
    from ..spec import load_spec  # noqa: PLC0415

    spec = load_spec(file)
    return rg.diff_with_spec(version, spec.model_dump(mode="json"), spec_lineage(spec), str(file))


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
