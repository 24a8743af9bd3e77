"""What changed between two adapter versions: the question a reviewer asks before promoting one
(``adapterops diff NAME@champion NAME@4``): its scores, the spec it was trained with, its data and
code, and whether the files differ at all. Pure: two records in, a list of changes out."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .entities import AdapterVersion
from .metrics import higher_is_better

__all__ = [
    "COUNTS", "Change", "VersionDiff", "changed", "diff_versions", "diff_with_spec", "flattened",
    "shown",
]  # fmt: skip

# Recorded next to the scores, but sizes of the evaluation, not measures of quality.
COUNTS = frozenset({"examples", "tokens", "generated"})
_LONG_HEX = re.compile(r"(?:[0-9a-f]{64}|[0-9a-f]{40})(\+dirty)?")  # sha256; a git commit
# A version's own identity: they differ between any two versions, and say nothing about why.
_IDENTITIES = frozenset({"run_id", "build_key"})
_RECORD_FIELDS = (
    "base_model", "base_model_fingerprint", "base_model_revision", "task", "language", "method",
    "head", "size",
)  # fmt: skip
# The spec's fields the record already holds (compared there, once).
_SPEC_FIELDS_ON_THE_RECORD = frozenset({"name", "base_model", "task", "language"})


@dataclass(frozen=True)
class Change:
    """One field that differs. ``section``: ``record`` (base model, method, size...),
    ``metrics``, ``lineage`` (data fingerprint, code version...) or ``spec`` (dotted paths such as
    ``train.learning_rate``). A value missing on one side is None."""

    section: str
    field: str
    before: Any
    after: Any

    @property
    def delta(self) -> float | None:
        """``after - before`` for a metric both sides recorded."""
        if self.section != "metrics" or self.before is None or self.after is None:
            return None
        return float(self.after) - float(self.before)

    @property
    def better(self) -> bool | None:
        """Whether a metric moved the good way (lower for perplexity and losses); None for
        counts, for a metric one side lacks, and for everything that is not a metric."""
        delta = self.delta
        if delta is None or self.field in COUNTS or delta == 0:
            return None
        return (delta > 0) == higher_is_better(self.field)

    @property
    def verdict(self) -> str:
        """``+0.0125 better`` for a metric both versions recorded; empty otherwise."""
        if self.delta is None:
            return ""
        word = {True: " better", False: " worse", None: ""}[self.better]
        return f"{self.delta:+.4g}{word}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; metrics carry ``delta`` and ``better`` too."""
        row = {
            "section": self.section, "field": self.field, "before": self.before,
            "after": self.after,
        }  # fmt: skip
        if self.section == "metrics":
            row |= {"delta": self.delta, "better": self.better}
        return row


@dataclass(frozen=True)
class VersionDiff:
    """Two versions compared: ``changes`` in the order record, metrics, lineage, spec.
    ``spec_compared`` is False when either was registered without its spec (``push`` without
    ``--spec``): their training settings are unknown, not equal. ``same_files`` is None when
    ``after`` is a spec not built yet (:func:`diff_with_spec`)."""

    before: str
    after: str
    same_files: bool | None
    spec_compared: bool
    changes: tuple[Change, ...]

    def section(self, name: str) -> list[Change]:
        """The changes of one section."""
        return [c for c in self.changes if c.section == name]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``adapterops diff --json``)."""
        return {
            "before": self.before,
            "after": self.after,
            "same_files": self.same_files,
            "spec_compared": self.spec_compared,
            "changes": [c.to_dict() for c in self.changes],
        }


def diff_versions(before: AdapterVersion, after: AdapterVersion) -> VersionDiff:
    """Every recorded difference between ``before`` and ``after`` (in that direction)."""
    record = changed(
        "record",
        {f: getattr(before, f) for f in _RECORD_FIELDS},
        {f: getattr(after, f) for f in _RECORD_FIELDS},
        sort=False,
    )
    metrics = changed("metrics", before.metrics, after.metrics)
    lineage = changed("lineage", _without(before.lineage), _without(after.lineage))
    return _with_spec(
        before, after.ref, after.spec, record + metrics + lineage, before.digest == after.digest
    )


def diff_with_spec(
    before: AdapterVersion, spec: dict[str, Any], lineage: dict[str, Any], label: str
) -> VersionDiff:
    """What building ``spec`` (a spec file ``label``, as a build stores it) would change from
    ``before``: the record fields a spec sets, the ``lineage`` a build of it would record here
    (data fingerprint, code version...) and the spec's fields. No metrics and no files: it is not
    built yet. For CI: the change a pull request makes, read before anything trains."""
    after_record = {
        "base_model": spec.get("base_model"), "task": spec.get("task"),
        "language": spec.get("language"), "method": spec.get("method", {}).get("type"),
        "head": spec.get("head", {}).get("type"),
    }  # fmt: skip
    record = changed(
        "record", {f: getattr(before, f) for f in after_record}, after_record, sort=False
    )
    compared = _without(lineage)  # only what a build records before it trains
    lineage_changes = changed("lineage", {k: before.lineage.get(k) for k in compared}, compared)
    return _with_spec(before, label, spec, record + lineage_changes, None)


def _with_spec(
    before: AdapterVersion,
    after: str,
    after_spec: dict[str, Any],
    changes: list[Change],
    same_files: bool | None,
) -> VersionDiff:
    """The diff, with the spec's fields compared when both sides have a spec."""
    spec_compared = bool(before.spec) and bool(after_spec)
    if spec_compared:
        on_record = _SPEC_FIELDS_ON_THE_RECORD
        changes = changes + changed(
            "spec", flattened(before.spec, skip=on_record), flattened(after_spec, skip=on_record)
        )
    return VersionDiff(before.ref, after, same_files, spec_compared, tuple(changes))


def shown(value: Any, field: str = "") -> str:
    """A value as one short cell: None as ``-``, floats to 4 significant digits, lists joined,
    a size in bytes with thousands separators, sha256 digests and git commits cut to their first
    12 characters (``+dirty`` kept)."""
    if value is None:
        return "-"
    if field == "size" and isinstance(value, int):
        return f"{value:,} bytes"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    text = str(value)
    match = _LONG_HEX.fullmatch(text)
    return f"{text[:12]}...{match.group(1) or ''}" if match else text


def changed(
    section: str, before: dict[str, Any], after: dict[str, Any], *, sort: bool = True
) -> list[Change]:
    """The keys whose values differ, sorted (``sort=False``: in ``before``'s order, then the
    keys only ``after`` has)."""
    keys = list(before) + [k for k in after if k not in before]
    if sort:
        keys.sort()
    return [
        Change(section, key, before.get(key), after.get(key))
        for key in keys
        if before.get(key) != after.get(key)
    ]


def _without(lineage: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in lineage.items() if k not in _IDENTITIES}


def flattened(
    spec: dict[str, Any], prefix: str = "", *, skip: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """``{"train": {"learning_rate": 1e-3}}`` as ``{"train.learning_rate": 1e-3}``; lists stay
    whole values (``method.targets``). Top-level keys in ``skip`` are left out."""
    flat: dict[str, Any] = {}
    for key, value in spec.items():
        if not prefix and key in skip:
            continue
        if isinstance(value, dict) and value:
            flat |= flattened(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
