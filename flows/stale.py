"""The compositions an adapter's new champion leaves behind: every fusion holding ``champion``
and every saved composition built over another version of it.

Kept apart from :mod:`flows.cascade` (which trains and scores): ``promote`` and ``cascade
--dry-run`` list them from the registry alone, without loading torch or MLflow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from registry.compositions import answers_per_member
from registry.names import CHAMPION, member_name

from .members import members_of_version

if TYPE_CHECKING:
    from registry import AdapterVersion, Composition, Registry

__all__ = ["StaleComposition", "find_stale", "fusion_as_it_stands", "stack_as_it_stands"]


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


def find_stale(registry: Registry, name: str) -> tuple[AdapterVersion, list[StaleComposition]]:
    """``name``'s champion and every composition still built over another version of it."""
    champion = registry.get(f"{name}@{CHAMPION}")
    stale = []
    for fusion in registry.find(method="fusion", alias=CHAMPION, limit=10_000):
        listed = _stale_fusion(fusion, champion)
        if listed is not None:
            stale.append(listed)
    for composition in registry.compositions():
        stack = _stale_stack(composition, champion)
        if stack is not None:
            stale.append(stack)
    return champion, stale


def stack_as_it_stands(
    registry: Registry, name: str, champion: AdapterVersion
) -> StaleComposition | None:
    """Saved composition ``name``'s newest version as stale over ``champion``, or None when it
    no longer uses another version of ``champion``'s adapter. The cascade re-reads it under
    the composition's alias lock: another cascade (another member's new champion) may have
    saved a version since :func:`find_stale` listed an older one."""
    return _stale_stack(registry.composition(name), champion)


def fusion_as_it_stands(
    registry: Registry, name: str, champion: AdapterVersion
) -> StaleComposition | None:
    """Fusion ``name``'s champion as stale over ``champion``, or None when it no longer uses
    another version of ``champion``'s adapter. The cascade re-reads it before it builds a
    candidate: another cascade may have promoted one since :func:`find_stale` listed it (its
    builds run one after another, each minutes to hours)."""
    return _stale_fusion(registry.get(f"{name}@{CHAMPION}"), champion)


def _stale_fusion(fusion: AdapterVersion, champion: AdapterVersion) -> StaleComposition | None:
    members = members_of_version(fusion)
    if not _uses_another_version(members, champion):
        return None
    return StaleComposition(fusion.ref, "fusion", members, _replaced(members, champion))


def _stale_stack(composition: Composition, champion: AdapterVersion) -> StaleComposition | None:
    members = list(composition.members)
    if not _uses_another_version(members, champion):
        return None
    return StaleComposition(
        f"stack:{composition.name}@{composition.version}",
        "stack",
        members,
        _replaced(members, champion),
        evaluable=not _why_not_scored(composition),
        reason=_why_not_scored(composition),
    )


def _replaced(members: list[str], champion: AdapterVersion) -> list[str]:
    """``members`` with ``champion`` in place of the other version of its adapter."""
    return [champion.ref if member_name(m) == champion.name else m for m in members]


def _why_not_scored(composition: Composition) -> str:
    """Why the cascade cannot score ``composition`` ("" when it can)."""
    if answers_per_member(composition.definition):  # saved with an evaluation before 2026-12
        return "a Parallel composition answers once per member: no one score to gate on"
    if not composition.evaluation:
        return "saved without an evaluation spec (register_composition(evaluation=))"
    return ""


def _uses_another_version(members: list[str], champion: AdapterVersion) -> bool:
    return any(member_name(m) == champion.name and m != champion.ref for m in members)
