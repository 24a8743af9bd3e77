"""The ``adapterops`` command line.

Exit codes: 0 success; 2 bad input (spec, data, base model, adapter files, references: the message
says what to fix); 1 an unexpected failure. Every command takes ``--json`` for scripts and CI.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from registry.redaction import RedactingStream

from . import build, lifecycle, operate, registry
from .common import plain_warnings, quiet_optional_kernels, quiet_store_creation
from .compositions import composition_app
from .help import plain_value_names
from .stack import stack_app

__all__ = ["app", "main"]

app = typer.Typer(
    name="adapterops",
    help="Train, evaluate, register and promote PEFT adapters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # markdown: docstrings' line breaks are not kept, and ``code`` shows as code
    rich_markup_mode="markdown",
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(wanted: bool) -> None:
    if wanted:
        from .. import __version__  # noqa: PLC0415

        typer.echo(f"adapterops {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Train, evaluate, register and promote PEFT adapters."""


for commands in (build.app, lifecycle.app, operate.app, registry.app):
    app.registered_commands.extend(commands.registered_commands)
app.add_typer(registry.db_app, name="db")
app.add_typer(composition_app, name="composition")
app.add_typer(stack_app, name="stack")


def main() -> None:
    """Entry point of the console script."""
    # Flow and task state lines would bury the progress bar and results; warnings still show.
    # PREFECT_LOGGING_LEVEL=INFO brings them back.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    load_stack_env()
    use_our_prefect_home()
    quiet_optional_kernels()
    quiet_store_creation()
    plain_warnings()
    # whatever prints (we, rich, Prefect, MLflow's run links), no password or key shows
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    plain_value_names(typer.main.get_command(app))()


def use_our_prefect_home() -> None:
    """Prefect's temporary server (no ``PREFECT_API_URL``) keeps its state under
    ``$ADAPTEROPS_HOME/prefect``, not ``~/.prefect``, and sends no telemetry: offline machines got
    a long telemetry traceback on every build. Variables already set win."""
    from registry.settings import adapterops_home  # noqa: PLC0415

    if "PREFECT_HOME" not in os.environ:
        prefect_home = adapterops_home() / "prefect"
        prefect_home.mkdir(parents=True, exist_ok=True)  # Prefect makes only the last folder
        os.environ["PREFECT_HOME"] = str(prefect_home)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def load_stack_env() -> None:
    """Use the local stack when ``adapterops stack up`` wrote its client configuration;
    variables already set in the environment win."""
    from dotenv import load_dotenv  # noqa: PLC0415

    from registry.settings import adapterops_home  # noqa: PLC0415

    path = adapterops_home() / "stack.env"
    if path.is_file():
        load_dotenv(path, override=False)
