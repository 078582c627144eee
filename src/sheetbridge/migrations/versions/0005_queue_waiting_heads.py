"""queue: turns kept on waiting heads only, one waiting head per key

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_READY_HEADS = sa.text("state = 'queued' AND ready_at IS NOT NULL")
_WAITING_HEADS = sa.text("ready_at IS NOT NULL")
_HEAD_IS_QUEUED = "ready_at IS NULL OR state = 'queued'"


def upgrade() -> None:
    # Until now a job kept its turn once it ran; only waiting heads keep one
    # now. A head waiting for a retry takes its turn at its retry time.
    op.execute(
        "UPDATE jobs SET ready_at = NULL"
        " WHERE ready_at IS NOT NULL AND state <> 'queued'"
    )
    op.execute(
        "UPDATE jobs SET ready_at = run_after"
        " WHERE ready_at IS NOT NULL AND run_after > CURRENT_TIMESTAMP"
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_jobs_ready_heads",
            sqlite_where=_READY_HEADS,
            postgresql_where=_READY_HEADS,
        )
        batch_op.create_index(
            "ix_jobs_waiting_heads",
            ["ready_at", "id"],
            unique=False,
            sqlite_where=_WAITING_HEADS,
            postgresql_where=_WAITING_HEADS,
        )
        batch_op.create_index(
            "uq_jobs_waiting_head_queue_key",
            ["queue_key"],
            unique=True,
            sqlite_where=_WAITING_HEADS,
            postgresql_where=_WAITING_HEADS,
        )
        batch_op.create_check_constraint("waiting_head_is_queued", _HEAD_IS_QUEUED)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_jobs_waiting_head_is_queued"), type_="check")
    # The previous revision knows a running job for its key's head by its turn.
    op.execute("UPDATE jobs SET ready_at = started_at WHERE state = 'running'")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_jobs_waiting_head_queue_key",
            sqlite_where=_WAITING_HEADS,
            postgresql_where=_WAITING_HEADS,
        )
        batch_op.drop_index(
            "ix_jobs_waiting_heads",
            sqlite_where=_WAITING_HEADS,
            postgresql_where=_WAITING_HEADS,
        )
        batch_op.create_index(
            "ix_jobs_ready_heads",
            ["ready_at", "id"],
            unique=False,
            sqlite_where=_READY_HEADS,
            postgresql_where=_READY_HEADS,
        )
