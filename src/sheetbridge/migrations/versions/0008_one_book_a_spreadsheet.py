"""A Google spreadsheet is the sheet of one book only.

The app refused a spreadsheet another book syncs with, but two changes at the
same moment could both pass its look; a partial unique index holds the rule
for both. Books that already share a spreadsheet stop the upgrade, named, for
an admin to point all but one elsewhere first.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa
from alembic import op

from sheetbridge.db import MigrationRefused

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

INDEX = "uq_sync_targets_google_location"
GOOGLE_ONLY = sa.text("backend = 'google'")


def upgrade() -> None:
    _refuse_shared_spreadsheets()
    op.create_index(
        INDEX,
        "sync_targets",
        ["location"],
        unique=True,
        sqlite_where=GOOGLE_ONLY,
        postgresql_where=GOOGLE_ONLY,
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="sync_targets")


def _refuse_shared_spreadsheets() -> None:
    rows = op.get_bind().execute(
        sa.text(
            "SELECT t.location, u.username FROM sync_targets t"
            " JOIN users u ON u.id = t.user_id"
            " WHERE t.backend = 'google' AND t.location IN ("
            "  SELECT location FROM sync_targets WHERE backend = 'google'"
            "  GROUP BY location HAVING COUNT(*) > 1)"
            " ORDER BY t.location, u.username"
        )
    )
    books: defaultdict[str, list[str]] = defaultdict(list)
    for location, username in rows:
        books[location].append(f"{username}'s")
    if not books:
        return
    shared = "; ".join(
        f"spreadsheet {location} is the sheet of "
        f"{', '.join(users[:-1])} and {users[-1]} books"
        for location, users in books.items()
    )
    raise MigrationRefused(
        "cannot give each book a spreadsheet of its own, as this version "
        f"requires: {shared}. Point all but one of those books at another "
        "spreadsheet or back to a workbook (with the version before this one), "
        "then upgrade again. Nothing was changed."
    )
