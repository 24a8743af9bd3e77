"""Composition versions carry metrics, as adapter versions do: ``compositions.metrics``.

A JSON object of metric name -> number: what a composition version scored when it was saved (the
retraining cascade records the score its gate weighed; ``composition save --metric`` records
yours), so ``composition show``, ``ls`` and ``diff`` can say how good a version is without
MLflow. A few rows per composition: kept as JSON beside its definition, not as rows of a metrics
table as versions' (those are ordered in SQL over thousands). Existing versions get ``{}``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE, as in 0004: SQLite adds a simple column in place.
    op.add_column(
        "compositions",
        sa.Column("metrics", sa.JSON(), nullable=False, server_default=sa.text("'{}'")),
    )


def downgrade() -> None:
    op.drop_column("compositions", "metrics")
