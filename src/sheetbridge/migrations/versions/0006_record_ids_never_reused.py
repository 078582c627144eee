"""Customer and policy IDs are never reused on SQLite (AUTOINCREMENT).

SQLite hands out the highest deleted rowid again unless the table is declared
AUTOINCREMENT, which needs the table rebuilt. PostgreSQL sequences never reuse
a value, so nothing changes there.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ("customers", "policies")


def upgrade() -> None:
    _rebuild(autoincrement=True)


def downgrade() -> None:
    _rebuild(autoincrement=False)


def _rebuild(*, autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # Rebuilding drops and renames tables that others reference; the foreign
    # keys are checked once, at commit, when every ID is back in place.
    op.execute("PRAGMA defer_foreign_keys = ON")
    for table in TABLES:
        with op.batch_alter_table(
            table,
            recreate="always",
            table_kwargs={"sqlite_autoincrement": autoincrement},
        ):
            pass
