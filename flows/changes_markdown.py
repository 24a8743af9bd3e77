"""What changed since an earlier version, as Markdown for MLflow's version pages: the rows
``adapterops diff`` and ``adapterops composition diff`` print. No torch: composition commands
write these pages too."""

from __future__ import annotations

from collections.abc import Sequence

from registry import Change, CompositionDiff, VersionDiff, shown

__all__ = ["changes_since", "composition_changes_since"]

_MOST_ROWS = 30  # a method switch lists every field of both methods: the page stays readable


def changes_since(alias: str, diff: VersionDiff) -> str:
    """What changed from the version holding ``alias`` to this one (its metrics with deltas,
    spec fields, data and code)."""
    return _section(
        f"Changes since {alias} {diff.before}",
        diff.before,
        diff.after,
        diff.changes,
        nothing="No recorded difference: the same record, metrics, lineage and spec.",
        command=f"adapterops diff {diff.before} {diff.after}",
    )


def composition_changes_since(diff: CompositionDiff) -> str:
    """What changed from an earlier version of a composition (member versions, blocks,
    evaluation), with the command for each member that changed."""
    text = _section(
        f"Changes since {diff.before}",
        diff.before,
        diff.after,
        diff.changes,
        nothing="No recorded difference: the same members, blocks, evaluation and description.",
        command=f"adapterops composition diff {diff.before} {diff.after}",
    )
    members = [f"- `adapterops diff {old} {new}`" for old, new in diff.member_diffs()]
    if members:
        text += "\nWhat changed in each member:\n\n" + "\n".join(members) + "\n"
    return text


def _section(
    title: str, before: str, after: str, changes: Sequence[Change], *, nothing: str, command: str
) -> str:
    rows = [
        f"| {c.section} | {c.field} | {_cell(c.field, c.before)} | {_cell(c.field, c.after)} "
        f"| {c.verdict} |"
        for c in changes
    ]
    lines = ["", f"## {title}", ""]
    if not rows:
        lines.append(nothing)
    else:
        lines += [f"| | field | {before} | {after} | change |", "|---|---|---|---|---|"]
        lines += rows[:_MOST_ROWS]
    if len(rows) > _MOST_ROWS:
        lines += ["", f"... and {len(rows) - _MOST_ROWS} more: `{command}`."]
    return "\n".join(lines) + "\n"


def _cell(field: str, value: object) -> str:
    return f"`{shown(value, field)}`" if value is not None else "-"
