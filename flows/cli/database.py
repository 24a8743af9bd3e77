"""Registry database maintenance: ``db upgrade`` (create or migrate the schema) and ``db status``
(where the registry is, its schema, what it holds, who else writes to its artifact store)."""

from __future__ import annotations

import typer

from registry import Settings

from .common import JsonOption, console, emit_json, user_errors

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
    lines.append(f"artifacts  {status.artifacts}")
    lines += [
        f"           also written by {' '.join(words.split()) or identity}: gc needs its "
        "database (--shared-with DATABASE_URL)"
        for identity, words in sorted(status.other_writers.items())
    ]
    console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)
