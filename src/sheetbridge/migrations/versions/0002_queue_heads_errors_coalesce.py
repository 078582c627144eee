"""queue: ready heads, kept errors, coalescing

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_READY_HEADS = sa.text("state = 'queued' AND ready_at IS NOT NULL")
_UNSTARTED = sa.text("state = 'queued' AND attempts = 0")


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "errors", sa.JSON(), server_default=sa.text("'[]'"), nullable=False
            )
        )
        batch_op.add_column(
            sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("coalesce_key", sa.String(64), nullable=True))
        batch_op.create_index(
            "uq_jobs_unstarted_coalesce_key",
            ["coalesce_key"],
            unique=True,
            sqlite_where=_UNSTARTED,
            postgresql_where=_UNSTARTED,
        )
        batch_op.create_index(
            "ix_jobs_ready_heads",
            ["ready_at", "id"],
            unique=False,
            sqlite_where=_READY_HEADS,
            postgresql_where=_READY_HEADS,
        )
        batch_op.create_index(
            "ix_jobs_queue_key_started_at", ["queue_key", "started_at"], unique=False
        )
    # Jobs queued before this revision: the first active job of each key
    # becomes its head, ready since the epoch, so nothing already queued waits.
    op.execute(
        """
        UPDATE jobs SET ready_at = '1970-01-01 00:00:00+00:00'
        WHERE state IN ('queued', 'running')
          AND id IN (
            SELECT min(id) FROM jobs
            WHERE state IN ('queued', 'running') GROUP BY queue_key
          )
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_queue_key_started_at")
        batch_op.drop_index(
            "ix_jobs_ready_heads",
            sqlite_where=_READY_HEADS,
            postgresql_where=_READY_HEADS,
        )
        batch_op.drop_index(
            "uq_jobs_unstarted_coalesce_key",
            sqlite_where=_UNSTARTED,
            postgresql_where=_UNSTARTED,
        )
        batch_op.drop_column("coalesce_key")
        batch_op.drop_column("ready_at")
        batch_op.drop_column("errors")
