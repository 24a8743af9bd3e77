"""Version numbers are never reused: ``adapters.last_version`` remembers the highest one given.

Before this, the next version was ``max(version) + 1``, so deleting the newest version gave its
number to the next, different, registration. The column starts at the highest number each adapter
ever had: in its versions, or in its ``registered`` events (deleted versions live on there).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE (no batch copy): SQLite adds and drops a simple column in place, and a
    # table copy would trip the foreign keys that point at adapters.
    op.add_column(
        "adapters", sa.Column("last_version", sa.Integer(), nullable=False, server_default="0")
    )
    connection = op.get_bind()
    highest: dict[int, int] = {}
    names: dict[str, int] = {
        str(n): int(i) for n, i in connection.execute(sa.text("SELECT name, id FROM adapters"))
    }
    for adapter_id, version in connection.execute(
        sa.text("SELECT adapter_id, MAX(version) FROM versions GROUP BY adapter_id")
    ):
        highest[adapter_id] = int(version)
    for name, version in connection.execute(
        sa.text(
            "SELECT adapter_name, MAX(version) FROM events "
            "WHERE kind = 'registered' AND version IS NOT NULL GROUP BY adapter_name"
        )
    ):
        if name in names:
            highest[names[name]] = max(highest.get(names[name], 0), int(version))
    for adapter_id, version in highest.items():
        connection.execute(
            sa.text("UPDATE adapters SET last_version = :v WHERE id = :id"),
            {"v": version, "id": adapter_id},
        )


def downgrade() -> None:
    op.drop_column("adapters", "last_version")
