"""Plain, immutable values the registry hands out (never ORM rows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .compositions import stack_definition

__all__ = ["FUSION_MEMBERS", "AdapterVersion", "Composition", "Event", "Resolution", "UsedBy"]

# The lineage key under which a fusion lists the exact member versions it was trained over
# (``["a@1", "b@2"]``): it loads them at every use, so the registry keeps them while it exists.
FUSION_MEMBERS = "fusion_members"


@dataclass(frozen=True)
class AdapterVersion:
    """One immutable version of an adapter and everything known about it. Its repr (a list of
    versions printed in a notebook) shows what tells versions apart; the digest, storage URI,
    spec and lineage are left to the fields (they filled a screen per version)."""

    name: str
    version: int
    base_model: str
    task: str
    language: str
    method: str
    head: str
    digest: str = field(repr=False)
    size: int
    artifact_uri: str = field(repr=False)
    created_at: datetime = field(repr=False)
    description: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict, repr=False)
    lineage: dict[str, Any] = field(default_factory=dict, repr=False)
    aliases: tuple[str, ...] = ()
    base_model_fingerprint: str | None = field(default=None, repr=False)
    base_model_revision: str | None = field(default=None, repr=False)

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``adapterops show --json``)."""
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "base_model": self.base_model,
            "base_model_fingerprint": self.base_model_fingerprint,
            "base_model_revision": self.base_model_revision,
            "task": self.task,
            "language": self.language,
            "method": self.method,
            "head": self.head,
            "digest": self.digest,
            "size": self.size,
            "artifact_uri": self.artifact_uri,
            "aliases": list(self.aliases),
            "metrics": dict(self.metrics),
            "lineage": dict(self.lineage),
            "spec": dict(self.spec),
            "description": self.description,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class UsedBy:
    """What runs over one adapter version (it cannot be deleted while any does): the
    composition versions holding it as a member, the fusion versions trained over it."""

    compositions: tuple[str, ...] = ()
    fusions: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.compositions or self.fusions)

    def phrases(self) -> list[str]:
        """``["composition madx@1", "fusion fused@2 (trained over it)"]``."""
        return [f"composition {c}" for c in self.compositions] + [
            f"fusion {f} (trained over it)" for f in self.fusions
        ]

    def to_dict(self) -> dict[str, list[str]]:
        """JSON-ready form."""
        return {"compositions": list(self.compositions), "fusions": list(self.fusions)}


@dataclass(frozen=True)
class Event:
    """One entry of the append-only event log."""

    at: datetime
    kind: str
    adapter: str
    version: int | None
    alias: str | None
    origin: str
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "at": self.at.isoformat(),
            "kind": self.kind,
            "adapter": self.adapter,
            "version": self.version,
            "alias": self.alias,
            "origin": self.origin,
            "detail": self.detail,
        }

    def summary(self) -> str:
        """What the event's detail says, in one line for a person (``history``'s last column):
        where an alias came from, what a composition version runs over, a cascade's outcome."""
        detail = self.detail
        if self.kind.endswith("alias_set"):
            previous = detail.get("previous")
            return f"moved from version {previous}" if previous is not None else ""
        if self.kind in ("registered", "deleted") and detail.get("digest"):
            return f"sha256 {str(detail['digest'])[:12]}"
        if self.kind in ("composition", "composition_deleted"):
            return "over " + ", ".join(map(str, detail.get("members", [])))
        if self.kind == "rebound":
            before = detail.get("before", {})
            return "was " + ", ".join(f"{k} {v}" for k, v in before.items())
        if self.kind.endswith("cascade"):
            outcome = f"{detail.get('status', '?')} ({detail.get('trigger', '?')})"
            if detail.get("candidate"):
                outcome += f", candidate {detail['candidate']}"
            return f"{outcome}: {detail['reason']}" if detail.get("reason") else outcome
        return ""


@dataclass(frozen=True)
class Composition:
    """A named, versioned composition over exact adapter versions."""

    name: str
    version: int
    definition: dict[str, Any]
    members: tuple[str, ...]
    description: str
    created_at: datetime
    evaluation: dict[str, Any] = field(default_factory=dict)  # how to score it ({}: not scored)
    aliases: tuple[str, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)  # what it scored when saved

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "version": self.version,
            "definition": self.definition,
            "members": list(self.members),
            "description": self.description,
            "created_at": self.created_at.isoformat(),
            "evaluation": self.evaluation,
            "aliases": list(self.aliases),
            "metrics": self.metrics,
        }


@dataclass(frozen=True)
class Resolution:
    """The best answer for (base model, task, language), and why it was chosen."""

    kind: Literal["promoted", "latest", "stack"]
    versions: tuple[AdapterVersion, ...]
    explanation: str

    @property
    def composition(self) -> dict[str, Any] | None:
        """For a stack: the composition to activate (language adapter first, then the task)."""
        if self.kind != "stack":
            return None
        return stack_definition([v.ref for v in self.versions])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``adapterops resolve --json``)."""
        return {
            "kind": self.kind,
            "versions": [v.to_dict() for v in self.versions],
            "composition": self.composition,
            "explanation": self.explanation,
        }
