"""Prefect 3 flows: thin wiring over the plain functions of ``build_job``, ``prepare_job`` and
``retrain``. Tasks exchange paths, ids and small dataclasses, never models or tensors.

- :func:`prepare`: tokenise a spec's data into the fingerprint-keyed cache;
- :func:`build`: prepare -> train -> evaluate -> register -> gate and promote, for one spec file;
  the same spec, data and code return the version built before (nothing is trained);
- :func:`retrain`: rebuild the specs whose data changed or whose schedule is due; one failing spec
  does not stop the others, and the run reports each outcome.

Without ``PREFECT_API_URL`` Prefect runs these on a temporary local server; with it, on that
server (and ``adapterops deploy`` makes them deployments a worker runs on a schedule).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from registry import AdapterVersion, Registry

from . import tracking
from .build_job import (
    BuildResult,
    build_lineage,
    checkpoint_folder,
    evaluate_tracked,
    find_built,
    register_and_gate,
    reused_result,
    train_tracked,
)
from .mlflow_models import sync_aliases
from .prepare_job import PreparedInfo, prepare_cached
from .retrain import RetrainOutcome, due_reason
from .spec import AdapterSpec, load_spec
from .train_job import TrainReport, load_tokenizer

__all__ = ["build", "prepare", "retrain", "set_progress"]

# A progress callback for the CLI's bar: flow parameters must be JSON, so it is set here instead.
_progress: Callable[[int, int, float, float], None] | None = None


def set_progress(callback: Callable[[int, int, float, float], None] | None) -> None:
    """Install ``callback(step, total, loss, learning_rate)`` for the next training steps."""
    global _progress  # noqa: PLW0603 - one process-wide hook, set by the CLI around a flow call
    _progress = callback


@task(name="prepare data", cache_policy=NO_CACHE)
def prepare_task(spec: AdapterSpec) -> PreparedInfo:
    """Tokenise into the cache (or find it there)."""
    _, info = prepare_cached(spec, load_tokenizer(spec))
    get_run_logger().info(
        "data %s: %d train / %d validation rows (%s)",
        info.dataset_fingerprint[:12],
        info.train_rows,
        info.validation_rows,
        "cached" if info.cached else "prepared",
    )
    return info


@task(name="find earlier build", cache_policy=NO_CACHE)
def find_built_task(spec: AdapterSpec, build_key: str) -> AdapterVersion | None:
    return find_built(Registry(), spec, build_key)


@task(name="train", cache_policy=NO_CACHE)
def train_task(spec: AdapterSpec, output: str, lineage: dict[str, str]) -> tuple[TrainReport, str]:
    return train_tracked(spec, Path(output), lineage, on_step=_progress)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(
    spec: AdapterSpec, report: TrainReport, run_id: str, lineage: dict[str, str]
) -> tuple[TrainReport, str]:
    return evaluate_tracked(spec, report, run_id, lineage)


@task(name="register and promote", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def register_task(
    spec: AdapterSpec, report: TrainReport, run_id: str, lineage: dict[str, str], card: str
) -> BuildResult:
    # Retries are safe: registration is idempotent by digest, MLflow versions and alias moves
    # are created only if missing.
    registry = Registry()
    sync_aliases(registry, tracking.client(), [spec.name])
    return register_and_gate(spec, registry, report, run_id=run_id, lineage=lineage, card=card)


@flow(name="prepare")
def prepare(spec_path: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Tokenise one spec's data into the cache; returns the cache entry's description."""
    return prepare_task(load_spec(spec_path, overrides)).to_dict()


@flow(name="build", flow_run_name="build {spec_path}")
def build(
    spec_path: str, overrides: list[str] | None = None, output: str | None = None
) -> dict[str, Any]:
    """Build one adapter from a spec file: the result of ``adapterops build --json``."""
    spec = load_spec(spec_path, overrides)
    lineage = build_lineage(spec)
    existing = find_built_task(spec, lineage["build_key"])
    if existing is not None:
        get_run_logger().info("%s already built from this spec, data and code", existing.ref)
        return reused_result(existing, spec).to_dict()
    prepare_task(spec)
    folder = output or str(Path("out") / spec.name)
    report, run_id = train_task(spec, folder, lineage)
    report, card = evaluate_task(spec, report, run_id, lineage)
    result = register_task(spec, report, run_id, lineage, card)
    shutil.rmtree(checkpoint_folder(spec, lineage["build_key"]), ignore_errors=True)
    get_run_logger().info("%s -> %s: %s", result.ref, result.alias, result.decision)
    return result.to_dict()


@flow(name="retrain")
def retrain(spec_paths: list[str], output: str = "out") -> list[dict[str, Any]]:
    """Rebuild every spec whose data changed or whose schedule is due; report each outcome."""
    outcomes = []
    registry = Registry()
    for path in spec_paths:
        outcomes.append(_retrain_one(path, registry, Path(output)).to_dict())
    failed = [o["spec"] for o in outcomes if o["status"] == "failed"]
    if failed:
        get_run_logger().error("%d of %d specs failed: %s", len(failed), len(outcomes), failed)
    return outcomes


def _retrain_one(path: str, registry: Registry, output: Path) -> RetrainOutcome:
    try:
        spec = load_spec(path)
        reason = due_reason(spec, registry)
        if reason is None:
            return RetrainOutcome(spec=path, name=spec.name, status="up to date", reason="")
        state = build(path, output=str(output / spec.name), return_state=True)
        if state.is_failed():
            state.result()  # raises the build's exception
        result = state.result()
        return RetrainOutcome(
            spec=path, name=spec.name, status="built", reason=reason, ref=result["ref"],
            promoted=result["promoted"], reused=result["reused"],
        )  # fmt: skip
    except Exception as exc:  # one failing spec must not stop the others
        return RetrainOutcome(spec=path, name="", status="failed", reason=_one_line(exc))


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
