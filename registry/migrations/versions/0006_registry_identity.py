"""The registry gets an identity: ``registry_identity``, one row with a random id.

The artifact store keeps a marker per registry that writes to it (``registries/<id>``), so
garbage collection can tell a store two registries share (a staging and a production database
given the same bucket) and refuse to delete the other's files. Downgrading drops the table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "registry_identity",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_identity")),
    )
    op.bulk_insert(table, [{"id": str(uuid.uuid4())}])


def downgrade() -> None:
    op.drop_table("registry_identity")
