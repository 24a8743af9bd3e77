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

Stacks and averages registered with ``Registry.register_composition`` carry no validation data or
head of their own, so the cascade lists them as stale without evaluating them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from registry import AdapterVersion, Registry

from .members import members_of_version
from .promotion import CHAMPION
from .spec import member_name

__all__ = [
    "CascadeOutcome",
    "StaleComposition",
    "candidate_spec",
    "find_stale",
    "record_outcome",
    "write_candidate_spec",
]


@dataclass(frozen=True)
class StaleComposition:
    """A composition over an older version of the adapter whose champion moved."""

    ref: str  # the fusion version holding champion ("fused@1"), or "stack:NAME@v"
    kind: Literal["fusion", "stack"]
    members: list[str]  # the exact versions it was built over
    candidate_members: list[str]  # the same, with the new champion in place
    evaluable: bool = True
    reason: str = ""  # why it cannot be evaluated, when it cannot

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``adapterops cascade --json``)."""
        return asdict(self)


@dataclass(frozen=True)
class CascadeOutcome:
    """What happened to one stale composition."""

    composition: str
    status: Literal["promoted", "not promoted", "failed", "not evaluated"]
    reason: str
    candidate: str | None = None  # the candidate version the build registered
    members: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def find_stale(registry: Registry, name: str) -> tuple[AdapterVersion, list[StaleComposition]]:
    """``name``'s champion and every composition still built over another version of it."""
    champion = registry.get(f"{name}@{CHAMPION}")
    stale = []
    for fusion in registry.find(method="fusion", alias=CHAMPION, limit=10_000):
        members = members_of_version(fusion)
        if _uses_another_version(members, champion):
            replaced = [champion.ref if member_name(m) == name else m for m in members]
            stale.append(StaleComposition(fusion.ref, "fusion", members, replaced))
    for composition in registry.compositions():
        members = list(composition.members)
        if _uses_another_version(members, champion):
            replaced = [champion.ref if member_name(m) == name else m for m in members]
            stale.append(
                StaleComposition(
                    f"stack:{composition.name}@{composition.version}",
                    "stack",
                    members,
                    replaced,
                    evaluable=False,
                    reason="registered compositions carry no validation data to evaluate on",
                )
            )
    return champion, stale


def _uses_another_version(members: list[str], champion: AdapterVersion) -> bool:
    return any(member_name(m) == champion.name and m != champion.ref for m in members)


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
    """A ``cascade`` event on the fusion's adapter: what moved, what was built, why."""
    fusion = registry.get(outcome.composition)
    registry.record_event(
        "cascade",
        fusion.name,
        fusion.version,
        origin="cascade",
        detail={"trigger": trigger.ref, **outcome.to_dict()},
    )
