"""Earlier attempts of a build in MLflow.

A build whose process is killed outright (the kernel's out-of-memory killer, a lost machine, a
Kubernetes pod past its grace period, ``kill -9``) cannot close its MLflow run: the run stayed
RUNNING in the UI for ever, beside the run of the attempt that later finished the build from
its checkpoint, and a reviewer could not tell a live build from a dead one. A build holds its
build key's lock (:meth:`registry.Registry.build_lock`) from start to end, so when the next
attempt of that build starts, any run of the same build key and registry still RUNNING belongs
to a process that is gone: it is ended KILLED, at the time of its last logged step, with a note
naming the attempt that found it. The new run names its previous attempt
(``adapterops.previous_attempt``), so the UI links one to the other.

A build killed for its memory is often built next with a smaller batch: another spec, so
another build key, whose attempts never come back to the old one. So every build also ends the
RUNNING runs of other build keys whose lock no process holds now
(:meth:`registry.Registry.building`): each ends its run before it lets its lock go, so such a
run's process is gone.
"""

from __future__ import annotations

from collections.abc import Callable

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from .mlflow_names import NOTE_TAG, REGISTRY_TAG

__all__ = ["BUILD_KEY_TAG", "FLOW_RUN_TAG", "PREVIOUS_ATTEMPT_TAG", "end_abandoned_runs"]

BUILD_KEY_TAG = "adapterops.build_key"
PREVIOUS_ATTEMPT_TAG = "adapterops.previous_attempt"
FLOW_RUN_TAG = "adapterops.prefect_flow_run"  # the Prefect flow run of a build run in one
_ENDED_BY_TAG = "adapterops.ended_by"


def end_abandoned_runs(
    client: MlflowClient,
    experiment_id: str,
    *,
    build_key: str,
    registry_id: str,
    run_id: str,
    building: Callable[[str], bool],
) -> list[Run]:
    """End KILLED every run made for ``registry_id`` still RUNNING whose process is gone: one of
    ``build_key`` other than ``run_id`` (the attempt starting now, which must hold that key's
    lock), and one of another build key no process is building (``building(key)`` False: a
    killed build whose spec or data then changed, so that no later attempt of its key would
    come). Tag ``run_id`` with the newest earlier attempt of its build key, if any. Returns the
    runs ended, as they were found."""
    ended = []
    for run in _running_runs(client, experiment_id, registry_id):
        key = run.data.tags.get(BUILD_KEY_TAG)
        if run.info.run_id == run_id or not key:
            continue
        if key == build_key:
            found = (
                f"Run {run_id}, a later attempt of the same build (spec, data and code), found "
                "it and ended it KILLED."
            )
        elif not building(key):
            found = (
                f"Run {run_id}, a build of another spec or data in this registry, found no "
                "process building it and ended it KILLED."
            )
        else:  # its build is under way in another process
            continue
        _end_killed(client, run, found, ended_by=run_id)
        ended.append(run)
    earlier = [
        run
        for run in _runs_of(client, experiment_id, build_key, registry_id)
        if run.info.run_id != run_id
    ]
    if earlier:
        newest = max(earlier, key=lambda run: run.info.start_time or 0)
        client.set_tag(run_id, PREVIOUS_ATTEMPT_TAG, newest.info.run_id)
    return ended


def _end_killed(client: MlflowClient, run: Run, found: str, *, ended_by: str) -> None:
    """End ``run`` KILLED at its last logged step, its note saying why (unless it has one)."""
    tags = {_ENDED_BY_TAG: ended_by}
    if not run.data.tags.get(NOTE_TAG):
        tags[NOTE_TAG] = (
            "Its process ended without closing this run (killed: out of memory, a lost "
            f"machine or worker, a cancelled job). {found}"
        )
    for key, value in tags.items():
        client.set_tag(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, "KILLED", end_time=_last_heard(client, run))


def _running_runs(client: MlflowClient, experiment_id: str, registry_id: str) -> list[Run]:
    """The runs made for ``registry_id`` that MLflow shows RUNNING."""
    return client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{REGISTRY_TAG}` = '{registry_id}'",
        max_results=1000,
    )


def _runs_of(
    client: MlflowClient, experiment_id: str, build_key: str, registry_id: str
) -> list[Run]:
    """The runs of one build key made for one registry (registries sharing a server and an
    experiment build the same spec, data and code under locks of their own)."""
    return client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{BUILD_KEY_TAG}` = '{build_key}' and tags.`{REGISTRY_TAG}` = '{registry_id}'"
        ),
        max_results=1000,
    )


def _last_heard(client: MlflowClient, run: Run) -> int:
    """When the run last logged a training step (milliseconds), else when it started: the
    closest to when its process died that MLflow knows."""
    history = client.get_metric_history(run.info.run_id, "train_loss")
    times = [metric.timestamp for metric in history]
    return max(times, default=run.info.start_time or 0)
