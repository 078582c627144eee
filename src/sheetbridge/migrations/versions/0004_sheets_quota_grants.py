"""Sheets API quota grants shared by every process of a deployment.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sheets_quota_grants",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("bucket", sa.Text(), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sheets_quota_grants")),
    )
    op.create_index(
        "ix_sheets_quota_grants_bucket_time",
        "sheets_quota_grants",
        ["bucket", "granted_at"],
    )


def downgrade() -> None:
    op.drop_index(
        "ix_sheets_quota_grants_bucket_time", table_name="sheets_quota_grants"
    )
    op.drop_table("sheets_quota_grants")
