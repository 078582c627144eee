"""Conflicts waiting for review, and the per-field audit of imports.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_conflicts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("entity", sa.String(length=32), nullable=False),
        sa.Column("record_id", sa.Integer(), nullable=False),
        sa.Column("field", sa.String(length=64), nullable=False),
        sa.Column("column", sa.String(length=100), nullable=False),
        sa.Column("row", sa.Integer(), nullable=True),
        sa.Column("app_value", sa.JSON(), nullable=True),
        sa.Column("sheet_value", sa.JSON(), nullable=True),
        sa.Column("base_value", sa.JSON(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolution", sa.String(length=16), nullable=True),
        sa.Column("resolved_value", sa.JSON(), nullable=True),
        sa.Column("resolved_by", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["resolved_by"],
            ["users.id"],
            name=op.f("fk_sync_conflicts_resolved_by_users"),
        ),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["sync_targets.id"],
            name=op.f("fk_sync_conflicts_target_id_sync_targets"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_conflicts")),
    )
    op.create_index(
        op.f("ix_sync_conflicts_target_id"), "sync_conflicts", ["target_id"]
    )
    op.create_table(
        "import_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("entity", sa.String(length=32), nullable=False),
        sa.Column("record_id", sa.Integer(), nullable=False),
        sa.Column("field", sa.String(length=64), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.Column("undone_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["sync_targets.id"],
            name=op.f("fk_import_changes_target_id_sync_targets"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_import_changes")),
    )
    op.create_index(op.f("ix_import_changes_job_id"), "import_changes", ["job_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_import_changes_job_id"), table_name="import_changes")
    op.drop_table("import_changes")
    op.drop_index(op.f("ix_sync_conflicts_target_id"), table_name="sync_conflicts")
    op.drop_table("sync_conflicts")
