"""Finding the rows whose new records' IDs an import may not have written.

An import commits the records it creates from rows typed into the sheet, then
writes their IDs into those rows. A sync that stops in between (the worker
dies, the sheet refuses the write) leaves rows without IDs for records that
exist. Every such record is kept as a :class:`PendingRow`, with the values its
row had, until a sync sees its ID in the sheet. Before planning, each sync
finds the row again, reads the tab as if the ID were there already, and writes
it there:

1. a row that holds the ID already (the write landed) needs nothing;
2. else a row without an ID holding the same values (the one it was in
   first, if that one does);
3. else a row without an ID whose name (for a policy, its number) is the
   one the record was created with: the row, edited since, wherever it was
   moved. Of several, the one it was in first, else the first.

Where the row stood is no evidence by itself: a row deleted and a new one
typed in its place must not take the old one's record. A record whose row is
found in none of these ways is reported back as lost, so that it is treated
as never synced: a to-sheet writes it back as a new row, rather than an
import deleting or flagging it. At worst, a row both renamed and edited
before its ID was written leaves a second record beside the first; nothing
is lost or overwritten.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sheetbridge.sheets.base import Cell, TabData
from sheetbridge.sync.columns import CellParser, normalize_header
from sheetbridge.sync.engine import TabMapping, read_id

# The field that names a row of each kind to a person: the key of step 3.
_NAMING_FIELDS = ("policy_number", "name")

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


def row_values(
    mapping: TabMapping, header: Sequence[Cell], cells: Sequence[Cell]
) -> RowValues:
    """A row's values to recognise it by: every cell under a header but the
    ID's, by its header."""
    skip = normalize_header(mapping.id_header)
    values: RowValues = {}
    for name, cell in zip(header, cells, strict=False):
        title = normalize_header(name)
        if title and title != skip and not _is_blank(cell):
            values[title] = _plain(cell)
    return values


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
    column = _id_column(mapping, header)
    waiting: list[PendingRow] = []
    taken: set[int] = set()
    for entry in pending:
        at = column or entry.id_column
        if column is None and not _is_blank(_at(rows, 1, at)):
            # That column holds something else now: never write an ID there.
            found.lost.add(entry.record_id)
            found.settled.append(entry.key)
        else:
            waiting.append(dataclasses.replace(entry, id_column=at))
    holding = _rows_by_id(rows, column) if column else {}
    for entry in list(waiting):
        row = holding.get(entry.record_id)
        if row is not None:  # the write landed
            taken.add(row)
            found.settled.append(entry.key)
            waiting.remove(entry)
    free = {
        number: row_values(mapping, header, rows[number - 1])
        for number in range(2, len(rows) + 1)
        if column is None or _is_blank(_at(rows, number, column))
    }
    placed: dict[int, int] = {}  # entry key -> row
    naming = _naming_header(mapping)

    def same_values(entry: PendingRow, values: RowValues) -> bool:
        return values == entry.values

    def same_name(entry: PendingRow, values: RowValues) -> bool:
        name = entry.values.get(naming)
        return name is not None and values.get(naming) == name

    for matches in (same_values, same_name):
        for entry in waiting:
            if entry.key in placed:
                continue
            alike = [
                number
                for number, values in free.items()
                if number not in taken and matches(entry, values)
            ]
            if alike:
                # The row it was made from, if that one is alike.
                row = entry.row if entry.row in alike else alike[0]
                placed[entry.key] = row
                taken.add(row)
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


def _id_column(mapping: TabMapping, header: Sequence[Cell]) -> int | None:
    """The tab's ID column by its header; None if it has none (yet)."""
    wanted = normalize_header(mapping.id_header)
    for index, value in enumerate(header, 1):
        if normalize_header(value) == wanted:
            return index
    return None


def _naming_header(mapping: TabMapping) -> str:
    return next(
        normalize_header(column.header)
        for field_name in _NAMING_FIELDS
        for column in mapping.columns
        if column.field == field_name
    )


def _rows_by_id(rows: list[list[Cell]], column: int) -> dict[int, int]:
    parser = CellParser()
    by_id: dict[int, int] = {}
    for number in range(2, len(rows) + 1):
        record_id = read_id(_at(rows, number, column), parser)
        if record_id is not None:
            by_id.setdefault(record_id, number)
    return by_id


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
