"""Telling which row of a sheet is a record's when the row lacks its ID.

Two cases need it: the rows of records an import created, whose IDs may not
have been written (see :mod:`sheetbridge.sync.pending_ids`), and rows whose
ID cell a person cleared or a merge emptied, while their record's ID is in
no other row (see :mod:`sheetbridge.sync.engine`). Either way a record's
values are matched against the values of the rows without an ID, each by
its column's header:

1. a row holding the same values, the row the record was in first if that
   one does;
2. else the closest related row: a policy with the same number (no two
   policies share one), or a row with everything but one value the same, and
   with the same name or two values the same at least. A name alone is too
   weak a sign (two people share one), and so is one shared value, such as a
   town. Closest is most values the same; where two rows fit a record
   equally well, or two records a row, nothing is guessed.

Where a row stood is no evidence by itself: a row deleted and a new one
typed in its place must not take the old one's record.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sheetbridge.sync.columns import normalize_header

if TYPE_CHECKING:
    from sheetbridge.sync.engine import TabMapping

RowValues = dict[str, Any]
"""A row's values to recognise it by, by their column's header."""

# The field that names a row of each kind to a person, and the one of them
# that no two records share.
_NAMING_FIELDS = ("policy_number", "name")
_UNIQUE_NAMING_FIELD = "policy_number"


class Sought(Protocol):
    """A record whose row is sought: ``key`` names it to the caller, ``row``
    is where it was first (0 if nowhere), ``values`` what its row held."""

    @property
    def key(self) -> int: ...

    @property
    def row(self) -> int: ...

    @property
    def values(self) -> RowValues: ...


@dataclass(frozen=True)
class Naming:
    """The header of a tab's naming field, and whether no two records share
    its value."""

    header: str
    unique: bool


def naming(mapping: TabMapping) -> Naming:
    return next(
        Naming(normalize_header(column.header), field_name == _UNIQUE_NAMING_FIELD)
        for field_name in _NAMING_FIELDS
        for column in mapping.columns
        if column.field == field_name
    )


def place(
    sought: Iterable[Sought],
    free: list[int],
    values: dict[int, RowValues],
    taken: set[int],
    names: Naming,
) -> dict[int, int]:
    """Each sought record's row (by its key) among the ``free`` rows not
    ``taken``: one with its values, the row it was in first; else the
    closest related row, where that is no guess. Rows placed join ``taken``."""
    waiting = list(sought)
    placed: dict[int, int] = {}
    for entry in waiting:
        alike = [n for n in free if n not in taken and values[n] == entry.values]
        if alike:
            row = entry.row if entry.row in alike else alike[0]
            placed[entry.key] = row
            taken.add(row)
    pairs = sorted(
        (
            (shared(entry.values, values[n]), entry.key, n)
            for entry in waiting
            if entry.key not in placed
            for n in free
            if n not in taken and related(entry.values, values[n], names)
        ),
        reverse=True,
    )
    # Best pairs first; an entry or a row that two pairs fit equally well is
    # a guess, and is left out altogether.
    doubtful_entries: set[int] = set()
    doubtful_rows: set[int] = set()
    for score, key, row in pairs:
        if key in placed or row in taken or key in doubtful_entries:
            continue
        if row in doubtful_rows:
            continue
        rivals = [
            (other_key, other_row)
            for other_score, other_key, other_row in pairs
            if other_score == score
            and (other_key == key) != (other_row == row)
            and other_key not in placed
            and other_row not in taken
        ]
        if rivals:
            doubtful_entries.add(key)
            doubtful_rows.add(row)
            doubtful_entries.update(other_key for other_key, _ in rivals)
            doubtful_rows.update(other_row for _, other_row in rivals)
            continue
        placed[key] = row
        taken.add(row)
    return placed


def related(wanted: RowValues, values: RowValues, names: Naming) -> bool:
    """Whether a row holding ``values`` may be the one that held ``wanted``,
    edited since (step 2)."""
    name = wanted.get(names.header)
    same_name = name is not None and values.get(names.header) == name
    if same_name and names.unique:
        return True
    differ = {k for k in wanted.keys() | values.keys()} - {
        k for k in wanted if values.get(k) == wanted[k]
    }
    return len(differ) <= 1 and (same_name or shared(wanted, values) >= 2)


def shared(first: RowValues, second: RowValues) -> int:
    return sum(1 for k, value in first.items() if second.get(k) == value)
