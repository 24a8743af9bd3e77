"""The ``adapterops`` command line.

Exit codes: 0 success; 2 bad input (spec, data, base model, adapter files, references: the message
says what to fix); 1 an unexpected failure; 143 stopped by SIGTERM (after its cleanup), 129 by
SIGHUP (its terminal closed), 130 by Ctrl-C. Every command takes ``--json`` for scripts and CI.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from contextlib import suppress
from typing import Annotated

import typer

from registry.redaction import RedactingStream

from ..stopping import StopRequested, raise_on_sigterm
from ..unresponsive_runs import HEARTBEAT_SECONDS, HEARTBEAT_VARIABLE
from . import build, database, lifecycle, operate, registry, review
from .common import EXIT_FAILURE, full_or_read_only_disk, remember_stack_env
from .compositions import composition_app
from .help import plain_value_names
from .output import emit_json, errors, labelled
from .quick_exit import exit_without_teardown
from .quiet import plain_warnings, quiet_foreign_deprecations, quiet_mlflow, quiet_optional_kernels
from .stack import stack_app
from .typed_values import not_utf8_setting, refuse_unusable_values

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


for commands in (build.app, lifecycle.app, operate.app, registry.app, review.app):
    app.registered_commands.extend(commands.registered_commands)
app.add_typer(database.db_app, name="db")
app.add_typer(composition_app, name="composition")
app.add_typer(stack_app, name="stack")


def main(*, teardown: bool = False) -> None:
    """Entry point of the console script: runs the command named in ``sys.argv`` and exits
    with its status. ``teardown``: exit by raising ``SystemExit``, as ``sys.exit`` does (for a
    caller in the same process); otherwise without Python's teardown of every module
    (:mod:`.quick_exit`: a second or more after the last line)."""
    try:
        _run_command()
    except SystemExit as done:
        if teardown:
            raise
        exit_without_teardown(done.code)


def _run_command() -> None:
    """The command named in ``sys.argv``, run; ends by raising ``SystemExit`` with its status."""
    # Flow and task state lines would bury the progress bar and results; warnings still show.
    # PREFECT_LOGGING_LEVEL=INFO brings them back.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    load_stack_env()
    use_our_prefect_home()
    quiet_optional_kernels()
    quiet_foreign_deprecations()
    quiet_mlflow()
    plain_warnings()
    # whatever prints (we, rich, Prefect, MLflow's run links), no password or key shows
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    command = refuse_unusable_values(plain_value_names(typer.main.get_command(app)))
    json_output = "--json" in sys.argv[1:]
    raise_on_sigterm()  # a supervisor's stop unwinds the command: its cleanup runs
    try:
        unusable = not_utf8_setting(os.environ)
        if unusable is not None and not {"--help", "-h", "--version"} & set(sys.argv[1:]):
            raise typer.BadParameter(unusable)
        outcome = command.main(standalone_mode=False)
    except StopRequested as stop:
        sys.exit(_report_stop(stop, json_output=json_output))
    except typer.TyperException as exc:  # typer's click errors: UsageError, BadParameter, ...
        sys.exit(_report_usage_error(exc, json_output=json_output))
    except typer.Abort:  # end of input at a prompt (Ctrl-C comes back as 130)
        if not json_output:
            errors.print("Aborted.", highlight=False)
        sys.exit(1)
    except OSError as exc:  # a full disk is the machine's state, not a bug: one line, exit 1
        behind = _stop_behind(exc)
        if behind is not None:  # a write to a terminal SIGHUP closed (EIO) while unwinding
            sys.exit(_report_stop(behind, json_output=json_output))
        message = full_or_read_only_disk(exc)
        if message is None:
            raise
        _drop_unwritten_output()
        errors.print(labelled("error:", "bold red", message), highlight=False, soft_wrap=True)
        sys.exit(EXIT_FAILURE)
    # without standalone mode a typer.Exit(code) comes back as its code; a command's own
    # return value (None) means success
    sys.exit(outcome if type(outcome) is int else 0)


def _stop_behind(exc: BaseException) -> StopRequested | None:
    """The :class:`StopRequested` whose unwinding ``exc`` was raised in, if any: after SIGHUP
    a progress bar's last write to the closed terminal fails, and that error replaces the
    stop on its way out."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, StopRequested):
            return seen
        seen = seen.__context__
    return None


def _report_stop(stop: StopRequested, *, json_output: bool) -> int:
    """One ``stopped:`` line (and with ``--json`` a JSON document) for a command a signal
    stopped, once its cleanup ran; returns the status a shell gives a process that signal
    ended (143 for SIGTERM), which supervisors and CI read as "stopped", not "failed"."""
    message = (
        f"{signal.Signals(stop.signum).name} received before the command finished; run it "
        "again to finish (a build carries on from its last checkpoint)"
    )
    # after SIGHUP the terminal may be gone (EIO): the status still says what happened
    with suppress(OSError):
        if json_output:
            emit_json({"ok": False, "error": message, "kind": "StopRequested"})
        errors.print(labelled("stopped:", "bold yellow", message), highlight=False, soft_wrap=True)
    return stop.exit_status


def _drop_unwritten_output() -> None:
    """Point stdout at /dev/null: what it still buffers cannot be written (the disk is full), and
    Python's flush at exit would print a second error about it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.__stdout__.fileno() if sys.__stdout__ else 1)
    os.close(devnull)


def _report_usage_error(exc: typer.TyperException, *, json_output: bool) -> int:
    """One ``error:`` line for a usage error click caught (an unknown option, a bad value, a
    missing argument), naming the help page, rather than click's usage line and framed box; with
    ``--json`` also one JSON document on stdout, since a script reads stdout. Returns the exit
    code (2)."""
    code = int(getattr(exc, "exit_code", 2))
    context = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and not json_output:
        return code  # a group run bare (``adapterops db``) has printed its help page already
    message = " ".join(str(exc.format_message()).split())
    if json_output:
        emit_json({"ok": False, "error": message, "kind": "UsageError"})
    elif context is not None:  # click's usage line, folded into the one line
        usage = " ".join(context.get_usage().split()).removeprefix("Usage: ")
        message = f"{message.rstrip('.')}. Usage: {usage} (-h for help)"
    errors.print(labelled("error:", "bold red", message), highlight=False, soft_wrap=True)
    return code


def use_our_prefect_home() -> None:
    """Prefect's temporary server (no ``PREFECT_API_URL``) keeps its state under
    ``$ADAPTEROPS_HOME/prefect``, not ``~/.prefect``, and sends no telemetry: offline machines got
    a long telemetry traceback on every build; it may take 90 s to start. Variables already set
    win. The folder itself is made only when a flow runs (``prefect_server.prefect_answers``):
    ``--help`` and the registry's commands write nothing."""
    from registry.settings import SettingError, adapterops_home  # noqa: PLC0415

    with suppress(SettingError):  # said in one line by the command that uses the home
        if "PREFECT_HOME" not in os.environ:
            os.environ["PREFECT_HOME"] = str(adapterops_home() / "prefect")
            # Prefect makes its home when imported, but not the folders above it: a new user's
            # first `quickstart` warned "Failed to create the Prefect home directory". Ours is
            # made, parents too, before a flow needs it (prefect_server.prefect_answers).
            warnings.filterwarnings(
                "ignore", "Failed to create the Prefect home directory", UserWarning
            )
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # heartbeats: a run whose process died unseen is set Crashed (flows.unresponsive_runs)
    os.environ.setdefault(HEARTBEAT_VARIABLE, str(HEARTBEAT_SECONDS))
    # The client's own telemetry (Prefect 3.5+): at a terminal it printed a notice on the first
    # flow run in each home; this is Prefect's documented client-side opt-out.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # Prefect waits 20 s for it; its first start migrates a new database, which on a busy
    # 2-core CI runner took longer ("Timed out while attempting to connect to ephemeral
    # Prefect API server", the build failed)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def load_stack_env() -> None:
    """Use the local stack when ``adapterops stack up`` wrote its client configuration;
    variables already set in the environment win."""
    from dotenv import dotenv_values, load_dotenv  # noqa: PLC0415

    from registry.settings import SettingError, adapterops_home  # noqa: PLC0415

    try:
        path = adapterops_home() / "stack.env"
    except SettingError:  # said in one line by the command that uses the home
        return
    if path.is_file():
        remember_stack_env(path, [key for key in dotenv_values(path) if key not in os.environ])
        load_dotenv(path, override=False)
