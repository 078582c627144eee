"""Finding the rows whose new records' IDs an import may not have written.

An import commits the records it creates from rows typed into the sheet, then
writes their IDs into those rows. A sync that stops in between (the worker
dies, the sheet refuses the write) leaves rows without IDs for records that
exist. Every such record is kept as a :class:`PendingRow` until a sync sees
its ID in the sheet; before planning, each sync finds the row again and reads
the tab as if the ID were there already, and writes it there:

1. a row that holds the ID already (the write landed) needs nothing;
2. else a row without an ID whose values are the ones the record was created
   from, the one it was in first;
3. else the row it was in, if that still has no ID (it was edited since).

A record whose row is found in none of these ways (deleted, or moved and
edited) is reported back as lost, so that it is treated as never synced: a
to-sheet writes it to the sheet as a new row, rather than an import deleting
or flagging it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from sheetbridge.sheets.base import Cell, TabData
from sheetbridge.sync.columns import CellParser
from sheetbridge.sync.engine import TabMapping, read_id


@dataclass(frozen=True)
class PendingRow:
    """A created record and the row it was created from."""

    key: int  # the stored entry's own ID
    record_id: int
    row: int  # 1-based sheet row
    id_column: int  # 1-based
    fingerprint: str


@dataclass
class Found:
    """What :func:`find_rows` found in one tab."""

    tab: TabData | None
    cells: dict[tuple[int, int], Cell] = field(default_factory=dict)
    settled: list[int] = field(default_factory=list)  # keys of entries done with
    lost: set[int] = field(default_factory=set)  # record IDs without a row


def fingerprint(cells: Sequence[Cell], id_column: int) -> str:
    """A digest of a row's values, all but its ID cell."""
    values = [cell for index, cell in enumerate(cells, 1) if index != id_column]
    while values and _is_blank(values[-1]):
        values.pop()
    text = json.dumps([_plain(value) for value in values], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


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
    parser = CellParser()
    holding: dict[int, dict[int, int]] = {}  # ID column -> record ID -> row
    taken: set[int] = set()
    placed: dict[int, int] = {}  # entry key -> row
    waiting: list[PendingRow] = []
    for entry in pending:
        column = _id_column(mapping, rows, entry.id_column)
        if column is None:  # that column holds something else now
            found.lost.add(entry.record_id)
            found.settled.append(entry.key)
            continue
        entry = dataclasses.replace(entry, id_column=column)
        if column not in holding:
            holding[column] = _rows_by_id(rows, column, parser)
        row = holding[column].get(entry.record_id)
        if row is not None:  # the write landed
            taken.add(row)
            found.settled.append(entry.key)
        else:
            waiting.append(entry)
    prints: dict[int, dict[str, list[int]]] = {}  # ID column -> print -> rows
    for entry in waiting:
        if entry.id_column not in prints:
            prints[entry.id_column] = _rows_by_values(rows, entry.id_column)
        alike = prints[entry.id_column].get(entry.fingerprint, [])
        # The row it was made from first, if it is still alike.
        row = next(
            (n for n in sorted(alike, key=lambda n: n != entry.row) if n not in taken),
            None,
        )
        if row is not None:
            placed[entry.key] = row
            taken.add(row)
    for entry in waiting:
        if entry.key in placed:
            continue
        if entry.row not in taken and _id_free(rows, entry.row, entry.id_column):
            placed[entry.key] = entry.row
            taken.add(entry.row)
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


def _id_column(mapping: TabMapping, rows: list[list[Cell]], stored: int) -> int | None:
    """The tab's ID column: the one headed so, else the stored one if its
    header is still blank."""
    header = rows[0] if rows else []
    wanted = mapping.id_header.casefold()
    for index, value in enumerate(header, 1):
        if isinstance(value, str) and value.strip().casefold() == wanted:
            return index
    return stored if _is_blank(_at(rows, 1, stored)) else None


def _rows_by_id(
    rows: list[list[Cell]], column: int, parser: CellParser
) -> dict[int, int]:
    by_id: dict[int, int] = {}
    for number in range(2, len(rows) + 1):
        record_id = read_id(_at(rows, number, column), parser)
        if record_id is not None:
            by_id.setdefault(record_id, number)
    return by_id


def _rows_by_values(rows: list[list[Cell]], id_column: int) -> dict[str, list[int]]:
    """The rows without an ID by the fingerprint of their values."""
    by_print: dict[str, list[int]] = {}
    for number in range(2, len(rows) + 1):
        if _id_free(rows, number, id_column):
            key = fingerprint(rows[number - 1], id_column)
            by_print.setdefault(key, []).append(number)
    return by_print


def _id_free(rows: list[list[Cell]], number: int, id_column: int) -> bool:
    return 2 <= number <= len(rows) and _is_blank(_at(rows, number, id_column))


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
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return f"{type(value).__name__}:{value}"
