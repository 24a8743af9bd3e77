"""Promotion: a pure decision, then one side effect (moving aliases, MLflow first).

``decide`` is pure and exhaustively tested. ``promote`` moves an alias in MLflow and records the
move in the registry; promoting to ``champion`` makes the old champion ``previous``; ``rollback``
swaps them back. Deprecated MLflow stages are never used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mlflow.tracking import MlflowClient

from registry import AdapterVersion, NotFoundError, Registry, higher_is_better
from registry.names import CHAMPION, check_alias_case, check_new_alias

from .errors import PromotionRefusedError
from .mlflow_models import (
    check_name_is_ours,
    delete_mlflow_alias,
    mirror_version,
    set_mlflow_alias,
)
from .mlflow_names import adapter_model

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "PREVIOUS",
    "Decision",
    "Policy",
    "PromotionRefusedError",
    "check_not_worse",
    "decide",
    "move_alias",
    "promote",
    "remove_alias",
    "rollback",
    "version_holding",
]

CHALLENGER, PREVIOUS = "challenger", "previous"


@dataclass(frozen=True)
class Policy:
    """The gate: ``metric`` must beat the champion's by at least ``min_delta``."""

    metric: str = "accuracy"
    min_delta: float = 0.0
    higher_is_better: bool = True

    @classmethod
    def for_metric(cls, metric: str, min_delta: float = 0.0) -> Policy:
        """The policy for ``metric``: lower is better for perplexity and losses, higher for the
        rest (the registry's rule, which ``ls --order-by`` and ``resolve`` follow too)."""
        return cls(metric=metric, min_delta=min_delta, higher_is_better=higher_is_better(metric))


@dataclass(frozen=True)
class Decision:
    """Whether the candidate becomes champion, and why (for people and the event log)."""

    promote: bool
    reason: str
    candidate: float
    champion: float | None
    outcome: Literal["no-champion", "better", "not-better"]


def decide(candidate: float, champion: float | None, policy: Policy) -> Decision:
    """Promote when there is no champion, or when the candidate beats it by ``min_delta``.

    Both numbers must be measured on the same evaluation set. With ``min_delta`` 0 a tie promotes
    the candidate (the newer version wins ties); a positive ``min_delta`` demands a real gain.
    """
    if not math.isfinite(candidate):  # a broken evaluation never promotes
        return Decision(
            False,
            f"candidate {policy.metric} is {candidate}, not a finite number",
            candidate,
            champion,
            "not-better",
        )
    if champion is None or not math.isfinite(champion):
        return Decision(
            True,
            f"no champion yet; candidate {policy.metric} {candidate:.4f}",
            candidate,
            champion,
            "no-champion",
        )
    gain = candidate - champion if policy.higher_is_better else champion - candidate
    verdict = gain >= policy.min_delta
    comparison = (
        f"{policy.metric} {candidate:.4f} vs champion {champion:.4f} "
        f"(gain {gain:+.4f}, required {policy.min_delta:+.4f})"
    )
    return Decision(verdict, comparison, candidate, champion, "better" if verdict else "not-better")


def check_not_worse(registry: Registry, ref: str, alias: str = CHAMPION) -> str | None:
    """Refuse moving ``alias`` to ``ref`` when it scores worse than the version holding it now.

    Both scores are the metrics recorded at registration, compared on the metric the version's
    spec gates on (``accuracy`` for versions pushed without a spec). Returns the comparison when
    the move is not worse, None when there is nothing to compare.
    """
    target = registry.get(ref)
    holder = version_holding(registry, target.name, alias)
    if holder is None or holder.version == target.version:
        return None
    metric = (target.spec or {}).get("evaluate", {}).get("metric", "accuracy")
    candidate, current = target.metrics.get(metric), holder.metrics.get(metric)
    if candidate is None or current is None:
        return None
    decision = decide(float(candidate), float(current), Policy.for_metric(metric))
    if not decision.promote:
        raise PromotionRefusedError(
            f"{target.ref} scores {metric} {candidate:.4f}, worse than {alias} {holder.ref} "
            f"({current:.4f})",
            alias,
            (holder.ref, target.ref),
        )
    return decision.reason


def promote(
    registry: Registry,
    client: MlflowClient,
    ref: str,
    alias: str = CHAMPION,
    *,
    origin: str = "cli",
) -> AdapterVersion:
    """Point ``alias`` at ``ref`` in MLflow, then in the registry.

    A new champion demotes the old one to ``previous``.
    """
    target = registry.get(ref)
    model = adapter_model(target.name)
    mirror_version(client, registry, target)
    if alias == CHAMPION:
        current = version_holding(registry, target.name, CHAMPION)
        if current is not None and current.version != target.version:
            mirror_version(client, registry, current)
            set_mlflow_alias(client, model, PREVIOUS, current.version)
            registry.set_alias(current.ref, PREVIOUS, origin=origin)
        challenger = version_holding(registry, target.name, CHALLENGER)
        if challenger is not None and challenger.version == target.version:
            delete_mlflow_alias(client, model, CHALLENGER)  # it won: no longer a challenger
            registry.remove_alias(target.name, CHALLENGER, origin=origin)
    return move_alias(registry, client, target.ref, alias, origin=origin)


def move_alias(
    registry: Registry, client: MlflowClient, ref: str, alias: str, *, origin: str = "cli"
) -> AdapterVersion:
    """Point ``alias`` at ``ref`` as it is (no gate, no ``previous``: that is :func:`promote`),
    in MLflow first, then in the registry. A move made in the registry alone would be undone
    by the next :func:`~flows.mlflow_models.sync_aliases`, where MLflow wins."""
    check_new_alias(alias)  # before MLflow sees it
    target = registry.get(ref)
    held = {a for version in registry.find(name=target.name) for a in version.aliases}
    check_alias_case(alias, held, f"adapter {target.name!r}")
    mirror_version(client, registry, target)
    set_mlflow_alias(client, adapter_model(target.name), alias, target.version)
    return registry.set_alias(target.ref, alias, origin=origin)


def remove_alias(
    registry: Registry, client: MlflowClient, name: str, alias: str, *, origin: str = "cli"
) -> None:
    """Take ``alias`` off adapter ``name``, in MLflow first, then in the registry (a version
    no alias refers to can be deleted)."""
    if alias not in {a for v in registry.find(name=name) for a in v.aliases}:
        registry.get(f"{name}@{alias}")  # says which aliases the adapter has
    check_name_is_ours(client, registry, name)  # not another registry's alias
    delete_mlflow_alias(client, adapter_model(name), alias)
    registry.remove_alias(name, alias, origin=origin)


def rollback(
    registry: Registry, client: MlflowClient, name: str, *, origin: str = "cli"
) -> AdapterVersion:
    """Move ``champion`` back to the ``previous`` version (the two swap)."""
    previous = version_holding(registry, name, PREVIOUS)
    if previous is None:
        raise NotFoundError(f"adapter {name!r} has no 'previous' version to roll back to")
    champion = version_holding(registry, name, CHAMPION)
    model = adapter_model(name)
    mirror_version(client, registry, previous)
    set_mlflow_alias(client, model, CHAMPION, previous.version)
    if champion is not None:
        mirror_version(client, registry, champion)
        set_mlflow_alias(client, model, PREVIOUS, champion.version)
    else:
        delete_mlflow_alias(client, model, PREVIOUS)
    restored = registry.set_alias(previous.ref, CHAMPION, origin=origin)
    if champion is not None:
        registry.set_alias(champion.ref, PREVIOUS, origin=origin)
    else:
        registry.remove_alias(name, PREVIOUS, origin=origin)
    return restored


def version_holding(registry: Registry, name: str, alias: str) -> AdapterVersion | None:
    """The version of ``name`` holding ``alias``; None when no version holds it."""
    try:
        return registry.get(f"{name}@{alias}")
    except NotFoundError:
        return None
