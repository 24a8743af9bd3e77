"""Compositions may carry how to evaluate them: ``compositions.evaluation``.

A JSON spec document (base model, head, data, evaluate, promote: the fields of a build spec that
say how to score an adapter) that the retraining cascade evaluates a stack or an average on.
Existing compositions get ``{}``: they are listed as stale by the cascade but not evaluated.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE, as in 0003: SQLite adds a simple column in place.
    op.add_column(
        "compositions",
        sa.Column("evaluation", sa.JSON(), nullable=False, server_default=sa.text("'{}'")),
    )


def downgrade() -> None:
    op.drop_column("compositions", "evaluation")
