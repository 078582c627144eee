"""Whether a conflict's base value is known.

A conflict found with no earlier sync of its field with the sheet (a book
just pointed at it) has no base; it was stored as an empty base, which the
conflicts panel showed as "was (empty)". Conflicts stored before keep true.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sync_conflicts") as batch:
        batch.add_column(
            sa.Column(
                "base_known", sa.Boolean(), nullable=False, server_default=sa.true()
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("sync_conflicts") as batch:
        batch.drop_column("base_known")
