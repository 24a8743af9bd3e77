"""Flow runs whose process died unseen, set Crashed once their heartbeats stop.

A deployed build whose machine is lost (a preempted GPU node, an evicted pod, a worker that died
with its runs) reports nothing: Prefect showed it Running for ever, and the next attempt of the
same build (:mod:`flows.flow_run_attempts`) may come a day later, or never if its spec changed.
Prefect's way for a server of one's own is heartbeats and an automation: every flow run sends a
heartbeat event each :data:`HEARTBEAT_SECONDS` (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``: set for
the flows the CLI runs, the stack's worker, and in each deployment's job variables), and
``adapterops deploy`` creates, once per server (and brings up to date one an older version
made), an automation that sets Crashed a run of these flows whose heartbeats stopped for
:data:`SILENT_SECONDS` with no final state after them.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Literal

__all__ = [
    "AUTOMATION_NAME",
    "HEARTBEAT_SECONDS",
    "HEARTBEAT_VARIABLE",
    "SILENT_SECONDS",
    "AutomationChange",
    "ensure_heartbeat_automation",
    "heartbeat_problem",
    "heartbeat_seconds_to_deploy",
]

HEARTBEAT_VARIABLE = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
HEARTBEAT_SECONDS = 60
SILENT_SECONDS = 600  # ten heartbeats missed: a loaded machine delays a few, never ten
MINIMUM_HEARTBEAT_SECONDS = 30  # Prefect's least
LONGEST_HEARTBEAT_SECONDS = SILENT_SECONDS // 4  # four missed before a live run is taken as lost
AUTOMATION_NAME = "adapterops: crash flow runs whose heartbeats stopped"
# this project's flows (flows.pipelines); another team's flows on a shared server are theirs
FLOW_NAMES = ("build", "retrain", "cascade", "prepare", "sync")
_FINAL = ("Completed", "Failed", "Cancelled", "Crashed")
AutomationChange = Literal["created", "updated", "unchanged"]


def heartbeat_seconds_to_deploy() -> int:
    """The heartbeat interval a deployment's runs are given (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``
    here, else :data:`HEARTBEAT_SECONDS`), refused where the automation would set Crashed a live
    run between two of its heartbeats."""
    from .errors import OrchestrationError  # noqa: PLC0415 - infra.stack imports this module

    problem = heartbeat_problem()
    if problem is not None:
        raise OrchestrationError(f"{problem}; nothing was deployed")
    written = os.environ.get(HEARTBEAT_VARIABLE, "").strip()
    return int(written) if written else HEARTBEAT_SECONDS


def heartbeat_problem() -> str | None:
    """What is wrong with the heartbeat interval this environment sets, or None: one the
    automation would take for a lost machine's silence (or one Prefect refuses)."""
    written = os.environ.get(HEARTBEAT_VARIABLE, "").strip()
    try:
        seconds = int(written) if written else HEARTBEAT_SECONDS
    except ValueError:
        seconds = 0
    if MINIMUM_HEARTBEAT_SECONDS <= seconds <= LONGEST_HEARTBEAT_SECONDS:
        return None
    return (
        f"{HEARTBEAT_VARIABLE}={written!r}: flow runs send a heartbeat that often, and the "
        f"automation `adapterops deploy` creates sets Crashed a run silent for {SILENT_SECONDS} "
        f"s: set it to {MINIMUM_HEARTBEAT_SECONDS} to {LONGEST_HEARTBEAT_SECONDS} seconds, or "
        f"unset it ({HEARTBEAT_SECONDS})"
    )


def ensure_heartbeat_automation(*, silent_seconds: int = SILENT_SECONDS) -> AutomationChange:
    """Create the automation on the server ``PREFECT_API_URL`` names, or bring the one of its
    name there up to this definition (one an older AdapterOps made watches other flows or
    waits another time; whether a person turned it off is kept): what was done."""
    from prefect.client.orchestration import get_client  # noqa: PLC0415 - flows only
    from prefect.client.schemas.objects import StateType  # noqa: PLC0415
    from prefect.events.actions import ChangeFlowRunState  # noqa: PLC0415
    from prefect.events.schemas.automations import (  # noqa: PLC0415
        AutomationCore,
        EventTrigger,
        Posture,
    )
    from prefect.events.schemas.events import ResourceSpecification  # noqa: PLC0415

    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(AUTOMATION_NAME)
        trigger = EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in _FINAL)},
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=ResourceSpecification(
                {"prefect.resource.role": "flow", "prefect.resource.name": list(FLOW_NAMES)}
            ),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=silent_seconds),
        )
        message = (
            f"no heartbeat for {silent_seconds} s: its process is gone (a lost machine or "
            "worker, an evicted pod); set Crashed by the automation adapterops deploy created"
        )
        wanted = AutomationCore(
            name=AUTOMATION_NAME,
            description=__doc__.split("\n\n")[0] if __doc__ else "",
            trigger=trigger,
            actions=[
                ChangeFlowRunState(
                    name="Crashed", state=StateType.CRASHED, message=message, force=False
                )
            ],
        )
        if not existing:
            client.create_automation(wanted)
            return "created"
        if _definition(existing[0]) == _definition(wanted):
            return "unchanged"
        client.update_automation(
            existing[0].id, wanted.model_copy(update={"enabled": existing[0].enabled})
        )
    return "updated"


def _definition(automation: Any) -> dict[str, Any]:
    """What an automation does, without the ids the server gave its parts or whether it is on."""
    dumped = automation.model_dump(mode="json", exclude={"id", "enabled", "created", "updated"})
    dumped["trigger"].pop("id", None)
    for field in ("after", "expect", "for_each"):  # sets: listed in each process's hash order
        dumped["trigger"][field] = sorted(dumped["trigger"].get(field) or [])
    return dict(dumped)
