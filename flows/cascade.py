"""The retraining cascade: an adapter's new champion reaches the compositions built over it.

A registered AdapterFusion names its members by exact version (``fusion_members`` in its
lineage), so it keeps meaning the same thing when a member's champion moves, and grows stale. For
adapter ``NAME`` with champion ``NAME@n``, every fusion holding ``champion`` whose members include
another version of ``NAME`` gets a candidate: its own spec with that member pinned to ``NAME@n``
(the other members pinned to the versions it was trained over), built by the ordinary build
flow. The candidate is therefore trained, evaluated on the fusion's own validation data and
promoted only through the same gate as any build (it must beat the fusion's champion,
re-evaluated on that data), and is tracked in MLflow like any build. Each outcome is also a
``cascade`` event on the fusion in the registry. One failing composition does not stop the others.

A stack or an average saved with ``Registry.register_composition(..., evaluation=spec)`` is
scored instead (nothing in it trains): the current version and the candidate, each loaded from its
exact member versions onto the spec's base model, on the spec's validation data, through the same
:func:`~flows.promotion.decide`; a candidate that passes becomes the composition's next version
(and takes its ``champion`` alias when the scored version held it, in MLflow first like every
alias move: :mod:`flows.mlflow_compositions`), and both scores go to one MLflow run. Compositions
saved without an evaluation are listed as stale and not scored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from registry import AdapterVersion, Registry

from .mlflow_compositions import ensure_composition_versions, move_composition_alias, tag_score
from .promotion import CHAMPION, Policy, decide
from .spec import AdapterSpec, parse_spec
from .stale import StaleComposition, find_stale, stack_as_it_stands
from .tracking import client as tracking_client
from .tracking import log_evaluation_run

__all__ = [
    "CascadeOutcome",
    "StaleComposition",
    "candidate_spec",
    "caught_up",
    "find_stale",
    "gate_stack",
    "record_outcome",
    "score_stack",
    "write_candidate_spec",
]


@dataclass(frozen=True)
class CascadeOutcome:
    """What happened to one stale composition."""

    composition: str
    status: Literal["promoted", "not promoted", "failed", "not evaluated"]
    reason: str
    candidate: str | None = None  # the candidate version the build registered
    members: list[str] = field(default_factory=list)
    # a scored stack's: current_<metric> and candidate_<metric>, as its MLflow run logs them
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def score_stack(
    registry: Registry, spec: AdapterSpec, definition: dict[str, Any], members: list[str]
) -> float:
    """``spec``'s metric for the composition ``definition`` over exact versions ``members``, on
    ``spec``'s base model and validation data."""

    from .prepare_job import prepare_cached  # noqa: PLC0415
    from .train_job import (  # noqa: PLC0415
        evaluate_model,
        generates,
        load_inference_model,
    )

    model, tokenizer = load_inference_model(spec)
    registry.load_definition(model, definition, members)
    data, _ = prepare_cached(spec, tokenizer)
    metrics = evaluate_model(
        model, data.validation, tokenizer, head=spec.head.type, generate=generates(spec)
    )
    return float(metrics[spec.evaluate.metric])


def gate_stack(
    registry: Registry, item: StaleComposition, trigger: AdapterVersion
) -> CascadeOutcome:
    """Score a stale stack and its candidate; save the candidate as the next version if it
    passes the gate; one MLflow run holds both scores and the decision.

    The stack is re-read under its alias lock first: two cascades of one stack at once (two of
    its members got new champions) gate one after the other, and the second scores the version
    the first saved, with both new champions in its candidate, instead of ``item``'s older one.
    """
    name = item.ref.removeprefix("stack:").partition("@")[0]
    with registry.composition_alias_lock(name):
        now = stack_as_it_stands(registry, name, trigger)
        if now is None:
            newest = registry.composition(name)
            return caught_up(
                item, trigger, f"its newest version, stack:{newest.ref}", list(newest.members)
            )
        if not now.evaluable:
            return CascadeOutcome(
                now.ref, "not evaluated", now.reason, members=now.candidate_members
            )
        return _gated_stack(registry, now, trigger)


def caught_up(
    item: StaleComposition, trigger: AdapterVersion, now: str, members: list[str]
) -> CascadeOutcome:
    """Nothing to do: the composition as it stands (``now``, in words: "its champion,
    fused@2"), saved or promoted by another cascade since ``item`` was listed, with exact
    ``members``, is not stale any more."""
    held = (
        f"is over {trigger.ref} already"
        if trigger.ref in members
        else f"no longer holds {trigger.name}"
    )
    reason = f"{now}, {held} (since {item.ref} was listed)"
    return CascadeOutcome(item.ref, "not evaluated", reason, members=members)


def _gated_stack(
    registry: Registry, item: StaleComposition, trigger: AdapterVersion
) -> CascadeOutcome:
    name, _, version = item.ref.removeprefix("stack:").partition("@")
    current = registry.composition(name, int(version))
    spec = parse_spec(current.evaluation, source=f"{item.ref} evaluation")
    policy = Policy.for_metric(spec.evaluate.metric, spec.promote.min_delta)
    before = score_stack(registry, spec, current.definition, item.members)
    after = score_stack(registry, spec, current.definition, item.candidate_members)
    decision = decide(after, before, policy)
    candidate = None
    client = tracking_client()
    ensure_composition_versions(client, registry, name)
    tag_score(client, current, policy.metric, before)  # reviewers compare versions in MLflow
    if decision.promote:
        moved = f"{', '.join(item.members)} -> {', '.join(item.candidate_members)}"
        saved = registry.register_composition(
            name,
            current.definition,
            item.candidate_members,
            description=f"cascade: {moved}",
            evaluation=current.evaluation,
            metrics={policy.metric: after},  # what the gate weighed, in the registry too
        )
        candidate = f"stack:{saved.ref}"
        ensure_composition_versions(client, registry, name)
        tag_score(client, saved, policy.metric, after)
        if CHAMPION in current.aliases:  # the gate passed: the champion moves, as for adapters
            move_composition_alias(registry, client, saved.ref, CHAMPION, origin="cascade")
    log_evaluation_run(
        f"cascade {item.ref} ({trigger.ref})",
        params={
            "composition": item.ref,
            "trigger": trigger.ref,
            "members": ",".join(item.members),
            "candidate_members": ",".join(item.candidate_members),
        },
        metrics={f"current_{policy.metric}": before, f"candidate_{policy.metric}": after},
        tags={"adapterops.cascade": trigger.ref, "adapterops.decision": decision.reason},
    )
    status: Literal["promoted", "not promoted"] = "promoted" if decision.promote else "not promoted"
    scores = {f"current_{policy.metric}": before, f"candidate_{policy.metric}": after}
    return CascadeOutcome(
        item.ref, status, decision.reason, candidate, item.candidate_members, scores
    )


def candidate_spec(fusion: AdapterVersion, members: list[str]) -> dict[str, Any]:
    """The fusion's stored spec with its members replaced by ``members`` (exact versions)."""
    spec = dict(fusion.spec)
    spec["method"] = {**spec["method"], "members": list(members)}
    return spec


def write_candidate_spec(fusion: AdapterVersion, members: list[str], folder: Path) -> Path:
    """The candidate spec as a YAML file the build flow reads."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{fusion.name}-cascade-from-{fusion.version}.yaml"
    path.write_text(yaml.safe_dump(candidate_spec(fusion, members), sort_keys=False))
    return path


def record_outcome(registry: Registry, trigger: AdapterVersion, outcome: CascadeOutcome) -> None:
    """A ``cascade`` event on the fusion's adapter for a fusion; for a stack, a
    ``composition_cascade`` event on the version it scored (what both scored, so
    ``composition history`` shows a candidate that lost the gate too) and a ``cascade`` event
    on the adapter whose champion moved."""
    detail = {"trigger": trigger.ref, **outcome.to_dict()}
    if outcome.composition.startswith("stack:"):
        name, _, version = outcome.composition.removeprefix("stack:").partition("@")
        registry.record_composition_event(
            "composition_cascade", name, int(version), origin="cascade", detail=detail
        )
        registry.record_event(
            "cascade", trigger.name, trigger.version, origin="cascade", detail=detail
        )
        return
    fusion = registry.get(outcome.composition)
    registry.record_event("cascade", fusion.name, fusion.version, origin="cascade", detail=detail)
