"""Policy numbers told apart in no case.

A number is refused when another policy has it in another case ("ab-1"
beside "AB-1", "пол-1" beside "ПОЛ-1"). Each policy keeps its number folded
to no case beside it, indexed, so the look-up reads one entry instead of
every policy; the numbers already stored are folded here.

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

_BATCH = 1000


def upgrade() -> None:
    with op.batch_alter_table("policies") as batch:
        batch.add_column(sa.Column("policy_number_key", sa.String(160), nullable=True))
    policies = sa.table(
        "policies",
        sa.column("id", sa.Integer),
        sa.column("policy_number", sa.String),
        sa.column("policy_number_key", sa.String),
    )
    connection = op.get_bind()
    rows = connection.execute(sa.select(policies.c.id, policies.c.policy_number)).all()
    for start in range(0, len(rows), _BATCH):
        connection.execute(
            policies.update()
            .where(policies.c.id == sa.bindparam("policy"))
            .values(policy_number_key=sa.bindparam("key")),
            [
                {"policy": policy_id, "key": number.casefold()}
                for policy_id, number in rows[start : start + _BATCH]
            ],
        )
    op.create_index("ix_policies_policy_number_key", "policies", ["policy_number_key"])


def downgrade() -> None:
    op.drop_index("ix_policies_policy_number_key", table_name="policies")
    with op.batch_alter_table("policies") as batch:
        batch.drop_column("policy_number_key")
