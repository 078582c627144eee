"""Records an import created whose IDs may not be in their sheet rows yet.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_pending_ids",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("entity", sa.String(length=32), nullable=False),
        sa.Column("record_id", sa.Integer(), nullable=False),
        sa.Column("row", sa.Integer(), nullable=False),
        sa.Column("id_column", sa.Integer(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["sync_targets.id"],
            name=op.f("fk_sync_pending_ids_target_id_sync_targets"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_pending_ids")),
    )
    op.create_index(
        op.f("ix_sync_pending_ids_target_id"), "sync_pending_ids", ["target_id"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_sync_pending_ids_target_id"), table_name="sync_pending_ids")
    op.drop_table("sync_pending_ids")
