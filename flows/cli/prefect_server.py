"""The Prefect server flows run on: its settings checked, a configured one reached, or a
temporary local one started, before any flow starts."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from contextlib import redirect_stderr
from typing import Any

from ..errors import (
    OrchestrationError,
)
from .output import warn


def prefect_settings_valid() -> None:
    """Prefect reads its settings from ``PREFECT_*`` variables when first asked for one: a value
    it refuses (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY=abc``, or under its least of 30) was
    pydantic's error about ``FlowsSettings`` deep inside the command. Said here, naming the
    variables, as bad input. Called outside a spinner: what Prefect's import prints on standard
    error is held until the settings are known good."""
    from pydantic import ValidationError  # noqa: PLC0415

    said = io.StringIO()
    with redirect_stderr(said):  # Prefect's import says "Failed to initialize plugins: ..." too
        from prefect.settings import get_current_settings  # noqa: PLC0415 - flows only
    try:
        get_current_settings()
        sys.stderr.write(said.getvalue())  # whatever else its import said, as it said it
    except ValidationError as exc:
        refused = [
            f"{_prefect_variable(exc.title, problem['loc'])}={problem.get('input')!r} "
            f"({problem['msg'].lower()})"
            for problem in exc.errors()
        ]
        raise OrchestrationError(
            f"Prefect refuses its settings in this environment: {'; '.join(refused)}: "
            f"fix or unset {'it' if len(refused) == 1 else 'them'}"
        ) from None


def _prefect_variable(model: str, location: tuple[Any, ...]) -> str:
    """The environment variable of Prefect's setting ``location`` in its settings class named
    ``model`` (``FlowsSettings``, ``heartbeat_frequency``: PREFECT_FLOWS_HEARTBEAT_FREQUENCY)."""
    from prefect.settings.models.root import Settings  # noqa: PLC0415
    from pydantic_settings import BaseSettings  # noqa: PLC0415

    field = "_".join(str(part) for part in location).upper()
    pending: list[type[BaseSettings]] = [Settings]
    while pending:
        settings = pending.pop()
        if settings.__name__ == model:
            return f"{settings.model_config.get('env_prefix') or 'PREFECT_'}{field}"
        pending += [
            f.annotation
            for f in settings.model_fields.values()
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseSettings)
        ]
    return f"the Prefect setting {field.lower()} of {model}"


def prefect_answers() -> None:
    """With a Prefect server configured (``PREFECT_API_URL``, from the environment or a Prefect
    profile), it must answer before a flow starts: one line now, not Prefect's own error from
    inside the flow's start. Without one, flows run on a temporary local server, whose database
    lives under ``PREFECT_HOME``: that folder is made here, parents too (Prefect makes none);
    :func:`start_temporary_prefect` starts the server."""
    prefect_settings_valid()  # (it imports Prefect first)
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME  # noqa: PLC0415 - flows only

    from registry.settings import adapterops_home  # noqa: PLC0415

    from ..reachable import check_answers, check_prefect_login  # noqa: PLC0415

    adapterops_home()  # a file there: one line now (flows keep caches and checkpoints in it)
    url = PREFECT_API_URL.value()
    if not url:
        PREFECT_HOME.value().mkdir(parents=True, exist_ok=True)
    else:
        check_answers(
            str(url), service="Prefect", variable="PREFECT_API_URL", error=OrchestrationError,
            then="or unset it to run flows on a temporary local server",
        )  # fmt: skip
        check_prefect_login(str(url), OrchestrationError)
        _warn_of_rare_heartbeats()


def _warn_of_rare_heartbeats() -> None:
    """A flow run on a server ``adapterops deploy`` set up is Crashed once silent for
    SILENT_SECONDS: heartbeats rarer than deploy allows would end this command's flow runs
    while they work."""
    from ..unresponsive_runs import heartbeat_problem  # noqa: PLC0415

    problem = heartbeat_problem()
    if problem is not None:
        warn(f"{problem}; this command's flow runs could be set Crashed while they work")


def start_temporary_prefect(announce: Callable[[str], None] | None = None) -> None:
    """Without ``PREFECT_API_URL``, start the temporary server Prefect would start at the first
    flow's first call, after ``announce`` says so (a build's phase), and wait until it answers:
    6 s, 20 s in a new home (it migrates a new database), which people took for a hang before
    the build's first line. Prefect keeps one per process: the flows take this one, and Prefect
    stops it at exit; one a killed command left running is stopped first
    (:mod:`.orphans`). Call :func:`prefect_answers` first."""
    from prefect.server.api.server import SubprocessASGIServer  # noqa: PLC0415 - flows only
    from prefect.settings import (  # noqa: PLC0415
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    )

    from .orphans import owned_by_this_process, stop_orphaned_servers  # noqa: PLC0415

    if PREFECT_API_URL.value():
        return
    for pid in stop_orphaned_servers():
        if announce is not None:
            announce(
                f"stopped a temporary Prefect server (pid {pid}) that a killed command had "
                "left running"
            )
    if announce is not None:
        announce("start a temporary Prefect server (PREFECT_API_URL is not set)")
    try:
        with owned_by_this_process():  # the next command stops it if this one is killed
            SubprocessASGIServer().start()
    except RuntimeError as exc:  # "Timed out while attempting to connect to ephemeral ..."
        waited = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        raise OrchestrationError(
            f"Prefect's temporary server did not answer within {waited} s "
            f"({str(exc).splitlines()[0]}): allow it longer with "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or run a Prefect server "
            "(`adapterops stack up` starts one) and set PREFECT_API_URL"
        ) from None
