"""The whole chain for one spec: train (tracked in MLflow), register, mirror in MLflow, gate,
promote. Plain functions: the CLI calls them, the Prefect flows wrap them.

Re-running after a failure completes the work: registration is idempotent by content digest, the
MLflow version is created only if missing, and alias moves are idempotent.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from registry import AdapterVersion, NotFoundError, Registry
from registry.settings import adapterops_home

from . import tracking
from .lineage import code_version, dataset_fingerprint
from .members import LINEAGE_KEY, members_of_spec
from .mlflow_models import ensure_model_version, tag_run
from .promotion import CHALLENGER, Decision, Policy, decide, promote
from .spec import AdapterSpec
from .train_job import (
    TrainReport,
    evaluate_folder,
    evaluate_registered,
    train_from_spec,
    write_report,
)

__all__ = [
    "BuildResult",
    "build_from_spec",
    "build_lineage",
    "checkpoint_folder",
    "evaluate_tracked",
    "find_built",
    "register_and_gate",
    "reused_result",
    "train_tracked",
]


@dataclass
class BuildResult:
    """What ``adapterops build`` reports (``--json``)."""

    name: str
    version: int
    ref: str
    digest: str
    run_id: str
    mlflow_version: int
    promoted: bool
    alias: str
    decision: str
    metrics: dict[str, Any]
    champion_metric: float | None
    reused: bool = False  # True: this spec, data and code were built before; nothing trained

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def build_lineage(spec: AdapterSpec) -> dict[str, str]:
    """Dataset fingerprint, code version and the build key they make with the spec."""
    lineage = {"dataset_fingerprint": dataset_fingerprint(spec), "code_version": code_version()}
    members = members_of_spec(spec)
    if members:  # a fusion over name@champion means different things as the champion moves
        registry = Registry()
        members = [registry.get(ref).ref for ref in members]
    material = json.dumps([spec.model_dump(mode="json"), lineage, members], sort_keys=True)
    return {**lineage, "build_key": hashlib.sha256(material.encode()).hexdigest()}


def find_built(registry: Registry, spec: AdapterSpec, build_key: str) -> AdapterVersion | None:
    """The version an earlier build of the same spec, data and code registered, if any."""
    for version in registry.find(name=spec.name):
        if version.lineage.get("build_key") == build_key:
            return version
    return None


def reused_result(version: AdapterVersion, spec: AdapterSpec) -> BuildResult:
    """The report of a build that found its version already registered."""
    promoted = spec.promote.alias in version.aliases
    return BuildResult(
        name=version.name,
        version=version.version,
        ref=version.ref,
        digest=version.digest,
        run_id=str(version.lineage.get("run_id", "")),
        mlflow_version=version.version,
        promoted=promoted,
        alias=spec.promote.alias if promoted else ",".join(version.aliases),
        decision="already built from this spec, data and code: nothing trained",
        metrics=dict(version.metrics),
        champion_metric=None,
        reused=True,
    )


def checkpoint_folder(spec: AdapterSpec, build_key: str) -> Path:
    """Where a build's training checkpoints live until it is registered."""
    return adapterops_home() / "checkpoints" / f"{spec.name}-{build_key[:16]}"


def train_tracked(
    spec: AdapterSpec,
    output: Path,
    lineage: dict[str, str],
    *,
    on_step: Any = None,
) -> tuple[TrainReport, str]:
    """Train under a new MLflow run (params, tags, per-step curves); returns the report and run id.

    Checkpoints go to :func:`checkpoint_folder`, so re-running a crashed build resumes it.
    """
    tracker = tracking.RunTracker(spec, tags={f"adapterops.{k}": v for k, v in lineage.items()})

    def observe(step: int, total: int, loss: float, learning_rate: float) -> None:
        tracker.on_step(step, total, loss, learning_rate)
        if on_step is not None:
            on_step(step, total, loss, learning_rate)

    checkpoints = checkpoint_folder(spec, lineage["build_key"])
    with tracker.run():
        report = train_from_spec(
            spec, output, on_step=observe, evaluate_after=False, checkpoint_dir=checkpoints
        )
    return report, tracker.run_id


def evaluate_tracked(
    spec: AdapterSpec, report: TrainReport, run_id: str, lineage: dict[str, str]
) -> tuple[TrainReport, str]:
    """Evaluate the saved adapter, log metrics and artifacts to its run; returns the completed
    report and the model card (also written to the adapter folder as README.md)."""
    report.metrics = evaluate_folder(spec, report.output, members=report.members)
    write_report(report)
    tracker = tracking.RunTracker(spec)
    with tracker.run(resume=run_id):
        card = tracker.finish(
            report.to_dict(),
            Path(report.output),
            losses=report.losses,
            learning_rates=report.learning_rates,
            lineage=lineage,
        )
    (Path(report.output) / "README.md").write_text(card)
    return report, card


def build_from_spec(
    spec: AdapterSpec,
    registry: Registry,
    output: Path,
    *,
    on_step: Any = None,
) -> BuildResult:
    """The whole chain without Prefect: reuse, or train, evaluate, register, gate and promote.

    The Prefect flow :func:`flows.pipelines.build` wires the same steps as tasks.
    """
    lineage = build_lineage(spec)
    existing = find_built(registry, spec, lineage["build_key"])
    if existing is not None:
        return reused_result(existing, spec)
    report, run_id = train_tracked(spec, output, lineage, on_step=on_step)
    report, card = evaluate_tracked(spec, report, run_id, lineage)
    result = register_and_gate(spec, registry, report, run_id=run_id, lineage=lineage, card=card)
    shutil.rmtree(checkpoint_folder(spec, lineage["build_key"]), ignore_errors=True)
    return result


def register_and_gate(
    spec: AdapterSpec,
    registry: Registry,
    report: TrainReport,
    *,
    run_id: str,
    lineage: dict[str, Any],
    card: str,
) -> BuildResult:
    """Register the trained folder, mirror it in MLflow, and promote it if it beats the champion."""
    numeric = {k: float(v) for k, v in report.metrics.items() if isinstance(v, int | float)}
    version = registry.register(
        report.output,
        name=spec.name,
        base_model=spec.base_model,
        task=spec.task,
        language=spec.language,
        metrics=numeric,
        lineage={
            **lineage,
            "run_id": run_id,
            **({LINEAGE_KEY: report.members} if report.members else {}),
        },
        spec=spec.model_dump(mode="json"),
        description=spec.description,
        origin="build",
    )
    client = tracking.client()
    if run_id:
        tag_run(client, run_id, version)
    mlflow_version = ensure_model_version(client, version, run_id=run_id, description=card)
    policy = Policy(
        metric=spec.evaluate.metric,
        min_delta=spec.promote.min_delta,
        higher_is_better=spec.evaluate.metric != "perplexity",
    )
    decision, champion_metric = _gate(spec, registry, version, numeric, policy)
    alias = spec.promote.alias if decision.promote else CHALLENGER
    if alias not in version.aliases:
        promote(registry, client, version.ref, alias, origin="gate")
    return BuildResult(
        name=version.name,
        version=version.version,
        ref=version.ref,
        digest=version.digest,
        run_id=run_id,
        mlflow_version=mlflow_version,
        promoted=decision.promote,
        alias=alias,
        decision=decision.reason,
        metrics=numeric,
        champion_metric=champion_metric,
    )


def _gate(
    spec: AdapterSpec,
    registry: Registry,
    candidate: AdapterVersion,
    metrics: dict[str, float],
    policy: Policy,
) -> tuple[Decision, float | None]:
    """The decision, with the champion re-evaluated on this spec's validation data."""
    value = metrics.get(policy.metric, math.nan)
    try:
        champion = registry.get(f"{spec.name}@{spec.promote.alias}")
    except NotFoundError:
        return decide(value, None, policy), None
    if champion.version == candidate.version:  # a re-run of the build that promoted it
        return Decision(True, "already the champion", value, value, "better"), value
    champion_value = float(evaluate_registered(spec, champion.ref, registry)[policy.metric])
    return decide(value, champion_value, policy), champion_value
