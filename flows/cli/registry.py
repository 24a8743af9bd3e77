"""Registry commands: ``push``, ``import``, ``ls``, ``show``, ``pull``, ``resolve``, ``alias``,
``unalias``, ``rm`` and ``gc`` (``diff``, ``trend``, ``history``: :mod:`flows.cli.review`; ``db``:
:mod:`flows.cli.database`). The registry's location comes from ``ADAPTEROPS_REGISTRY_URL`` and
``ADAPTEROPS_ARTIFACTS_URL`` (default: SQLite and a folder under ``./.adapterops``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.text import Text

import registry as rg
from registry import AdapterVersion, RegistryError
from registry.names import check_new_alias
from registry.redaction import redact

from ..errors import DataError
from .build import SetOption
from .common import (
    checkable_before_mlflow,
    drop_mirror,
    mlflow_after_sync,
    mlflow_client,
    open_registry,
    registry_now_or_once_done,
    registry_with_adapter,
    require_known,
    require_spec_file,
    telling_a_new_registry,
    user_errors,
)
from .database import db_app
from .options import JsonOption, MetricOption, metric_values
from .output import console, emit_json, human_bytes, metrics_text, print_card, print_columns, warn
from .progress import byte_progress, counting, waiting_for_a_gate
from .quiet import quiet_libraries

__all__ = ["app", "db_app"]

app = typer.Typer()

RefArgument = Annotated[str, typer.Argument(help="name, name@VERSION or name@ALIAS", metavar="REF")]


# What a new version is registered under (push and import ask the same).
NameOption = Annotated[str, typer.Option(help="Adapter name.")]
BaseModelOption = Annotated[str, typer.Option(help="Base model it was trained on.")]
TaskOption = Annotated[str, typer.Option(help="Task, e.g. sst2.")]
LanguageOption = Annotated[str, typer.Option(help="Language code, e.g. en.")]
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
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register an adapter folder as the adapter's next version (same bytes: same version).
    Without --spec give --name, --task and --language (and --base-model unless the folder's
    files name it); with it, the --set overrides it was trained with. Without --metric, the
    metrics of the folder's report.json (written by adapterops train) are recorded. When the
    base model is on this machine, its config must match the one the adapter was trained on."""
    from ..push_job import push_folder  # noqa: PLC0415 - huggingface_hub only for this command

    with user_errors(as_json), telling_a_new_registry():
        if spec is not None:
            require_spec_file(spec, overrides=overrides)  # before torch loads
        elif overrides:
            raise DataError(
                "--set overrides fields of the spec the adapter was trained with: give that "
                "spec with --spec SPEC"
            )
        files = [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
        size = sum(p.stat().st_size for p in files)
        with byte_progress(f"push {folder.name}", size, enabled=not as_json) as on_bytes:
            result = push_folder(
                partial(open_registry, create=True),  # opened once the folder and flags pass
                folder,
                identity={
                    "name": name,
                    "base_model": base_model,
                    "task": task,
                    "language": language,
                },
                spec_file=spec,
                overrides=overrides,
                metrics=metric_values(metric) if metric else None,
                description=description,
                on_bytes=on_bytes,
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
            registry=registry_now_or_once_done(),
            base_model=base_model,
            name=name,
            task=task,
            language=language,
            metrics=metric_values(metric or []),
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
    limit: Annotated[int, typer.Option(help="At most this many rows.", min=1)] = 100,
    as_json: JsonOption = False,
) -> None:
    """List versions (by name and version, or best first with --order-by), of one adapter or
    all, filtered by base model, task, language, method or alias."""
    with user_errors(as_json):
        registry = open_registry() if name is None else registry_with_adapter(name, "ls")
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
        filters = {"base_model": base_model, "task": task, "language": language,
                   "method": method, "alias": alias}  # fmt: skip
        given = {key: value for key, value in filters.items() if value is not None}
        console.print(
            _why_none_match(registry.find(name=name), given, name)
            if name is not None or given
            else "no versions yet: `adapterops build SPEC` or `adapterops push FOLDER` adds one",
            highlight=False,
            soft_wrap=True,  # one line at any width: scripts and logs grep it
        )
        return
    _print_versions(versions, False)


def _why_none_match(
    candidates: list[rg.AdapterVersion], given: dict[str, str], name: str | None
) -> str:
    """Why ``ls`` found nothing: the first filter no version (of adapter ``name``, if given)
    holds, with the values they do hold (``--task sentiment`` when the tasks are sst2 and nli),
    else that the filters hold apart but not together."""
    of = f" of {name}" if name is not None else ""
    for key, value in given.items():
        held = sorted(
            {alias for v in candidates for alias in v.aliases}
            if key == "alias"
            else {getattr(v, key) for v in candidates}
        )
        if value in held:
            continue
        what = key.replace("_", " ")
        plural = "aliases" if key == "alias" else f"{what}s"
        shown = ", ".join(held[:10]) + (f" and {len(held) - 10} more" if len(held) > 10 else "")
        here = f"{plural}{of or ' here'}: {shown}" if held else f"none holds an {what}"
        return f"no version{of} has {what} {value!r}; {here} (`adapterops ls` lists all)"
    return f"no version{of} matches all of these filters together (`adapterops ls` lists all)"


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
    """Everything about one version: its record, metrics, lineage and spec, and the
    compositions and fusions that run over it."""
    with user_errors(as_json):
        registry = open_registry()
        version = registry.get(ref)
        if spec_only and not version.spec:
            raise DataError(
                f"{version.ref} was registered without a spec (push without --spec): there is "
                f"none to print; `adapterops show {version.ref}` prints its record"
            )
        users = registry.used_by(version.ref)
    if as_json:
        emit_json(version.spec if spec_only else {**version.to_dict(), "used_by": users.to_dict()})
    elif spec_only:
        console.print(Text(_yaml(version.spec)), soft_wrap=True)
    else:
        _print_version_card(version, users)


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
        with byte_progress(f"pull {version.ref}", version.size, enabled=not as_json) as on_bytes:
            if verify:
                probe = _pull_verified(registry, version, destination, on_bytes)
                folder = destination
            else:
                folder = registry.fetch(version.ref, destination, on_bytes=on_bytes)
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


def _pull_verified(
    registry: Any,
    version: AdapterVersion,
    destination: Path,
    on_bytes: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Fetch as ``pull`` does, the probes checked on the verified files before they move into
    place (a folder pulled into before gets the same files replaced, its other files kept)."""
    from ..verify_job import verify_on_base  # noqa: PLC0415 - torch and transformers

    quiet_libraries()
    checks = []
    registry.fetch(
        version.ref, destination, on_bytes=on_bytes,
        check_files=lambda staged: checks.append(verify_on_base(version, staged)),
    )  # fmt: skip
    (check,) = checks
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
        check_new_alias(name)  # before MLflow loads, as the name below
        registry = open_registry()
        require_known(registry, [checkable_before_mlflow(ref)])  # before MLflow loads
        with mlflow_client(announce=not as_json) as client:
            from ..promotion import move_alias  # noqa: PLC0415

            adapter = ref.partition("@")[0]  # a gate deciding moves it first, then this
            with registry.alias_lock(adapter, on_wait=waiting_for_a_gate(adapter)):
                version = move_alias(registry, client, ref, name, origin="cli")
    _print_versions([version], as_json, single=True)


@app.command()
def unalias(
    adapter: Annotated[str, typer.Argument(help="Adapter name.")],
    name: Annotated[str, typer.Argument(help="Alias to remove, e.g. previous.")],
    as_json: JsonOption = False,
) -> None:
    """Take an alias off an adapter, in MLflow first (then its version may be deleted)."""
    with user_errors(as_json):
        registry = registry_with_adapter(  # before MLflow loads
            adapter,
            "unalias",
            instead=lambda bare: (
                f"`adapterops unalias {bare} {name}` takes {name} off whichever version holds it"
            ),
        )
        with mlflow_client(announce=not as_json) as client:
            from ..mlflow_models import sync_aliases  # noqa: PLC0415
            from ..promotion import remove_alias  # noqa: PLC0415

            with registry.alias_lock(adapter, on_wait=waiting_for_a_gate(adapter)):
                sync_aliases(registry, client, [adapter])  # a move made in the UI since counts
                remove_alias(registry, client, adapter, name, origin="cli")
    if as_json:
        emit_json({"ok": True, "adapter": adapter, "removed": name})
        return
    console.print(f"removed alias {name} from {adapter}")


@app.command("rm")
def remove(ref: RefArgument, as_json: JsonOption = False) -> None:
    """Delete a version that no alias, composition or fusion refers to (aliases moved in the
    MLflow UI count), and the MLflow version that mirrors it, so no reviewer can point an alias
    at it."""
    with user_errors(as_json):
        registry = open_registry()
        name = registry.get(ref).name  # no such version: one line, before MLflow loads
        client, unreachable = mlflow_after_sync(
            registry, name, composition=False, announce=not as_json
        )
        version = registry.delete(ref, origin="cli")
    from ..mlflow_names import adapter_model  # noqa: PLC0415

    drop_mirror(
        registry, client, unreachable, adapter_model(version.name), version.version, version.ref
    )
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
    shared_with: Annotated[
        list[str] | None,
        typer.Option(
            "--shared-with",
            help="The database URL of another registry writing to this artifact store (once "
            "per registry): the files any of them refers to are kept.",
            metavar="DATABASE_URL",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Delete stored blobs that no version refers to (left by crashes or deletions). A store
    several registries write to is collected only with all of them (--shared-with)."""
    with user_errors(as_json):
        if not 0 <= older_than_minutes <= _TEN_YEARS_IN_MINUTES:  # also refuses nan and inf
            raise RegistryError(
                f"--older-than-minutes must be a number of minutes from 0 to "
                f"{_TEN_YEARS_IN_MINUTES:.0f}, got {older_than_minutes}"
            )
        grace = timedelta(minutes=older_than_minutes)
        registry = open_registry()
        others = [_sharing_registry(url, registry.artifacts.url) for url in shared_with or ()]
        spared: list[str] = []
        with counting("reading manifests", enabled=not as_json) as on_progress:
            removed = registry.gc(
                older_than=grace, dry_run=dry_run, shared_with=others, on_progress=on_progress,
                spared=spared,
            )  # fmt: skip
    if as_json:
        emit_json({"ok": True, "dry_run": dry_run, "removed": removed, "spared": spared})
        return
    verb = "would remove" if dry_run else "removed"
    said = f"{verb} {len(removed)} unreferenced blob(s)"
    if spared:  # right after `rm` of a version registered within the hour: why nothing went
        said += (
            f"; {len(spared)} more written in the last {older_than_minutes:g} minutes are kept "
            "(a registration may be uploading them): --older-than-minutes 0 takes them too "
            "when nothing is registering"
        )
    console.print(said, highlight=False, soft_wrap=True)


def _sharing_registry(url: str, artifacts_url: str) -> rg.Registry:
    """The registry at ``--shared-with URL``, over this store (its files are here, whatever its
    own settings say); a problem with it names the option, not ADAPTEROPS_REGISTRY_URL only."""
    try:
        return rg.Registry(url, artifacts_url, create=False)
    except RegistryError as exc:
        raise RegistryError(f"--shared-with {redact(url)}: {exc}") from None


def _print_versions(versions: list[AdapterVersion], as_json: bool, *, single: bool = False) -> None:
    if as_json:
        emit_json(versions[0].to_dict() if single else [v.to_dict() for v in versions])
        return
    rows = {
        "ref": [v.ref for v in versions],
        "aliases": [", ".join(v.aliases) for v in versions],
        "metrics": [metrics_text(v.metrics) for v in versions],
        "task": [v.task for v in versions],
        "lang": [v.language for v in versions],
        "method": [v.method for v in versions],
        "base model": [v.base_model for v in versions],
        "size": [human_bytes(v.size) for v in versions],
        "digest": [v.digest[:12] for v in versions],
    }  # most wanted first: narrow terminals (CI logs at 80 columns) drop from the end
    print_columns(rows)


def _print_version_card(version: AdapterVersion, users: rg.UsedBy) -> None:
    """``show`` for a person: the record as labelled lines, then the spec as the YAML it was
    written in (``--json`` has every field as it is stored)."""
    fingerprint = version.base_model_fingerprint
    revision = f" at {version.base_model_revision}" if version.base_model_revision else ""
    lines = {
        "task": f"{version.task}, language {version.language}",
        "method": f"{version.method}, head {version.head}",
        "base model": version.base_model + revision
        + (f" (fingerprint {rg.shown(fingerprint)})" if fingerprint else ""),
        "size": f"{human_bytes(version.size)}, digest {rg.shown(version.digest)}",
        "created": version.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        "metrics": metrics_text(version.metrics, "  ") or "-",
        **{key: rg.shown(value, key) for key, value in sorted(version.lineage.items())},
        "files": version.artifact_uri,
        "description": version.description,
        "used by": ", ".join(users.phrases()),
    }  # fmt: skip
    print_card(version.ref, version.aliases, lines)
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
