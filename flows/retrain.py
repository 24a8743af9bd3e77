"""Which specs a scheduled retraining run rebuilds, and how each one ended.

A spec is due when it was never built, when its data changed (the dataset fingerprint differs from
the newest version's), when the spec itself changed, or when its ``schedule.cron`` fired since the
newest version was registered. Code changes alone do not retrain everything: a build's identity
includes the code version, so ``adapterops build`` is the way to rebuild on new code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from cronsim import CronSim

from registry import Registry

from .errors import one_line
from .lineage import dataset_fingerprint
from .spec import (
    AdapterSpec,
    SpecError,
    load_spec,
    parse_spec,
    shared_names,
    warn_of_a_relative_base,
)

__all__ = ["RetrainOutcome", "due_reason", "last_fire", "one_line", "what_is_due"]


@dataclass(frozen=True)
class RetrainOutcome:
    """One spec's line in a retraining report."""

    spec: str
    name: str
    # "built", "reused" (an earlier build matched), "up to date" or "failed"; a dry run: "due"
    status: str
    reason: str
    ref: str = ""
    promoted: bool = False
    reused: bool = False
    alias: str = ""  # where the gate put the version (champion, challenger, ...)
    decision: str = ""  # the gate's reason

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def last_fire(cron: str, now: datetime) -> datetime:
    """The latest time at or before ``now`` (UTC) when ``cron`` fired."""
    return next(CronSim(cron, now.astimezone(UTC), reverse=True))


def due_reason(spec: AdapterSpec, registry: Registry, *, now: datetime | None = None) -> str | None:
    """Why ``spec`` should be rebuilt now, or None when its newest version is current."""
    versions = registry.find(name=spec.name)
    if not versions:
        return "never built"
    newest = max(versions, key=lambda v: v.version)
    if newest.lineage.get("dataset_fingerprint") != dataset_fingerprint(spec):
        return "data changed"
    if newest.spec and _as_written_now(newest.spec) != spec.model_dump(mode="json"):
        return "spec changed"
    if spec.schedule.cron:
        fired = last_fire(spec.schedule.cron, now or datetime.now(UTC))
        built = (
            newest.created_at if newest.created_at.tzinfo else newest.created_at.replace(tzinfo=UTC)
        )
        if built < fired:
            return f"schedule {spec.schedule.cron!r} fired at {fired:%Y-%m-%d %H:%M} UTC"
    return None


def _as_written_now(stored: dict[str, Any]) -> dict[str, Any] | None:
    """A stored spec in today's shape: a field added since it was built (with its default)
    is not a change the user made."""
    try:
        return parse_spec(stored).model_dump(mode="json")
    except SpecError:
        return None  # no longer a valid spec: it changed


def readable_specs(spec_paths: list[str]) -> list[tuple[str, AdapterSpec]]:
    """Each spec file that reads as a spec, with its spec (the others are reported by the
    caller, each with its own reason)."""
    readable = []
    for path in spec_paths:
        try:
            readable.append((path, load_spec(path)))
        except Exception:  # said where the file is built, with its reason
            continue
    return readable


def what_is_due(spec_paths: list[str], registry: Registry | None) -> list[RetrainOutcome]:
    """What a retraining run would do with each spec, building nothing: ``due`` with the
    reason, ``up to date``, or ``failed`` with why: a spec that cannot be read, or a due one
    whose build would be refused before it starts (the build's own checks of its inputs: base
    model, data, targets, members...); ``ref``: the spec's newest version, if any. ``registry``
    None: none exists yet, so every spec is due, never built."""
    from .prepare_job import (  # noqa: PLC0415 - torch and the data libraries
        check_against_registry,
        check_inputs,
    )

    outcomes = []
    shared = shared_names(readable_specs(spec_paths))
    for path in spec_paths:
        spec: AdapterSpec | None = None
        if path in shared:  # neither is built: which one the adapter should follow is unknown
            outcomes.append(RetrainOutcome(path, "", "failed", f"name: {shared[path]}"))
            continue
        try:
            spec = load_spec(path)
            reason = due_reason(spec, registry) if registry is not None else "never built"
            if reason is not None:
                check_inputs(spec, registry)
                check_against_registry(spec, registry)
                warn_of_a_relative_base(spec)
        except Exception as exc:  # one unreadable spec must not hide the others' answers
            name = spec.name if spec is not None else ""
            outcomes.append(RetrainOutcome(path, name, status="failed", reason=one_line(exc)))
            continue
        status = "up to date" if reason is None else "due"
        newest = _newest_ref(registry, spec.name)  # what stays current, or would be replaced
        outcomes.append(
            RetrainOutcome(path, spec.name, status=status, reason=reason or "", ref=newest)
        )
    return outcomes


def _newest_ref(registry: Registry | None, name: str) -> str:
    versions = registry.find(name=name) if registry is not None else []
    return max(versions, key=lambda v: v.version).ref if versions else ""
