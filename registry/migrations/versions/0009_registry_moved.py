"""A registry remembers being moved: ``registry_identity.moved`` (JSON, null until then).

``adapterops db move`` copies a registry into another database and artifact store; the copy keeps
the registry's id (MLflow's models, the artifact store's marker and the deployments name it), so
the two must never both take writes. The old database records where the registry went and
refuses writes from then on, saying where to point instead. Downgrading drops the column.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("registry_identity") as table:
        table.add_column(sa.Column("moved", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("registry_identity") as table:
        table.drop_column("moved")
