"""Compositions in one JSON shape: ``{"type": ..., "children": [...]}`` (peft_core's block JSON).

Stored definitions used ``"members"`` for the children, or left them out (``{"type": "stack"}``
over the members table). Each is rewritten with ``children`` whose leaves are the exact member
versions (``name@3``) in member order. Downgrade writes ``members`` back.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_compositions = sa.table(
    "compositions", sa.column("id", sa.Integer), sa.column("definition", sa.JSON)
)
_MEMBER_REFS = sa.text(
    "SELECT a.name, v.version FROM composition_members cm "
    "JOIN versions v ON v.id = cm.version_id JOIN adapters a ON a.id = v.adapter_id "
    "WHERE cm.composition_id = :id ORDER BY cm.position"
)


def upgrade() -> None:
    _rewrite(_to_children)


def downgrade() -> None:
    _rewrite(lambda definition, _refs: _rename(definition, "children", "members"))


def _rewrite(change: Any) -> None:
    connection = op.get_bind()
    for row in connection.execute(sa.select(_compositions.c.id, _compositions.c.definition)):
        refs = [
            f"{name}@{version}"
            for name, version in connection.execute(_MEMBER_REFS, {"id": row.id})
        ]
        new = change(dict(row.definition or {}), refs)
        connection.execute(
            _compositions.update().where(_compositions.c.id == row.id).values(definition=new)
        )


def _to_children(definition: dict[str, Any], refs: list[str]) -> dict[str, Any]:
    renamed = _rename(definition, "members", "children")
    if "children" not in renamed:
        return {**renamed, "children": refs}
    if _count(renamed) == len(refs):
        leaves = iter(refs)
        return _replace_leaves(renamed, leaves)
    return renamed


def _rename(node: Any, old: str, new: str) -> Any:
    if not isinstance(node, dict):
        return node
    out = {k: v for k, v in node.items() if k != old}
    if old in node and new not in node:
        out[new] = node[old]
    if isinstance(out.get(new), list):
        out[new] = [_rename(child, old, new) for child in out[new]]
    return out


def _count(node: Any) -> int:
    if isinstance(node, dict):
        return sum(_count(child) for child in node.get("children") or [])
    return 1


def _replace_leaves(node: Any, leaves: Any) -> Any:
    if isinstance(node, dict):
        return {
            **node,
            "children": [_replace_leaves(c, leaves) for c in node.get("children") or []],
        }
    return next(leaves)
