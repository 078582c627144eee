"""Wrong passwords typed into the sign-in form, to hold off guessing.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sign_in_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("checked", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sign_in_failures")),
    )
    with op.batch_alter_table("sign_in_failures") as batch:
        batch.create_index("ix_sign_in_failures_who", ["username", "address"])
        batch.create_index(batch.f("ix_sign_in_failures_address"), ["address"])
        batch.create_index(batch.f("ix_sign_in_failures_failed_at"), ["failed_at"])


def downgrade() -> None:
    op.drop_table("sign_in_failures")
