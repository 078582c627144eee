"""Policy numbers looked up in any case.

A number is refused when another policy has it in another case ("ab-1"
beside "AB-1"); the look-up goes through an index of the numbers in lower
case instead of reading every policy.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_policies_policy_number_lower",
        "policies",
        [sa.func.lower(sa.column("policy_number"))],
    )


def downgrade() -> None:
    op.drop_index("ix_policies_policy_number_lower", table_name="policies")
