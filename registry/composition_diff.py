"""What changed between two versions of a composition: which member versions it holds, how its
blocks combine them, and how it is scored. The question after a cascade re-saved one
(``adapterops composition diff madx@1 madx@champion``). Pure: two records in, changes out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .compositions import CHILDREN
from .entities import Composition
from .version_diff import Change, changed, flattened

__all__ = ["CompositionDiff", "blocks_text", "diff_compositions"]


@dataclass(frozen=True)
class CompositionDiff:
    """Two composition versions compared: ``changes`` in the order members (one row per adapter
    name: its version number before and after, None where it is absent), definition (its blocks
    in one line, leaves as adapter names: a new member version is not a new structure), metrics
    (what each scored when saved), evaluation (the spec fields it is scored with) and
    description. ``same_load``: the two load the same
    adapter versions combined the same way (only how they are scored or described differs)."""

    before: str
    after: str
    same_load: bool
    changes: tuple[Change, ...]

    def member_diffs(self) -> list[tuple[str, str]]:
        """The (before, after) versions of each adapter both hold in different versions: what
        ``adapterops diff`` compares next."""
        return [
            (f"{c.field}@{c.before}", f"{c.field}@{c.after}")
            for c in self.changes
            if c.section == "members" and c.before is not None and c.after is not None
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``adapterops composition diff --json``)."""
        return {
            "before": self.before,
            "after": self.after,
            "same_load": self.same_load,
            "changes": [c.to_dict() for c in self.changes],
        }


def diff_compositions(before: Composition, after: Composition) -> CompositionDiff:
    """Every recorded difference from composition version ``before`` to ``after``."""
    members = changed(
        "members", _by_adapter(before.members), _by_adapter(after.members), sort=False
    )
    blocks = changed(
        "definition",
        {"blocks": blocks_text(before.definition)},
        {"blocks": blocks_text(after.definition)},
    )
    metrics = changed("metrics", before.metrics, after.metrics)  # deltas, better or worse
    evaluation = changed("evaluation", flattened(before.evaluation), flattened(after.evaluation))
    description = changed(
        "record", {"description": before.description}, {"description": after.description}
    )
    same_load = before.members == after.members and before.definition == after.definition
    return CompositionDiff(
        before.ref,
        after.ref,
        same_load,
        tuple(members + blocks + metrics + evaluation + description),
    )


def _by_adapter(members: tuple[str, ...]) -> dict[str, int]:
    """``("lang-en@2", "sst2@1")`` as ``{"lang-en": 2, "sst2": 1}`` (a composition holds one
    version of each adapter, each exact)."""
    return {name: int(version) for name, _, version in (ref.partition("@") for ref in members)}


def blocks_text(node: Any) -> str:
    """A definition in one line, leaves by adapter name: ``stack(lang-en, sst2)``,
    ``average(a, b; weights=[0.7, 0.3])``."""
    if not isinstance(node, dict):
        return str(node).partition("@")[0]
    inside = ", ".join(blocks_text(child) for child in node.get(CHILDREN) or [])
    extra = "; ".join(f"{k}={v}" for k, v in node.items() if k not in ("type", CHILDREN))
    return f"{node['type']}({inside}{'; ' + extra if extra else ''})"
