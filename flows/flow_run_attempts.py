"""Earlier attempts of a build in Prefect: the flow runs of killed processes.

A build flow run whose process is killed outright (the out-of-memory killer, a preempted GPU
node, a lost worker, ``kill -9`` on a CI job) cannot report its end: Prefect showed it Running
for ever, and its tasks with it. Each build flow run tags itself with its build key and registry
once it holds the build key's lock (:meth:`registry.Registry.build_lock`), so another flow run
of that key still Running is a dead process's: it is set Crashed (its Running tasks too), with a
message naming the flow run that found it. The same reasoning ends a killed attempt's MLflow run
(:mod:`flows.run_attempts`).
"""

from __future__ import annotations

from uuid import UUID

from prefect.client.orchestration import get_client
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
from prefect.client.schemas.objects import StateType
from prefect.runtime import flow_run
from prefect.states import Crashed

__all__ = ["build_tags", "claim_build"]


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
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[other.id])),
                task_run_filter=TaskRunFilter(
                    state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING]))
                ),
            )
            for task_run in tasks:
                client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
            client.set_flow_run_state(other.id, Crashed(message=message), force=True)
            crashed.append(f"{other.name} ({other.id})")
    return crashed
