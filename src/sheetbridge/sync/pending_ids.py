"""Finding the rows whose new records' IDs an import may not have written.

An import commits the records it creates from rows typed into the sheet, then
writes their IDs into those rows. A sync that stops in between (the worker
dies, the sheet refuses the write) leaves rows without IDs for records that
exist. Every such record is kept as a :class:`PendingRow`, with the values its
row had, until a sync sees its ID in the sheet. Before planning, each sync
finds the row again, reads the tab as if the ID were there already, and writes
it there. A row that holds the ID already, and is still related to the record
(:func:`~sheetbridge.sync.matching.related`), needs nothing: the write landed.
Else the record's row is sought among the rows without an ID (or with one
that reads as none) as :mod:`sheetbridge.sync.matching` tells.

A record whose row is found in none of these ways is reported back as lost,
so that it is treated as never synced: a to-sheet writes it back as a new
row, and a row holding its ID shows its differences as conflicts, rather than
an import deleting, flagging or overwriting it. At worst, a row changed past
recognition leaves a second record beside the first; nothing is lost or
overwritten. While the tab's name or ID header is renamed, entries stay
pending and their records are left out of the sync.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from sheetbridge.sheets.base import Cell, TabData
from sheetbridge.sync.columns import CellParser, normalize_header
from sheetbridge.sync.engine import TabMapping, read_id
from sheetbridge.sync.matching import RowValues, naming, place, related


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
    names = naming(mapping)
    named = names.header in {normalize_header(name) for name in header}
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
        if row is not None and related(entry.values, values[row], names):
            taken.add(row)
            found.settled.append(entry.key)
            waiting.remove(entry)
    # Rows a record may be placed in: no ID, or none that reads as one.
    free = [n for n in values if ids.get(n) is None]
    placed = place(waiting, free, values, taken, names)
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
