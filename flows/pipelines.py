"""Prefect 3 flows: thin wiring over the plain functions of ``build_job``, ``prepare_job`` and
``retrain``. The build flow runs ``build_job.run_chain`` (the one copy of the chain) with each
step as a task; tasks exchange the build value, paths, ids and small dataclasses, never models or
tensors.

- :func:`prepare`: tokenise a spec's data into the fingerprint-keyed cache;
- :func:`build`: prepare -> train -> evaluate -> register -> gate and promote, for one spec file;
  the same spec, data and code return the version built before (nothing is trained);
- :func:`retrain`: rebuild the specs whose data changed or whose schedule is due; one failing spec
  does not stop the others, and the run reports each outcome;
- :func:`cascade`: after an adapter's champion moved, build a candidate of every fusion over an
  older version of it, and score a candidate of every stack or average saved with evaluation
  data (both through the same gate); one failing composition does not stop the others;
- :func:`sync`: take alias moves reviewers made in the MLflow UI into the registry (deployed on
  an interval by ``adapterops deploy``, so commands that read only the registry stay current).

Without ``PREFECT_API_URL`` Prefect runs these on a temporary local server; with it, on that
server (and ``adapterops deploy`` makes them deployments a worker runs on a schedule).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment

from registry import AdapterVersion, Registry
from registry.names import CHAMPION, member_name

from . import tracking
from .build_job import Build, StepCallback, run_chain, start_build
from .cascade import (
    CascadeOutcome,
    StaleComposition,
    caught_up,
    find_stale,
    gate_stack,
    record_outcome,
    write_candidate_spec,
)
from .deploy_job import check_worker_registry, schedule_drift
from .flow_run_attempts import claim_build, current_flow_run_id
from .members import members_of_version
from .mlflow_compositions import sync_from_mlflow
from .mlflow_models import drop_deleted_mirrors
from .prepare_job import check_against_registry, check_inputs, prepare_info
from .retrain import RetrainOutcome, due_reason, one_line, readable_specs
from .spec import load_spec, shared_names, warn_of_a_relative_base
from .stale import fusion_as_it_stands

__all__ = [
    "build",
    "cascade",
    "prepare",
    "reporting_progress",
    "retrain",
    "set_progress",
    "sync",
]

T = TypeVar("T")

# The CLI's progress bar for the build running in this context. Flow parameters must be JSON,
# so the callback travels in a context variable, read once when the build starts.
_progress: ContextVar[StepCallback | None] = ContextVar("adapterops_progress", default=None)

# Retries are safe for registration: it is idempotent by digest, and MLflow versions and alias
# moves are created only if missing.
_TASK_OPTIONS: dict[str, dict[str, Any]] = {
    "register and promote": {"retries": 2, "retry_delay_seconds": 5},
}


@contextmanager
def reporting_progress(callback: StepCallback | None) -> Iterator[None]:
    """Within the block, builds call ``callback(step, total, loss, learning_rate)``."""
    token = _progress.set(callback)
    try:
        yield
    finally:
        _progress.reset(token)


def set_progress(callback: StepCallback | None) -> None:
    """Deprecated: use ``with reporting_progress(callback):`` around the flow call."""
    warnings.warn(
        "flows.pipelines.set_progress is deprecated; use `with reporting_progress(callback):`",
        DeprecationWarning,
        stacklevel=2,
    )
    _progress.set(callback)


def run_as_task(name: str, step: Callable[..., T], *args: Any) -> T:
    """The flow's step runner: each step of the chain is a Prefect task run."""
    options = _TASK_OPTIONS.get(name, {})  # (Prefect's overloads cannot see through **options)
    as_task = task(step, name=name, cache_policy=NO_CACHE, **options)  # type: ignore[call-overload]
    result: T = as_task(*args)
    summary = getattr(result, "summary", None)
    if callable(summary):
        get_run_logger().info("%s", summary())
    return result


@flow(name="prepare")
def prepare(spec_path: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Tokenise one spec's data into the cache; returns the cache entry's description."""
    return run_as_task("prepare data", prepare_info, load_spec(spec_path, overrides)).to_dict()


@flow(name="build", flow_run_name="build {spec_path}")
def build(
    spec_path: str,
    overrides: list[str] | None = None,
    output: str | None = None,
    lineage: dict[str, str] | None = None,
    for_registry: str | None = None,
) -> dict[str, Any]:
    """Build one adapter from a spec file: the result of ``adapterops build --json``.
    ``lineage``: the data fingerprint and build key, when the caller computed them already;
    ``for_registry``: the id of the registry a deployment was made for (a worker whose
    environment names another refuses the run)."""
    spec = load_spec(spec_path, overrides)
    check_worker_registry(for_registry, f"build/{spec.name}")
    drift = schedule_drift(spec, spec_path) if for_registry is not None else None
    if drift:
        get_run_logger().warning(drift)
    report = _progress.get()
    chain = start_build(
        spec,
        output or Path("out") / spec.name,
        on_step=report,
        on_phase=getattr(report, "phase", None),  # the CLI's progress also names each phase
        lineage=lineage,
        on_scoring=getattr(report, "rows", None),  # ... and counts the evaluation's rows
    )
    result = run_chain(chain, run_as_task, on_locked=_claim)
    get_run_logger().info("%s -> %s: %s", result.ref, result.alias, result.decision)
    new_champion = result.promoted and not result.reused and result.alias == "champion"
    if new_champion and spec.promote.cascade and find_stale(Registry(), spec.name)[1]:
        root = Path(output).parent if output else Path("out")
        result.cascade = cascade(spec.name, str(root))  # a subflow: one run per composition
    return result.to_dict()


def _claim(build: Build) -> None:
    """Tag this flow run with its build; crash the flow runs of killed attempts of it. The
    build's MLflow run names this flow run, so that a later build can crash it too once it
    finds that run killed."""
    build.flow_run_id = current_flow_run_id()
    for name in claim_build(build.key, build.registry.identity):
        if build.on_phase is not None:
            build.on_phase(f"Prefect flow run {name} of a killed attempt of this build: Crashed")


@flow(name="retrain")
def retrain(spec_paths: list[str], output: str = "out") -> list[dict[str, Any]]:
    """Rebuild every spec whose data changed or whose schedule is due; report each outcome."""
    outcomes = []
    registry = Registry()
    report = _progress.get()
    shared = shared_names(readable_specs(spec_paths))
    for path in spec_paths:
        if path in shared:  # neither is built: which one the adapter should follow is unknown
            outcomes.append(RetrainOutcome(path, "", "failed", f"name: {shared[path]}").to_dict())
            continue
        outcome = _retrain_one(path, registry, Path(output))
        if outcome.name and report is not None and hasattr(report, "phase"):
            report.phase(outcome.status)
        outcomes.append(outcome.to_dict())
    failed = [o["spec"] for o in outcomes if o["status"] == "failed"]
    if failed:
        get_run_logger().error("%d of %d specs failed: %s", len(failed), len(outcomes), failed)
    return outcomes


def _retrain_one(path: str, registry: Registry, output: Path) -> RetrainOutcome:
    try:
        spec = load_spec(path)
        report: Any = _progress.get()  # the CLI's progress has begin() and phase(): per spec
        if report is not None and hasattr(report, "begin"):
            report.begin(spec.name)
            report.phase("check what changed")
        reason = due_reason(spec, registry)
        if reason is None:
            return RetrainOutcome(spec=path, name=spec.name, status="up to date", reason="")
        # as `build` checks before its flow: bad input refused, and its warnings said, here
        check_inputs(spec, registry)
        check_against_registry(spec, registry)  # not hours of training, then a refusal
        warn_of_a_relative_base(spec)
        state = build(path, output=str(output / spec.name), return_state=True)
        if state.is_failed():
            state.result()  # raises the build's exception
        result = state.result()
        return RetrainOutcome(
            spec=path, name=spec.name, status="reused" if result["reused"] else "built",
            reason=reason, ref=result["ref"], promoted=result["promoted"], reused=result["reused"],
            alias=result["alias"], decision=result["decision"],
        )  # fmt: skip
    except Exception as exc:  # one failing spec must not stop the others
        return RetrainOutcome(spec=path, name="", status="failed", reason=one_line(exc))


@flow(name="sync", flow_run_name="sync aliases from MLflow")
def sync(for_registry: str | None = None) -> dict[str, Any]:
    """Mirror compositions MLflow lacks and copy alias moves made in MLflow into the registry, for
    every adapter and composition (MLflow wins), then remove the mirrors of versions deleted
    where MLflow did not follow; returns what changed. ``for_registry``: as for :func:`build`."""
    check_worker_registry(for_registry, f"sync/{deployment.name or 'aliases'}")
    registry, client = Registry(), tracking.client()
    logger = get_run_logger()
    mirrored, changes = sync_from_mlflow(
        registry,
        client,
        on_wait=lambda name, composition: logger.info(
            "waiting for a gate of %s%s to decide", "composition " * composition, name
        ),
    )
    dropped = drop_deleted_mirrors(registry, client)
    logger.info(
        "%d alias change(s) taken from MLflow, %d mirror(s) of deleted versions removed",
        len(changes), len(dropped),
    )  # fmt: skip
    return {"mirrored": mirrored, "changes": [c.to_dict() for c in changes], "dropped": dropped}


@flow(name="cascade", flow_run_name="cascade {name}")
def cascade(name: str, output: str = "out") -> list[dict[str, Any]]:
    """Re-evaluate, through the gate, every composition over an older version of ``name``'s
    champion (:mod:`flows.cascade`); returns one outcome per stale composition."""
    registry = Registry()
    champion, stale = find_stale(registry, name)
    outcomes = []
    report = _progress.get()
    for item in stale:
        if report is not None and hasattr(report, "begin"):
            report.begin(item.ref)
        outcome = _cascade_one(item, champion, registry, Path(output))
        if outcome.status != "not evaluated":
            record_outcome(registry, champion, outcome)
        outcomes.append(outcome.to_dict())
    failed = [o["composition"] for o in outcomes if o["status"] == "failed"]
    if failed:
        get_run_logger().error("%d of %d compositions failed: %s", len(failed), len(stale), failed)
    return outcomes


def _cascade_fusion(
    item: StaleComposition, trigger: AdapterVersion, registry: Registry, output: Path
) -> CascadeOutcome:
    name = member_name(item.ref)
    report = _progress.get()
    waiting = f"wait for another cascade of {name} to finish"
    announce = getattr(report, "phase", None)  # a terminal's bar or a log's lines
    with registry.cascade_lock(name, on_wait=(lambda: announce(waiting)) if announce else None):
        return _cascade_fusion_now(item, trigger, registry, output)


def _cascade_fusion_now(
    item: StaleComposition, trigger: AdapterVersion, registry: Registry, output: Path
) -> CascadeOutcome:
    # re-read first: another cascade may have promoted a candidate since the list was made (or
    # while this one waited for it)
    now = fusion_as_it_stands(registry, member_name(item.ref), trigger)
    if now is None:
        champion = registry.get(f"{member_name(item.ref)}@{CHAMPION}")
        return caught_up(
            item, trigger, f"its champion, {champion.ref}", members_of_version(champion)
        )
    fusion = registry.get(now.ref)
    spec_path = write_candidate_spec(fusion, now.candidate_members, output / "cascade")
    state = build(str(spec_path), output=str(output / fusion.name), return_state=True)
    result = state.result()  # raises the build's exception if it failed
    return CascadeOutcome(
        now.ref,
        "promoted" if result["promoted"] else "not promoted",
        result["decision"],
        candidate=result["ref"],
        members=now.candidate_members,
    )


def _cascade_one(
    item: StaleComposition, trigger: AdapterVersion, registry: Registry, output: Path
) -> CascadeOutcome:
    if not item.evaluable:
        return CascadeOutcome(
            item.ref, "not evaluated", item.reason, members=item.candidate_members
        )
    try:
        if item.kind == "stack":
            return run_as_task("score stack", gate_stack, registry, item, trigger)
        return _cascade_fusion(item, trigger, registry, output)
    except Exception as exc:  # one failing composition must not stop the others
        return CascadeOutcome(item.ref, "failed", one_line(exc), members=item.candidate_members)
