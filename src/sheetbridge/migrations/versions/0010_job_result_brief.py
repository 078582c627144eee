"""A finished job's result as listings carry it.

The status, the history and the event stream's opening list up to a page
of finished jobs; each result may hold hundreds of issues, which a listing
only counts. The brief is stored beside the whole when the job ends, so a
listing reads it instead. Jobs finished before keep NULL and are briefed as
they are read.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("result_brief", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("result_brief")
