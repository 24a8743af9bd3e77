"""Lifecycle commands: ``build`` (train, register, gate, promote), ``retrain``, ``cascade``
(carry a new champion into the fusions over it), ``promote``, ``rollback`` and ``sync`` (bring
alias moves made in the MLflow UI into the registry).

Alias moves go to MLflow first, then to the registry; MLflow wins conflicts. ``build``,
``promote`` and ``rollback`` sync before they read any alias, so a reviewer's move in the UI is
never overwritten by stale registry state.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

import registry as rg
from registry.names import check_new_alias

from ..mlflow_links import review_url
from .build import OutOption, SetOption, SpecArgument, checking, progress
from .common import (
    checkable_before_mlflow,
    mlflow_client,
    open_registry,
    require_known,
    require_spec_file,
    spec_files,
    telling_a_new_registry,
    user_errors,
)
from .options import JsonOption
from .output import console, emit_json, warn
from .prefect_server import prefect_answers, prefect_settings_valid, start_temporary_prefect
from .progress import LOADING_FLOW_LIBRARIES, waiting, waiting_for_a_gate
from .quiet import quiet_libraries

if TYPE_CHECKING:
    from registry import Registry

    from ..spec import AdapterSpec

__all__ = ["app"]

app = typer.Typer()


@app.command()
def build(
    spec_file: SpecArgument,
    out: OutOption = None,
    overrides: SetOption = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Only check the inputs and say whether a build would train or return the "
            "version built before; start no flow, create no registry.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Train, evaluate, register and (if it beats the champion) promote one adapter, as a Prefect
    flow run. The same spec, data and code return the version built before. For CI: exit 0
    whether promoted or not (the JSON says which), 2 on bad input, 1 with one line on failure."""
    with user_errors(as_json, one_line_failures=True), telling_a_new_registry():
        require_spec_file(spec_file, overrides=overrides, out=out, data=True)
        with waiting(checking(spec_file), enabled=not as_json):
            # Each check before the modules the next step needs: a typo in the spec is
            # refused before MLflow and Prefect load (about 4 s of imports here).
            from ..spec import load_spec, warn_of_a_relative_base  # noqa: PLC0415

            spec = load_spec(spec_file, overrides)
            from ..prepare_job import check_against_registry, check_inputs  # noqa: PLC0415

            quiet_libraries()
            check_inputs(spec)  # bad input fails here, before a flow run exists
            warn_of_a_relative_base(spec)
            from ..build_job import build_lineage, find_earlier_build  # noqa: PLC0415

            existing = _existing_registry()
            check_against_registry(spec, existing)
            lineage = build_lineage(spec)  # reads every data file (the fingerprint)
        if dry_run:  # a dry run creates no registry: none means nothing was built
            reusable = find_earlier_build(spec, lineage, existing) if existing else None
        else:
            result = _built(spec, spec_file, overrides, out, lineage, existing, as_json)
    if dry_run:  # printed here: under --json, user_errors sends what is printed inside to stderr
        _print_build_plan(spec.name, reusable, as_json)
        return
    stale = _stale_after(result["name"]) if result["alias"] == "champion" else []
    page = review_url(result["name"], result["mlflow_version"])
    if as_json:  # the page too: CI posts it where reviewers look (None: MLflow is no server)
        emit_json({"ok": True, **result, "stale_compositions": stale, "review_url": page})
        return
    if result["reused"]:
        console.print(f"{result['ref']}: {result['decision']}")
        return
    verdict = "promoted to" if result["promoted"] else "registered as"
    console.print(
        Text.assemble(
            f"{result['ref']} {verdict} ", (result["alias"], "bold"), f": {result['decision']}"
        ),
        soft_wrap=True,  # one line, whatever the width: logs and people read it whole
    )
    hint = what_changed_hint(result, spec.promote.alias)
    if hint:
        console.print(hint, style="dim", soft_wrap=True, highlight=False)
    if page:  # one link, instead of MLflow's two per run (its own, switched off at start)
        console.print(f"review: {page}", style="dim", soft_wrap=True, highlight=False)
    _print_cascade_hint(result["name"], stale)


def _built(
    spec: AdapterSpec,
    spec_file: Path,
    overrides: list[str] | None,
    out: Path | None,
    lineage: dict[str, str],
    registry: Registry | None,
    as_json: bool,
) -> dict[str, Any]:
    """The build's result: the version built before from this spec, data and code, answered
    without a flow run (the Prefect server alone takes seconds to start), else a flow run's."""
    from ..build_job import find_earlier_build  # noqa: PLC0415

    if registry is None:  # nothing built before: a flow runs, so Prefect is asked first
        prefect_answers()  # (before the registry is made: a refusal leaves nothing behind)
        from registry.artifacts import open_store  # noqa: PLC0415 - boto3: when used

        open_store(rg.Settings.from_env().artifacts_url).check()  # and the artifact store
    earlier = find_earlier_build(spec, lineage, registry)  # creates the registry if need be
    if earlier is not None:
        return earlier.to_dict()
    if registry is not None:  # moved elsewhere (`db move`): said now, not after training
        registry.check_writable()
    prefect_answers()  # (asked once per process: a second call costs nothing)
    from .. import pipelines  # noqa: PLC0415 - Prefect: only when a flow runs

    quiet_libraries()  # again, now that Prefect's handlers exist (run failures to its log)
    with (
        progress(spec.name, enabled=not as_json) as on_step,
        pipelines.reporting_progress(on_step),
    ):
        start_temporary_prefect(on_step.phase if on_step else None)
        result: dict[str, Any] = pipelines.build(
            str(spec_file.resolve()),
            overrides,
            str(out or Path("out") / spec.name),
            lineage=lineage,
        )
    return result


def _print_build_plan(name: str, earlier: Any, as_json: bool) -> None:
    """``build --dry-run``: the inputs passed their checks; would the build train?"""
    would = "reuse" if earlier is not None else "train"
    ref = earlier.ref if earlier is not None else ""
    if as_json:
        emit_json({"ok": True, "dry_run": True, "name": name, "would": would, "ref": ref})
        return
    line = (
        f"{name}: inputs checked; built before from this spec, data and code: {ref}"
        if earlier is not None
        else f"{name}: inputs checked; a build would train a new version"
    )
    console.print(line, soft_wrap=True, highlight=False)  # one line at any width


def what_changed_hint(result: dict[str, Any], alias: str) -> str:
    """For a build the gate did not promote: the command that shows what changed since the
    version that kept ``alias`` (empty when it was promoted or had nothing to beat)."""
    if result["promoted"] or result.get("champion_metric") is None:
        return ""
    return f"what changed: adapterops diff {result['name']}@{alias} {result['ref']}"


def _stale_after(name: str) -> list[str]:
    """The compositions still over an older version of ``name``'s champion (for the hint)."""

    from ..stale import find_stale  # noqa: PLC0415 - the registry alone: no torch

    return [s.ref for s in find_stale(open_registry(), name)[1]]


def _print_cascade_hint(name: str, stale: list[str]) -> None:
    if stale:
        console.print(
            f"{len(stale)} composition(s) use an older version of {name} ({', '.join(stale)}): "
            f"`adapterops cascade {name}` re-evaluates them with the new champion",
            soft_wrap=True,
            highlight=False,
        )


@app.command()
def retrain(
    spec_paths: Annotated[
        list[Path], typer.Argument(help="Spec files or folders of them.", metavar="SPEC")
    ],
    out: Annotated[Path, typer.Option(help="Folder for the adapters.")] = Path("out"),
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Only say which specs are due and why; build nothing, start no flow."
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Rebuild the specs whose data or spec changed or whose schedule fired since their last
    build. One failing spec does not stop the others; exit 1 if any failed."""
    with user_errors(as_json):
        files = spec_files(spec_paths)
    if dry_run:
        _print_retraining(_due_now(files, as_json), as_json, dry_run=True)
        return
    with user_errors(as_json):
        prefect_settings_valid()  # importing the flows asks Prefect for them (before a spinner:
        # it holds back what Prefect's import prints, which would hold the spinner's frames)
    with waiting(LOADING_FLOW_LIBRARIES, enabled=not as_json):
        from .. import pipelines  # noqa: PLC0415 - Prefect and torch: once the specs are there

        quiet_libraries()
    with (
        user_errors(as_json, one_line_failures=True),
        telling_a_new_registry(),
        progress("retrain", enabled=not as_json) as on_step,
        pipelines.reporting_progress(on_step),
    ):
        prefect_answers()
        start_temporary_prefect(on_step.phase if on_step else None)
        outcomes = pipelines.retrain([str(p.resolve()) for p in files], str(out))
    _print_retraining(outcomes, as_json, dry_run=False)


def _due_now(files: list[Path], as_json: bool) -> list[dict[str, Any]]:
    """``retrain --dry-run``: each spec's answer, from the registry and the data files alone."""
    with user_errors(as_json, one_line_failures=True):
        from ..retrain import what_is_due  # noqa: PLC0415 - the spec module loads torch

        quiet_libraries()  # the data is read to fingerprint it: no bar per split
        outcomes = what_is_due([str(p.resolve()) for p in files], _existing_registry())
    return [o.to_dict() for o in outcomes]


def _existing_registry() -> Registry | None:
    """The registry, or None where none exists yet (nothing was built): checking creates none."""
    try:
        return open_registry()
    except rg.NoRegistryError:
        return None


def _print_retraining(outcomes: list[dict[str, Any]], as_json: bool, *, dry_run: bool) -> None:
    """The outcomes as one JSON document or a table; exit 1 when a spec failed."""
    failed = [o for o in outcomes if o["status"] == "failed"]
    if as_json:
        emit_json({"ok": not failed, "dry_run": dry_run, "outcomes": outcomes})
    else:
        table = Table(title="Retraining (dry run)" if dry_run else "Retraining")
        columns = (
            ("spec", "status", "reason", "newest version")
            if dry_run
            else ("spec", "status", "reason", "version", "gate")
        )
        for column in columns:
            table.add_column(column, overflow="fold")
        for o in outcomes:
            gate = f"{o['alias']}: {o['decision']}" if o["alias"] else ""
            row = [Path(o["spec"]).name, o["status"], o["reason"], o["ref"], gate]
            table.add_row(*row[: len(columns)])
        console.print(table)
    if failed:
        raise typer.Exit(1)


@app.command()
def cascade(
    name: Annotated[str, typer.Argument(help="The adapter whose champion moved.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be re-evaluated.")
    ] = False,
    out: Annotated[Path, typer.Option(help="Folder for the candidates.")] = Path("out"),
    as_json: JsonOption = False,
) -> None:
    """Build a candidate of every fusion still over an older version of NAME's champion, with
    the champion in its place, and promote each only through the gate (on the fusion's own
    validation data). One failing composition does not stop the others; exit 1 if any failed."""

    with user_errors(as_json, one_line_failures=True):
        from ..stale import find_stale  # noqa: PLC0415 - the registry alone: no torch

        champion, stale = find_stale(open_registry(), name)
    if dry_run or not stale:
        _print_stale(champion.ref, [s.to_dict() for s in stale], as_json)
        return
    with user_errors(as_json, one_line_failures=True):
        prefect_answers()
        from .. import pipelines  # noqa: PLC0415 - Prefect: only when a flow runs

        quiet_libraries()
        with (
            progress("cascade", enabled=not as_json) as on_step,
            pipelines.reporting_progress(on_step),
        ):
            start_temporary_prefect(on_step.phase if on_step else None)
            outcomes = pipelines.cascade(name, str(out))
    failed = [o for o in outcomes if o["status"] == "failed"]
    if as_json:
        emit_json({"ok": not failed, "champion": champion.ref, "outcomes": outcomes})
    else:
        table = Table(title=f"Cascade of {champion.ref}")
        for column in ("composition", "status", "candidate", "members", "reason"):
            table.add_column(column, overflow="fold")
        for o in outcomes:
            members = ", ".join(o["members"])
            table.add_row(o["composition"], o["status"], o["candidate"], members, o["reason"])
        console.print(table)
    if failed:
        raise typer.Exit(1)


def _print_stale(champion: str, stale: list[dict[str, object]], as_json: bool) -> None:
    if as_json:
        emit_json({"ok": True, "champion": champion, "dry_run": True, "stale": stale})
        return
    if not stale:
        console.print(f"no composition uses an older version than {champion}")
        return
    table = Table(title=f"Would re-evaluate with {champion}")
    for column in ("composition", "kind", "members now", "candidate members", "note"):
        table.add_column(column, overflow="fold")
    for s in stale:
        now, then = ", ".join(s["members"]), ", ".join(s["candidate_members"])  # type: ignore[arg-type]
        table.add_row(str(s["ref"]), str(s["kind"]), now, then, str(s["reason"]))
    console.print(table)


@app.command("promote")
def promote_command(
    ref: Annotated[str, typer.Argument(help="name@VERSION to promote", metavar="REF")],
    alias_given: Annotated[
        str | None,
        typer.Argument(metavar="ALIAS", help="Alias to move (default: champion); or --alias."),
    ] = None,
    alias_option: Annotated[
        str | None, typer.Option("--alias", help="Alias to move (default: champion).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Promote even if it scores worse than the holder.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Move an alias to a version by hand (through MLflow, recorded in the registry). A version
    that scores worse than the one holding the alias (on the metric its spec gates on) is refused
    unless --force is given."""

    from ..errors import PromotionRefusedError  # noqa: PLC0415

    if alias_given and alias_option and alias_given != alias_option:
        raise typer.BadParameter(
            f"the alias is given twice, as {alias_given!r} and --alias {alias_option!r}: give one"
        )
    alias = alias_given or alias_option or "champion"
    with user_errors(as_json):
        check_new_alias(alias)  # before MLflow loads, as the name below
        registry = open_registry()
        require_known(registry, [checkable_before_mlflow(ref)])  # before MLflow loads
        with mlflow_client(announce=not as_json) as client:
            from ..mlflow_models import sync_aliases  # noqa: PLC0415
            from ..promotion import check_not_worse, promote  # noqa: PLC0415
        name = ref.partition("@")[0]
        with registry.alias_lock(name, on_wait=waiting_for_a_gate(name)):  # no gate meanwhile
            sync_aliases(registry, client, [name])  # a move made in the UI since counts
            try:
                check_not_worse(registry, ref, alias)
            except PromotionRefusedError as refused:
                if not force:
                    raise
                warn(f"{refused.comparison}; promoting it because of --force")
            version = promote(registry, client, ref, alias, origin="cli")
        stale = _stale_after(version.name) if alias == "champion" else []
    if as_json:
        emit_json({"ok": True, **version.to_dict(), "stale_compositions": stale})
        return
    console.print(f"{version.ref} is now {alias} (aliases: {', '.join(version.aliases)})")
    _print_cascade_hint(version.name, stale)


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="Adapter name.")], as_json: JsonOption = False
) -> None:
    """Move ``champion`` back to the ``previous`` version."""

    with user_errors(as_json):
        registry = open_registry()
        # a typo is "no adapter named ...", not "no previous version", and before MLflow loads
        require_known(registry, [name])
        with mlflow_client(announce=not as_json) as client:
            from ..mlflow_models import sync_aliases  # noqa: PLC0415
            from ..promotion import rollback as roll_back  # noqa: PLC0415
        # not under a gate weighing against today's champion
        with registry.alias_lock(name, on_wait=waiting_for_a_gate(name)):
            sync_aliases(registry, client, [name])  # a move made in the UI since counts
            version = roll_back(registry, client, name, origin="cli")
    if as_json:
        emit_json({"ok": True, **version.to_dict()})
        return
    console.print(f"champion of {name} is {version.ref} again")


def _check_known(registry: Registry, names: list[str]) -> None:
    """A name that is neither an adapter nor a composition is a typo: say so, sync nothing."""
    from registry import NotFoundError  # noqa: PLC0415

    compositions = {c.name for c in registry.compositions()}
    unknown = [n for n in names if n not in compositions and not registry.find(name=n)]
    if unknown:
        raise NotFoundError(
            f"no adapter or composition named {', '.join(map(repr, unknown))}; "
            "`adapterops ls` and `adapterops composition ls` list them"
        )


@app.command()
def sync(
    name: Annotated[list[str] | None, typer.Argument(help="Adapters (default: all).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Copy alias moves made in the MLflow UI into the registry (MLflow wins), for adapters and
    compositions of these names (default: all); compositions MLflow lacks are mirrored first,
    and the MLflow versions of versions deleted while MLflow did not follow are removed."""

    with user_errors(as_json):
        registry = open_registry()
        _check_known(registry, name or [])
        with mlflow_client(announce=not as_json) as client:
            from ..mlflow_compositions import sync_from_mlflow  # noqa: PLC0415
            from ..mlflow_models import drop_deleted_mirrors  # noqa: PLC0415

            mirrored, changes = sync_from_mlflow(
                registry,
                client,
                name or None,
                on_wait=lambda held, composition: waiting_for_a_gate(
                    held, composition=composition
                )(),
            )
            dropped = drop_deleted_mirrors(registry, client, name or None)
    if as_json:
        emit_json({
            "ok": True, "changes": [c.to_dict() for c in changes], "mirrored": mirrored,
            "dropped": dropped,
        })  # fmt: skip
        return
    for composition in mirrored:
        console.print(f"composition {composition}: mirrored to MLflow")
    for ref in dropped:
        console.print(f"{ref}: deleted in the registry, its MLflow version removed")
    for change in changes:
        where = f"version {change.version}" if change.version is not None else "removed"
        what = "composition " if change.kind == "composition" else ""
        console.print(f"{what}{change.adapter}@{change.alias}: {where}")
    console.print(f"{len(changes)} alias change(s) taken from MLflow")
