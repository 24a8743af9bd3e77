"""Earlier attempts of a build in Prefect: the flow runs of killed processes.

A build flow run whose process is killed outright (the out-of-memory killer, a preempted GPU
node, a lost worker, ``kill -9`` on a CI job) cannot report its end: Prefect showed it Running
for ever, and its tasks with it. Each build flow run tags itself with its build key and registry
once it holds the build key's lock (:meth:`registry.Registry.build_lock`), so another flow run
of that key still Running is a dead process's: it is set Crashed (its Running tasks too), with a
message naming the flow run that found it. The same reasoning ends a killed attempt's MLflow run
(:mod:`flows.run_attempts`). A killed build whose spec or data then changed has no next attempt:
its MLflow run, ended by any build once no process holds its lock, names its flow run
(``adapterops.prefect_flow_run``), which that build sets Crashed too.
"""

from __future__ import annotations

from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.states import Crashed

__all__ = ["build_tags", "claim_build", "crash_flow_runs_of_killed_builds", "current_flow_run_id"]


def current_flow_run_id() -> str | None:
    """The id of the flow run this code runs in; None outside one."""
    return flow_run.get_id()


def build_tags(build_key: str, registry_id: str) -> list[str]:
    """The tags a build's flow runs carry: its build key (16 hex digits of it, as the
    checkpoint folder is named) and the registry it builds into (registries sharing a Prefect
    server take their own locks)."""
    return [f"adapterops-build:{build_key[:16]}", f"adapterops-registry:{registry_id}"]


def claim_build(build_key: str, registry_id: str) -> list[str]:
    """Tag the flow run this runs in with ``build_key`` and ``registry_id``, and set Crashed
    every other flow run of them still Running (the caller holds the build key's lock: none of
    them has a live process). Returns those crashed, as "name (id)"; nothing outside a flow
    run."""
    current = flow_run.get_id()
    if current is None:
        return []
    tags = build_tags(build_key, registry_id)
    crashed = []
    with get_client(sync_client=True) as client:
        own = client.read_flow_run(UUID(current))
        client.update_flow_run(own.id, tags=sorted({*own.tags, *tags}))
        running = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=tags),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])),
            )
        )
        for other in running:
            if other.id == own.id:
                continue
            message = (
                "its process ended without reporting (killed: out of memory, a lost machine or "
                f"worker, kill -9); flow run {own.name!r} ({own.id}), a later attempt of the "
                "same build (spec, data and code), found it"
            )
            _crash(client, other, message)
            crashed.append(f"{other.name} ({other.id})")
    return crashed


def crash_flow_runs_of_killed_builds(flow_run_ids: list[str]) -> list[str]:
    """Set Crashed each of these flow runs still Running, and its Running tasks: the flow runs
    of builds whose MLflow runs were found RUNNING with no process holding their build key's
    lock (:func:`flows.run_attempts.end_abandoned_runs`: a killed build of another spec or
    data, whose own next attempt never comes). Returns them as "name (id)"; nothing outside a
    flow run."""
    current = flow_run.get_id()
    if current is None or not flow_run_ids:
        return []
    crashed = []
    with get_client(sync_client=True) as client:
        own = client.read_flow_run(UUID(current))
        for flow_run_id in flow_run_ids:
            try:
                other = client.read_flow_run(UUID(flow_run_id))
            except (ValueError, ObjectNotFound):  # not a flow run id, or deleted since
                continue
            if other.state_type != StateType.RUNNING:
                continue
            message = (
                "its process ended without reporting (killed: out of memory, a lost machine or "
                f"worker, kill -9); flow run {own.name!r} ({own.id}), a build in the same "
                "registry, found no process building it"
            )
            _crash(client, other, message)
            crashed.append(f"{other.name} ({other.id})")
    return crashed


def _crash(client: SyncPrefectClient, other: FlowRun, message: str) -> None:
    """Set flow run ``other`` Crashed with ``message``, and its Running task runs."""
    tasks = client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[other.id])),
        task_run_filter=TaskRunFilter(
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING]))
        ),
    )
    for task_run in tasks:
        client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
    client.set_flow_run_state(other.id, Crashed(message=message), force=True)
