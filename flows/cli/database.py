"""Registry database maintenance: ``db upgrade`` (create or migrate the schema), ``db status``
(where the registry is, its schema, what it holds, who else writes to its artifact store),
``db verify`` (every stored file read back against its digest) and ``db move`` (the registry
into another database and artifact store)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from registry import RegistryError, Settings

from .common import from_stack_env, open_registry, user_errors
from .options import JsonOption
from .output import console, emit_json, errors, human_bytes, note
from .progress import bytes_to_come
from .quiet import quiet_libraries

if TYPE_CHECKING:
    from registry import Registry

    from ..verify_job import ProbeOutcome

__all__ = ["db_app"]

db_app = typer.Typer(help="Registry database maintenance.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(as_json: JsonOption = False) -> None:
    """Create or migrate the registry database at ADAPTEROPS_REGISTRY_URL."""
    with user_errors(as_json):
        from registry.db import Database  # noqa: PLC0415 - SQLAlchemy loads only when used

        url = Settings.from_env().database_url
        database = Database(url, auto_migrate=False, verify=False)
        try:
            before = database.upgrade()  # as found under the schema lock: another may be first
            after = database.revision()
        finally:
            database.dispose()
    if as_json:
        emit_json({"ok": True, "from": before, "to": after})
        return
    change = f"already at {after}" if before == after else f"{before or 'empty'} -> {after}"
    console.print(
        f"registry database {database.safe_url}: schema {change} (the newest)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@db_app.command("status")
def db_status(as_json: JsonOption = False) -> None:
    """Where the registry is (ADAPTEROPS_REGISTRY_URL, ADAPTEROPS_ARTIFACTS_URL), its schema
    (and whether `db upgrade` is due), how many adapters, versions and compositions it holds,
    and which other registries write to its artifact store (gc then needs --shared-with). Changes
    nothing (a SQLite schema that is behind is reported, not migrated)."""
    with user_errors(as_json):
        from registry.status import registry_status  # noqa: PLC0415 - loads SQLAlchemy

        status = registry_status()
    if as_json:
        emit_json({"ok": True, "up_to_date": status.up_to_date, **vars(status)})
        return
    schema = (
        f"{status.revision} (the newest)"
        if status.up_to_date
        else f"{status.revision or 'none'}, this code needs {status.head}: run "
        "`adapterops db upgrade`"
    )
    lines = [f"registry   {status.database}", f"schema     {schema}"]
    if status.identity is not None:
        lines += [
            f"id         {status.identity}",
            f"holds      {status.adapters} adapter(s), {status.versions} version(s), "
            f"{status.compositions} composition(s)",
        ]
    if status.moved is not None:
        from registry.move_marker import where_it_went  # noqa: PLC0415 - SQLAlchemy, loaded

        lines.append(f"moved      {where_it_went(status.moved)}")
    lines.append(f"artifacts  {status.artifacts}")
    lines += [
        f"           also written by {' '.join(words.split()) or identity}: gc needs its "
        "database (--shared-with DATABASE_URL)"
        for identity, words in sorted(status.other_writers.items())
    ]
    console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)


@db_app.command("verify")
def db_verify(
    refs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Adapters (NAME: every version), versions (NAME@3, NAME@champion) or "
            "compositions (their members' versions) to check; default: every version.",
            metavar="REF",
            show_default=False,
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="Check each file's presence and size from the store's listing, downloading "
            "nothing: finds missing and truncated files, not altered bytes.",
        ),
    ] = False,
    probes: Annotated[
        bool,
        typer.Option(
            "--probes",
            help="Also load each version whose files are whole onto its base model here and "
            "re-run its golden probes (as pull --verify does): after an upgrade of torch or "
            "transformers, or of a base model's folder, do they still compute what they did?",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Read back every file of the registry's versions from the artifact store and check it
    against its digest (as a download does, each shared file once), naming each damaged or
    missing file and the versions it breaks: exit 0 when all are whole, 1 when any is not (or,
    with --probes, when a version's probes deviate). Changes nothing. To repair a file, register
    the folder it came from again (`adapterops push FOLDER`): the same bytes replace the
    damaged copy for every version that lists it."""
    with user_errors(as_json):
        if quick and probes:
            raise RegistryError(
                "--quick reads no file and --probes loads every version's: give one of them"
            )
        registry = open_registry()
        # the probes first: each version they download is checked whole on the way (a download
        # checks every digest), and the digest check then reads only the files left
        whole: set[str] = set()
        versions = [version.ref for version in registry.versions_of(refs or [])] if probes else []
        outcomes = _probed(registry, versions, as_json, whole) if probes else []
        with bytes_to_come("verifying", enabled=not as_json and not quick) as bar:
            set_total, advance = bar if bar is not None else (None, None)
            report = registry.verify(
                refs or [], quick=quick, on_total=set_total, on_bytes=advance, known_whole=whole
            )
    damaged = [vars(each) for each in report.damaged]
    failed = [o for o in outcomes if o.status == "failed"]
    if as_json:
        found = {"probes": [vars(o) for o in outcomes]} if probes else {}
        emit_json({"ok": not damaged and not failed, **vars(report), "damaged": damaged, **found})
    else:
        how = "listed (sizes only)" if quick else "read back"
        checked = (
            f"{report.versions} version(s), {report.files} file(s) "
            f"({human_bytes(report.bytes)}) {how} from {registry.artifacts.url}"
        )
        lines = [f"{checked}: every file whole" if not damaged else f"{checked}:"]
        lines += [
            f"  {each.file} of {', '.join(each.versions)}: {each.problem} (sha256 "
            f"{each.digest[:12]}..., {each.uri})"
            for each in report.damaged
        ]
        if damaged:
            lines.append(
                "to repair: register the folder each came from again (`adapterops push FOLDER` "
                "with its name, task and language; a build wrote it to out/NAME), which replaces "
                "the damaged copy; without it, move the versions' aliases and `adapterops rm` them"
            )
        if probes:
            lines += _probe_lines(outcomes)
        console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)
    if damaged or failed:
        raise typer.Exit(1)


def _probed(
    registry: Registry, refs: Sequence[str], as_json: bool, whole: set[str]
) -> list[ProbeOutcome]:
    """Each version's golden probes re-run on its base model here (torch loads only now); the
    versions downloaded whole go into ``whole``, those with damaged files get no outcome."""
    from ..verify_job import probe_versions  # noqa: PLC0415 - torch and transformers

    quiet_libraries()

    def say(line: str) -> None:  # a base model loads in seconds to minutes
        if not as_json and errors.is_terminal:
            note(line)

    return probe_versions(
        registry, refs,
        on_version=lambda ref, index: say(f"golden probes of {ref} ({index + 1}/{len(refs)})"),
        on_phase=say, whole=whole,
    )  # fmt: skip


def _probe_lines(outcomes: Sequence[ProbeOutcome]) -> list[str]:
    counts = Counter(o.status for o in outcomes)
    summary = ", ".join(f"{counts[s]} {s}" for s in ("passed", "failed", "not checked"))
    return [
        f"golden probes of {len(outcomes)} version(s) with whole files, on the base models "
        f"here: {summary}",
        *(f"  {o.ref}: {o.status}: {o.detail}" for o in outcomes),
    ]


@db_app.command("move")
def db_move(
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="The new, empty registry database: a SQLAlchemy URL "
            "(postgresql+psycopg://USER@HOST/DB, with the password after USER:, or "
            "sqlite:///path.db); a new one is migrated first.",
        ),
    ] = None,
    artifacts: Annotated[
        str | None,
        typer.Option(
            help="The new artifact store (s3://bucket/prefix, file:///path); default: keep this "
            "registry's (nothing is copied)."
        ),
    ] = None,
    to_stack: Annotated[
        bool,
        typer.Option(
            "--to-stack",
            help="Into the local stack's registry and bucket (`adapterops stack up` in this "
            "ADAPTEROPS_HOME), from the embedded one the stack's settings hide.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Check the new database and store and count what would move; change nothing.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Move the registry (ADAPTEROPS_REGISTRY_URL, ADAPTEROPS_ARTIFACTS_URL) into another
    database and artifact store: versions and their numbers, aliases, metrics, lineage,
    compositions and histories, and every file (checked against its digest). The registry keeps
    its id, so MLflow, the Prefect deployments and the store's marker need nothing; the old
    database refuses writes from the start of the move, naming the new place (reading it still
    works). A move that fails leaves it as it was; one stopped half-way is finished by running
    the same command again."""
    with user_errors(as_json):
        source, to, artifacts = _move_ends(to, artifacts, to_stack=to_stack)
        with bytes_to_come("moving the registry", enabled=not as_json and not dry_run) as bar:
            set_total, advance = bar if bar is not None else (None, None)
            report = source.move_to(
                to,
                artifacts,
                on_wait=lambda: note("another move of this registry runs: waiting for it"),
                on_total=set_total,
                on_bytes=advance,
                dry_run=dry_run,
            )
    old = source.database.safe_url
    if as_json:
        emit_json({"ok": True, "from": old, **vars(report)})
        return
    if dry_run:
        console.print(
            f"would move registry {report.identity} from {old} to {report.database} (artifacts "
            f"{report.artifacts}): {report.adapters} adapter(s), {report.versions} version(s), "
            f"{report.compositions} composition version(s), {report.events} event(s); "
            f"{report.files} file(s), {report.copied} to copy "
            f"({human_bytes(report.copied_bytes)}). Nothing was changed",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return
    how = (
        "a move stopped earlier, finished now"
        if report.finished_earlier_move
        else f"{report.files} file(s), {report.copied} copied ({human_bytes(report.copied_bytes)})"
    )
    lines = [
        f"moved registry {report.identity} to {report.database} (artifacts {report.artifacts}): "
        f"{report.adapters} adapter(s), {report.versions} version(s), {report.compositions} "
        f"composition version(s), {report.events} event(s); {how}",
        f"{old} now refuses writes and names the new place; reading it still works",
    ]
    if to_stack:
        lines.append("commands in this ADAPTEROPS_HOME use the stack's registry already")
    else:
        lines += [
            "next: point every environment that writes (workers, CI, your shell) at the new "
            "place (with the database's password):",
            f"  export ADAPTEROPS_REGISTRY_URL='{report.database}'",
            f"  export ADAPTEROPS_ARTIFACTS_URL='{report.artifacts}'",
        ]
    if report.abandoned:
        lines.append(f"(an earlier move to {report.abandoned}, stopped half-way, was given up)")
    console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)


_LOCATIONS = ("ADAPTEROPS_REGISTRY_URL", "ADAPTEROPS_ARTIFACTS_URL")


def _move_ends(
    to: str | None, artifacts: str | None, *, to_stack: bool
) -> tuple[Registry, str, str | None]:
    """The registry to move, and the database and store to move it to. ``--to-stack``: from
    the embedded registry (or the one the user's own variables name) into the local stack's,
    whose ``stack.env`` otherwise names it as the registry of every command here."""
    from dotenv import dotenv_values  # noqa: PLC0415

    from registry import Registry  # noqa: PLC0415 - SQLAlchemy loads only when used
    from registry.settings import adapterops_home, setting  # noqa: PLC0415

    if to_stack and (to or artifacts):
        raise RegistryError(
            "--to-stack names the new database and store: give no --to or --artifacts"
        )
    if not to_stack:
        if not to:
            raise RegistryError(
                "give --to DATABASE_URL (the new, empty registry database), or --to-stack (the "
                "local stack's)"
            )
        return open_registry(), to, artifacts
    home = adapterops_home()
    stack = dotenv_values(home / "stack.env")
    if not all(stack.get(name) for name in _LOCATIONS):
        raise RegistryError(
            f"no local stack in {home} (no stack.env naming its registry): `adapterops stack up` "
            "starts one (with this ADAPTEROPS_HOME), then run this again"
        )
    # the user's own variables name the registry to move, unless they are the stack's own
    # (`eval "$(adapterops stack env)"` exports them)
    database, store = (
        "" if from_stack_env(name) or setting(name) == stack[name] else setting(name)
        for name in _LOCATIONS
    )
    if not store:  # from a folder into the stack's S3: its endpoint and keys, not the shell's
        # (AWS_* set for another S3 hid stack.env's, and the stack's bucket was looked up there)
        os.environ.update({k: str(v) for k, v in stack.items() if k.startswith("AWS_") and v})
    source = Registry(
        database or f"sqlite:///{home / 'registry.db'}",
        store or (home / "artifacts").as_uri(),
        create=False,
    )
    return source, str(stack[_LOCATIONS[0]]), str(stack[_LOCATIONS[1]])
