"""The files each stored manifest lists: ``manifest_files`` (manifest digest, file digest).

gc keeps every version's manifest and the files it lists. It downloaded each manifest on every
run (10,000 versions on a remote S3: 10,000 requests before deleting anything); a registration
now records its manifest's files here, and gc reads them in one query. Versions registered
before this revision have no rows: gc downloads their manifests once and records them (a dry run
records nothing).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "manifest_files",
        sa.Column("manifest", sa.String(length=64), nullable=False),
        sa.Column("file", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("manifest", "file", name=op.f("pk_manifest_files")),
    )


def downgrade() -> None:
    op.drop_table("manifest_files")
