"""Finding the rows whose new records' IDs an import may not have written.

An import commits the records it creates from rows typed into the sheet, then
writes their IDs into those rows. A sync that stops in between (the worker
dies, the sheet refuses the write) leaves rows without IDs for records that
exist. Every such record is kept as a :class:`PendingRow`, with the values its
row had, until a sync sees its ID in the sheet. Before planning, each sync
finds the row again, reads the tab as if the ID were there already, and writes
it there:

1. a row that holds the ID already, and is still related to the record (see
   3), needs nothing: the write landed;
2. else a row without an ID (or with one that reads as none) holding the same
   values, the one it was in first if that one does;
3. else the closest related row without an ID, wherever it moved: a policy
   with the same number (no two policies share one), or a row with
   everything but one value the same, and with the same name or two values
   the same at least. A name alone is too weak a sign (two people share
   one), and so is one shared value, such as a town. Closest is most values
   the same; where two rows fit a record equally well, or two records a row,
   nothing is guessed.

Where a row stood is no evidence by itself: a row deleted and a new one
typed in its place must not take the old one's record. A record whose row is
found in none of these ways is reported back as lost, so that it is treated
as never synced: a to-sheet writes it back as a new row, and a row holding
its ID shows its differences as conflicts, rather than an import deleting,
flagging or overwriting it. At worst, a row changed past recognition leaves a
second record beside the first; nothing is lost or overwritten. While the
tab's name or ID header is renamed, entries stay pending and their records
are left out of the sync.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sheetbridge.sheets.base import Cell, TabData
from sheetbridge.sync.columns import CellParser, normalize_header
from sheetbridge.sync.engine import TabMapping, read_id

# The field that names a row of each kind to a person (step 3), and the one
# of them that no two records share.
_NAMING_FIELDS = ("policy_number", "name")
_UNIQUE_NAMING_FIELD = "policy_number"

RowValues = dict[str, Any]
"""A row's cells by their column's header, as JSON: blank cells left out."""


@dataclass(frozen=True)
class PendingRow:
    """A created record and the row it was created from."""

    key: int  # the stored entry's own ID
    record_id: int
    row: int  # 1-based sheet row
    id_column: int  # 1-based
    values: RowValues


@dataclass
class Found:
    """What :func:`find_rows` found in one tab."""

    tab: TabData | None
    cells: dict[tuple[int, int], Cell] = field(default_factory=dict)
    settled: list[int] = field(default_factory=list)  # keys of entries done with
    lost: set[int] = field(default_factory=set)  # record IDs without a row
    # Record IDs whose rows cannot be recognised this time (a header is
    # renamed): a sync leaves them out, neither gone nor new.
    unsure: set[int] = field(default_factory=set)


def row_values(
    mapping: TabMapping, header: Sequence[Cell], cells: Sequence[Cell]
) -> RowValues:
    """A row's values to recognise it by: every cell under a header but the
    ID's and those of the columns the app fills in (an agent's name, which a
    person may type as the app would write it), by its header."""
    skip = _not_compared(mapping)
    values: RowValues = {}
    for name, cell in zip(header, cells, strict=False):
        title = normalize_header(name)
        if title and title not in skip and not _is_blank(cell):
            values[title] = _plain(cell)
    return values


def _not_compared(mapping: TabMapping) -> set[str]:
    return {normalize_header(mapping.id_header)} | {
        normalize_header(column.header) for column in mapping.columns if column.readonly
    }


def find_rows(
    mapping: TabMapping, tab: TabData | None, pending: Sequence[PendingRow]
) -> Found:
    """The tab as it reads once the pending records' IDs are in their rows,
    the cells to write for that, and which entries are done with."""
    found = Found(tab)
    if not pending:
        return found
    if tab is None:
        found.lost = {entry.record_id for entry in pending}
        found.settled = [entry.key for entry in pending]
        return found
    rows = [list(row) for row in tab.rows]
    header = rows[0] if rows else []
    naming = _naming(mapping)
    named = naming.header in {normalize_header(name) for name in header}
    column = _id_column(mapping, header)
    skip = _not_compared(mapping)
    waiting: list[PendingRow] = []
    for entry in pending:
        if not named or (
            # A column headed otherwise now: the ID header is renamed for a
            # while, never overwritten.
            column is None and not _is_blank(_at(rows, 1, entry.id_column))
        ):
            found.unsure.add(entry.record_id)
        else:
            waiting.append(
                dataclasses.replace(
                    entry,
                    id_column=column or entry.id_column,
                    # as stored before the app's own columns were left out
                    values={k: v for k, v in entry.values.items() if k not in skip},
                )
            )
    if not waiting:
        return found
    values = {
        n: row_values(mapping, header, rows[n - 1]) for n in range(2, len(rows) + 1)
    }
    parser = CellParser()
    ids = {n: read_id(_at(rows, n, column), parser) for n in values} if column else {}
    row_of: dict[int, int] = {}
    for number, held in ids.items():
        if held is not None:
            row_of.setdefault(held, number)
    taken: set[int] = set()
    for entry in list(waiting):  # the write landed, and the row is still its
        row = row_of.get(entry.record_id)
        if row is not None and _related(entry, values[row], naming):
            taken.add(row)
            found.settled.append(entry.key)
            waiting.remove(entry)
    # Rows a record may be placed in: no ID, or none that reads as one.
    free = [n for n in values if ids.get(n) is None]
    placed = _place(waiting, free, values, taken, naming)
    for entry in waiting:
        found.settled.append(entry.key)
        row = placed.get(entry.key)
        if row is None:
            found.lost.add(entry.record_id)
            continue
        _put(rows, row, entry.id_column, entry.record_id)
        found.cells[(row, entry.id_column)] = entry.record_id
        if _is_blank(_at(rows, 1, entry.id_column)):  # the ID header, too
            _put(rows, 1, entry.id_column, mapping.id_header)
            found.cells[(1, entry.id_column)] = mapping.id_header
    found.tab = dataclasses.replace(tab, rows=rows)
    return found


def _place(
    waiting: list[PendingRow],
    free: list[int],
    values: dict[int, RowValues],
    taken: set[int],
    naming: Naming,
) -> dict[int, int]:
    """Each entry's row (by entry key): one with its values, the row it was
    in first; else the closest related row, where that is no guess."""
    placed: dict[int, int] = {}
    for entry in waiting:
        alike = [n for n in free if n not in taken and values[n] == entry.values]
        if alike:
            row = entry.row if entry.row in alike else alike[0]
            placed[entry.key] = row
            taken.add(row)
    pairs = sorted(
        (
            (_shared(entry.values, values[n]), entry.key, n)
            for entry in waiting
            if entry.key not in placed
            for n in free
            if n not in taken and _related(entry, values[n], naming)
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


def _related(entry: PendingRow, values: RowValues, naming: Naming) -> bool:
    """Whether a row may be the entry's, edited (step 3)."""
    name = entry.values.get(naming.header)
    same_name = name is not None and values.get(naming.header) == name
    if same_name and naming.unique:
        return True
    differ = {k for k in entry.values.keys() | values.keys()} - {
        k for k in entry.values if values.get(k) == entry.values[k]
    }
    return len(differ) <= 1 and (same_name or _shared(entry.values, values) >= 2)


def _shared(first: RowValues, second: RowValues) -> int:
    return sum(1 for k, value in first.items() if second.get(k) == value)


def _id_column(mapping: TabMapping, header: Sequence[Cell]) -> int | None:
    """The tab's ID column by its header; None if it has none (yet)."""
    wanted = normalize_header(mapping.id_header)
    for index, value in enumerate(header, 1):
        if normalize_header(value) == wanted:
            return index
    return None


@dataclass(frozen=True)
class Naming:
    """The header of a tab's naming field, and whether no two records share
    its value."""

    header: str
    unique: bool


def _naming(mapping: TabMapping) -> Naming:
    return next(
        Naming(normalize_header(column.header), field_name == _UNIQUE_NAMING_FIELD)
        for field_name in _NAMING_FIELDS
        for column in mapping.columns
        if column.field == field_name
    )


def _at(rows: list[list[Cell]], number: int, column: int) -> Cell:
    if number > len(rows):
        return None
    cells = rows[number - 1]
    return cells[column - 1] if column <= len(cells) else None


def _put(rows: list[list[Cell]], number: int, column: int, value: Cell) -> None:
    cells = rows[number - 1]
    cells.extend([None] * (column - len(cells)))
    cells[column - 1] = value


def _is_blank(value: Cell) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _plain(value: Cell) -> object:
    """A cell as JSON stores it, and compares the same once read back."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    return f"{type(value).__name__}:{value}"
