"""The whole chain for one spec: train (tracked in MLflow), register, mirror in MLflow, gate,
promote. Plain functions: the CLI calls them, the Prefect flows wrap them.

Re-running after a failure completes the work: registration is idempotent by content digest, the
MLflow version is created only if missing, and alias moves are idempotent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from registry import AdapterVersion, NotFoundError, Registry

from . import tracking
from .lineage import code_version, dataset_fingerprint
from .mlflow_models import ensure_model_version, tag_run
from .promotion import CHALLENGER, Decision, Policy, decide, promote
from .spec import AdapterSpec
from .train_job import TrainReport, evaluate_registered, train_from_spec

__all__ = ["BuildResult", "build_from_spec", "register_and_gate"]


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def build_from_spec(
    spec: AdapterSpec,
    registry: Registry,
    output: Path,
    *,
    on_step: Any = None,
) -> BuildResult:
    """Train ``spec`` under an MLflow run, then :func:`register_and_gate` the result."""
    lineage = {"dataset_fingerprint": dataset_fingerprint(spec), "code_version": code_version()}
    tracker = tracking.RunTracker(spec, tags={f"adapterops.{k}": v for k, v in lineage.items()})

    def observe(step: int, total: int, loss: float, learning_rate: float) -> None:
        tracker.on_step(step, total, loss, learning_rate)
        if on_step is not None:
            on_step(step, total, loss, learning_rate)

    with tracker.run():
        report = train_from_spec(spec, output, on_step=observe)
        card = tracker.finish(
            report.to_dict(),
            Path(report.output),
            losses=report.losses,
            learning_rates=report.learning_rates,
            lineage=lineage,
        )
    (Path(report.output) / "README.md").write_text(card)
    return register_and_gate(
        spec, registry, report, run_id=tracker.run_id, lineage=lineage, card=card
    )


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
        lineage={**lineage, "run_id": run_id},
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
