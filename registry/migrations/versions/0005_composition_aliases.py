"""Compositions get aliases: ``composition_aliases`` (``pt-sst2@champion``).

One row per (composition name, alias), pointing at one version's row; moving an alias updates
it. Existing compositions have none.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "composition_aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("composition_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["composition_id"],
            ["compositions.id"],
            name=op.f("fk_composition_aliases_composition_id_compositions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_composition_aliases")),
        sa.UniqueConstraint("name", "alias", name=op.f("uq_composition_aliases_name_alias")),
    )
    with op.batch_alter_table("composition_aliases", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_composition_aliases_composition_id"), ["composition_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("composition_aliases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_composition_aliases_composition_id"))
    op.drop_table("composition_aliases")
