"""Policy numbers told apart by how they look.

Beside case, a number is now the same as another that differs only in the
form of its characters: an accent typed apart from its letter, full-width
letters and digits, dashes of any kind, characters nobody sees (a
zero-width space, a soft hyphen, a variation selector). The folded numbers
stored before are folded again; such a form can be many times longer than
the number, so the column takes text of any length.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_BATCH = 1000


def upgrade() -> None:
    _retype(sa.Text())
    _refold(_fold)


def downgrade() -> None:
    # Back to case alone (revision 0012), whose keys fit the narrower column.
    _refold(str.casefold)
    _retype(sa.String(160))


def _refold(fold: Callable[[str], str]) -> None:
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
                {"policy": policy_id, "key": fold(number)}
                for policy_id, number in rows[start : start + _BATCH]
            ],
        )


def _fold(number: str) -> str:
    """The rule of this revision: NFKC and case folded, a dash or minus of
    any kind a hyphen, format characters and variation selectors out."""
    folded = unicodedata.normalize(
        "NFKC", unicodedata.normalize("NFKC", number).casefold()
    )
    return "".join(_plain(char) for char in folded)


def _plain(char: str) -> str:
    category = unicodedata.category(char)
    if category == "Pd" or char == "\u2212":
        return "-"
    if category == "Cf" or _VARIATION_SELECTOR.fullmatch(char):
        return ""
    return char


_VARIATION_SELECTOR = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]")


def _retype(type_: sa.types.TypeEngine[str]) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        # SQLite changes a column's type by rebuilding the table, which
        # others reference: their keys are checked once, at commit.
        op.execute("PRAGMA defer_foreign_keys = ON")
    with op.batch_alter_table(
        "policies",
        table_kwargs={"sqlite_autoincrement": True} if sqlite else {},
    ) as batch:
        batch.alter_column("policy_number_key", type_=type_)
