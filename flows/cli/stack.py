"""``adapterops stack up | down | status | env | logs``: the local stack without Docker."""

from __future__ import annotations

import sys
from collections import deque
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from infra.stack.errors import StackError
from infra.stack.local import StackPorts
from registry import RegistryError

from .common import user_errors
from .options import JsonOption
from .output import console, emit_json, errors, note, warn

__all__ = ["stack_app"]

stack_app = typer.Typer(help="Run PostgreSQL, S3, MLflow and Prefect (server + worker) locally.")


def _port(service: str, key: str) -> Any:
    default = getattr(StackPorts(), key)
    help_text = f"Port for {service} (default: the last one given, else {default})."
    return typer.Option(min=1, max=65535, help=help_text)


@stack_app.command()
def up(
    postgres_port: Annotated[int | None, _port("PostgreSQL", "postgres")] = None,
    s3_port: Annotated[int | None, _port("the S3 server (SeaweedFS)", "s3")] = None,
    mlflow_port: Annotated[int | None, _port("the MLflow server and UI", "mlflow")] = None,
    prefect_port: Annotated[int | None, _port("the Prefect server and UI", "prefect")] = None,
    as_json: JsonOption = False,
) -> None:
    """Start every service that is not running and write $ADAPTEROPS_HOME/stack.env, which
    every adapterops command then reads. Ports given here are remembered."""
    from infra.stack.local import LocalStack, stack_lock  # noqa: PLC0415

    with user_errors(as_json, one_line_failures=True), stack_lock(_home(), on_wait=_waiting):
        stack = LocalStack()  # its state read once no other command changes it
        chosen = {
            "postgres": postgres_port, "s3": s3_port, "mlflow": mlflow_port,
            "prefect": prefect_port,
        }  # fmt: skip
        given = {k: v for k, v in chosen.items() if v is not None}
        if given:
            stack = stack.on_ports(**given)
        statuses = stack.up(on_service=lambda name: errors.print(f"starting {name} ..."))
    _show(statuses, as_json, env_file=str(stack.home / "stack.env"))
    hidden = _hidden_embedded_registry(stack.home)
    if hidden and not as_json:
        note(hidden)


def _hidden_embedded_registry(home: Path) -> str | None:
    """What to say of an embedded registry in ``home`` that holds versions (a quickstart's),
    which the stack's settings now hide from every command here; None if there is none."""
    database = home / "registry.db"
    if not database.is_file():
        return None
    from registry import registry_status  # noqa: PLC0415 - SQLAlchemy, only when one is there

    try:
        status = registry_status(f"sqlite:///{database}", (home / "artifacts").as_uri())
    except RegistryError:  # not one we can read: nothing to offer
        return None
    if not status.versions or status.moved:
        return None
    return (
        f"the embedded registry {database} holds {status.versions} version(s), which the stack's "
        "settings now hide from commands here: `adapterops db move --to-stack` moves them into "
        "the stack"
    )


@stack_app.command()
def down(as_json: JsonOption = False) -> None:
    """Stop every service; the data stays for the next ``stack up``."""
    from infra.stack.local import LocalStack, stack_lock  # noqa: PLC0415

    with user_errors(as_json, one_line_failures=True):
        stack = LocalStack()
        if not stack.exists:  # nothing to stop, and nothing written
            warn(f"no local stack under {stack.home}: nothing to stop")
            statuses = stack.down()
        else:
            with stack_lock(stack.home, on_wait=_waiting):
                statuses = LocalStack().down()  # its state as the command before left it
    _show(statuses, as_json)


def _home() -> Path:
    from registry.settings import adapterops_home  # noqa: PLC0415

    return adapterops_home()


def _waiting() -> None:
    note("another `adapterops stack up` or `stack down` is changing this stack; waiting for it")


@stack_app.command()
def env() -> None:
    """Print the stack's client configuration as shell exports, for tools that do not read
    stack.env themselves: eval "$(adapterops stack env)"; mlflow ui / prefect ... then use it."""
    import shlex  # noqa: PLC0415

    from infra.stack.local import LocalStack  # noqa: PLC0415

    stack = LocalStack()
    with user_errors(False):
        if not stack.exists:  # exports that point at nothing would fail later, far from here
            raise StackError(stack.missing_message())
    # the one output that is secrets on purpose: `eval` needs the database password
    out = getattr(sys.stdout, "unredacted", sys.stdout)
    for key, value in stack.client_env().items():
        print(f"export {key}={shlex.quote(value)}", file=out)
    stopped = [s.name for s in stack.status() if not s.running]
    if stopped:
        warn(f"not running: {', '.join(stopped)} (`adapterops stack up` starts them)")


@stack_app.command()
def status(as_json: JsonOption = False) -> None:
    """Each service, its URL and whether it answers; exit 1 unless all run."""
    from infra.stack.local import LocalStack  # noqa: PLC0415

    with user_errors(as_json, one_line_failures=True):
        stack = LocalStack()
        statuses = stack.status()
        if not stack.exists:
            warn(stack.missing_message())
    _show(statuses, as_json)
    if not all(s.running for s in statuses):
        raise typer.Exit(1)


@stack_app.command()
def logs(
    service: Annotated[
        str | None,
        typer.Argument(
            help="postgresql, s3, mlflow, prefect or worker (default: each).", metavar="[SERVICE]"
        ),
    ] = None,
    lines: Annotated[
        int, typer.Option("--lines", "-n", min=1, help="How many of the last lines to print.")
    ] = 20,
    as_json: JsonOption = False,
) -> None:
    """The last lines each service wrote to its log under $ADAPTEROPS_HOME/stack (the worker's
    holds what the flow runs it started printed): where to look when a service will not start
    or a deployment failed."""
    from infra.stack.local import LocalStack  # noqa: PLC0415

    with user_errors(as_json):
        stack = LocalStack()
        files = stack.log_files()
        if service is not None and service not in files:
            raise StackError(f"unknown service {service!r}: one of {', '.join(files)}")
        if not stack.exists:
            raise StackError(stack.missing_message())
        chosen = {service: files[service]} if service else files
        tails = {name: _tail(path, lines) for name, path in chosen.items()}
    if as_json:
        emit_json({
            "ok": True,
            "logs": {n: {"file": str(chosen[n]), "lines": t} for n, t in tails.items()},
        })  # fmt: skip
        return
    for name, tail in tails.items():
        console.print(Text(f"== {name}: {chosen[name]}", style="bold"))
        console.print(Text("\n".join(tail) if tail is not None else "(no log yet: never started)"))


def _tail(path: Path, lines: int) -> list[str] | None:
    """The last ``lines`` lines of ``path`` (None: no such file)."""
    if not path.is_file():
        return None
    with path.open(encoding="utf-8", errors="replace") as text:
        return [line.rstrip("\n") for line in deque(text, maxlen=lines)]


def _show(statuses: list, as_json: bool, env_file: str | None = None) -> None:
    if as_json:
        document = {"ok": True, "services": [s.to_dict() for s in statuses]}
        emit_json({**document, **({"env_file": env_file} if env_file else {})})
        return
    table = Table(title="AdapterOps local stack")
    for column in ("service", "url", "state"):
        table.add_column(column, overflow="fold")
    for s in statuses:
        state = Text("running", style="green") if s.running else Text("stopped", style="red")
        table.add_row(s.name, s.url, Text.assemble(state, f" {s.detail}".rstrip()))
    console.print(table)
    if env_file:
        console.print(f"Client configuration: {env_file} (adapterops commands read it)")
