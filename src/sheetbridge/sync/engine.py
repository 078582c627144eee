"""Three-way merge planning between app records and one sheet tab.

Pure functions: given the tab as read, the app records and the base (the
values as of the last sync), decide what to write, import, report and
remember. No database, no IO. Per record and field, with app value A, sheet
value S and base B:

* A == S: nothing to do.
* A changed, S == B: to-sheet writes A; from-sheet has nothing to import.
* S changed, A == B: to-sheet leaves the edit (pending import); from-sheet
  applies S.
* both changed and differ: a conflict both ways; nothing is overwritten.

Without a base value, an empty side counts as unchanged (filling an empty
cell or field loses nothing); two different non-empty values are a conflict.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeAlias, TypeVar

from sheetbridge.sheets.base import (
    Cell,
    CellRange,
    DateSystem,
    ErrorValue,
    TabChanges,
    TabData,
    cell_length,
)
from sheetbridge.sync.columns import (
    MAX_TEXT_LENGTH,
    Canonical,
    CellError,
    CellParser,
    Column,
    ColumnType,
    cell_text,
    normalize_header,
    render_cell,
)
from sheetbridge.sync.matching import RowValues, naming, place

Record: TypeAlias = dict[str, Canonical]
"""Field name -> canonical value."""
# A snapshot's key (no field's name) listing the fields whose empty cells wait
# for the app's value, comma-separated: a merge emptied them, or a sync added
# their column but could not fill the row's cell.
EMPTIED_BY_MERGE = "~emptied by merge"

DELETE_MODES = ("flag", "delete")
# Of a synced record the app's book no longer has: the sync cannot tell which.
LEFT_THE_BOOK = "was deleted in the app or moved to another agent's book"
_ID_COLUMN = Column("ID", "id", ColumnType.INTEGER)


@dataclass(frozen=True)
class TabMapping:
    """Which tab a kind of record syncs to, its ID header and its columns."""

    tab: str
    id_header: str
    columns: tuple[Column, ...]


# The most characters of a value an issue or a job's result shows (:func:`shown`).
SHOWN_CHARS = 80


@dataclass
class Issue:
    """Something a user should know about; ``kind`` says what.

    Kinds: ``error``, ``warning``, ``conflict``, ``deleted_in_sheet``,
    ``deleted_in_app``, ``pending_import``, ``readonly``, ``missing_tab``.
    """

    tab: str
    row: int | None
    column: str | None
    value: str | None
    reason: str
    kind: str = "error"


@dataclass
class Conflict:
    """A field changed on both sides since the last sync, to different values."""

    record_id: int
    field: str
    column: str
    row: int
    app: Canonical
    sheet: Canonical
    base: Canonical
    # False: no earlier sync of the field with this sheet (base is None then)
    base_known: bool = True


@dataclass
class ToSheetPlan:
    """What a to-sheet sync writes, remembers and reports."""

    changes: TabChanges
    snapshots: dict[int, Record]
    drop_snapshots: set[int]
    issues: list[Issue]
    conflicts: list[Conflict]
    counts: dict[str, int]
    compared: int = 0  # rows of the tab that hold an ID or values
    # Rows typed into the sheet, left for the next sync from the sheet.
    new_rows: list[NewRow] = dataclasses.field(default_factory=list)
    rows: dict[int, int] = dataclasses.field(default_factory=dict)  # id -> row
    # Sheet edits left for it too, by record: each field's value as the
    # import will read it (an issue shows only the start of a long one).
    edits: dict[int, Record] = dataclasses.field(default_factory=dict)
    # Records whose rows were deleted from the sheet that a write-back can
    # append again: none while a row's ID is in doubt.
    can_write_back: list[int] = dataclasses.field(default_factory=list)


@dataclass
class NewRow:
    """A row typed into the sheet without an ID: a record to create.
    ``blank``: the 1-based columns of its blank cells the app fills in (an
    agent's name), by field, to write once the record exists."""

    row: int
    values: Record
    blank: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclass
class FromSheetPlan:
    """What a from-sheet sync imports, remembers and reports.

    ``updates`` holds only the changed fields per record. After creating the
    records of ``creates``, write their new IDs to (row, ``id_column``) along
    with ``id_cell_changes`` (the ID header of a tab typed without one, the
    IDs of rows found again without theirs) and store ``values`` as their
    snapshots. ``rows`` maps each record ID found in the sheet to its sheet
    row.
    """

    updates: dict[int, Record]
    creates: list[NewRow]
    snapshots: dict[int, Record]
    issues: list[Issue]
    conflicts: list[Conflict]
    counts: dict[str, int]
    id_column: int
    id_cell_changes: TabChanges
    # The 1-based columns of the synced fields people type (not the ID's, not
    # the ones the app fills in): what tells a row being given its ID.
    known_columns: frozenset[int] = frozenset()
    rows: dict[int, int] = dataclasses.field(default_factory=dict)
    compared: int = 0  # rows of the tab that hold an ID or values
    can_write_back: list[int] = dataclasses.field(default_factory=list)  # as above
    # Blank cells of the columns the app fills in (an agent's name) in rows of
    # records it has, with its values: rows whose import wrote only their IDs,
    # or cells a person cleared. Written with the IDs.
    fill_ins: dict[tuple[int, int], Cell] = dataclasses.field(default_factory=dict)


PlanT = TypeVar("PlanT", ToSheetPlan, FromSheetPlan)


class _Outcome(Enum):
    SAME = "same"
    APP = "app"  # only the app changed
    SHEET = "sheet"  # only the sheet changed
    CONFLICT = "conflict"


class _Missing:
    """No base value for a field."""


_NO_BASE = _Missing()


def _merge(app: Canonical, sheet: Canonical, base: Canonical | _Missing) -> _Outcome:
    if app == sheet:
        return _Outcome.SAME
    if isinstance(base, _Missing):
        if sheet is None:
            return _Outcome.APP
        if app is None:
            return _Outcome.SHEET
        return _Outcome.CONFLICT
    if sheet == base:
        return _Outcome.APP
    if app == base:
        return _Outcome.SHEET
    return _Outcome.CONFLICT


# Header layout


@dataclass
class _Layout:
    """Where our columns are in the tab (0-based indexes)."""

    id_index: int | None
    indexes: dict[str, int]  # field -> index, for usable columns in the header
    missing: list[Column]
    ambiguous: set[str]
    id_ambiguous: bool
    next_index: int  # right of the last used header cell
    issues: list[Issue]
    added: set[str] = dataclasses.field(default_factory=set)  # fields, this pass
    # Headers none of ours while one of ours is missing: ours, renamed?
    strangers: list[int] = dataclasses.field(default_factory=list)
    # Cells of our columns a merge hides: sheet row -> indexes. Their values
    # are unknown (merging emptied them), so they are neither read nor written.
    hidden: dict[int, set[int]] = dataclasses.field(default_factory=dict)
    # What merges hide, told with the rows they hide it in ("" for headers).
    merge_issues: list[tuple[Issue, str]] = dataclasses.field(default_factory=list)
    # Merges hiding cells of our columns below the last row: no row there yet,
    # but none can be added into them.
    below: list[CellRange] = dataclasses.field(default_factory=list)
    # The sheet row our headers are in: below 1, rows were put above them
    # and the tab is not synced until they are gone.
    header_row: int = 1

    def columns(self, mapping: TabMapping) -> list[tuple[Column, int]]:
        return [
            (col, self.indexes[col.field])
            for col in mapping.columns
            if col.field in self.indexes
        ]


def _read_layout(
    mapping: TabMapping, rows: Sequence[list[Cell]], merges: Sequence[CellRange] = ()
) -> _Layout:
    header = rows[0] if rows else []
    # Values may stand right of the last header too.
    width = max((len(row) for row in rows), default=0)
    header_row = _header_row(mapping, rows)
    if header_row != 1:
        issue = _header_row_issue(mapping, header_row)
        return _Layout(
            None, {}, [], set(), False, width, [issue], header_row=header_row
        )
    positions: dict[str, list[int]] = defaultdict(list)
    for index in range(width):
        text = header[index] if index < len(header) else None
        positions[normalize_header(text)].append(index)
    # A column without a header is told where it holds something. An empty one
    # only while it stands among ours and one of ours is missing or doubled:
    # it may be one of ours, its header cleared. Empty columns are no concern
    # otherwise, wherever they stand (say, left of a column a sync added
    # right of stray values).
    ours = {normalize_header(mapping.id_header)}
    ours.update(normalize_header(column.header) for column in mapping.columns)
    last_ours = max((i for name in ours for i in positions.get(name, [])), default=-1)
    ours_unsettled = any(len(positions.get(name, [])) != 1 for name in ours)
    firsts: dict[int, int] = {}  # index -> sheet row of its first value
    for index in positions.get("", []):
        first = _first_value_row(rows, index)
        if first is not None:
            firsts[index] = first
        elif ours_unsettled and index < last_ours:
            firsts[index] = 1
    # Columns a sync adds go right of everything, never over stray values or
    # into a merge.
    right = max((merge.last_column for merge in merges), default=0)
    layout = _Layout(None, {}, [], set(), False, max(width, right), [])
    id_positions = positions.get(normalize_header(mapping.id_header), [])
    layout.id_ambiguous = len(id_positions) > 1
    if len(id_positions) == 1:
        layout.id_index = id_positions[0]
    for column in mapping.columns:
        found = positions.get(normalize_header(column.header), [])
        if len(found) == 1:
            layout.indexes[column.field] = found[0]
        elif found:
            layout.ambiguous.add(column.field)
        else:
            layout.missing.append(column)
    layout.issues = _header_issues(mapping, header, positions)
    layout.issues.extend(_headerless_issues(mapping, rows, firsts, layout.missing))
    if layout.missing:
        layout.strangers = [
            index
            for index, text in enumerate(header)
            if not _is_blank(text) and normalize_header(text) not in ours
        ]
    for merge in sorted(merges):
        _read_merge(mapping, rows, layout, merge, ours_unsettled)
    return layout


# How far down a tab its headers are looked for when the first row lacks them.
_HEADER_SEARCH_ROWS = 20


def _header_row(mapping: TabMapping, rows: Sequence[list[Cell]]) -> int:
    """The sheet row our headers are in: 1, unless the first row has few of
    them and one of the next rows has the ID header and most of the rest."""
    ours = {normalize_header(mapping.id_header)}
    ours.update(normalize_header(column.header) for column in mapping.columns)

    def ours_in(row: list[Cell]) -> set[str]:
        return ours & {normalize_header(text) for text in row}

    if not rows or len(ours_in(rows[0])) * 2 > len(ours):
        return 1
    for number, row in enumerate(rows[1:_HEADER_SEARCH_ROWS], 2):
        found = ours_in(row)
        if normalize_header(mapping.id_header) in found and len(found) * 2 > len(ours):
            return number
    return 1


def _header_row_issue(mapping: TabMapping, header_row: int) -> Issue:
    above = header_row - 1
    return Issue(
        mapping.tab,
        header_row,
        None,
        None,
        f"the headers are in row {header_row}, not row 1, where a sync reads "
        f"them: delete the {above} row{'s' * (above > 1)} above them (a title "
        "can go right of the columns); until then this tab is not synced",
        "error",
    )


def _read_merge(
    mapping: TabMapping,
    rows: Sequence[list[Cell]],
    layout: _Layout,
    merge: CellRange,
    ours_unsettled: bool,
) -> None:
    """Note the cells of our columns a merge hides, and tell of it: only its
    top-left cell holds a value; the others read empty though they are not."""
    top, left = merge.first_row, merge.first_column
    ref = _merge_ref(merge)
    top_left = _cell(rows[top - 1], left - 1) if top <= len(rows) else None
    value = None if _is_blank(top_left) else shown(top_left)
    synced = {index: column.header for column, index in layout.columns(mapping)}
    if layout.id_index is not None:
        synced[layout.id_index] = mapping.id_header
    header = rows[0] if rows else []
    top_header = normalize_header(_cell(header, left - 1))
    ours = {normalize_header(name) for name in synced.values()}
    if top == 1 and merge.last_column > left and (ours_unsettled or top_header in ours):
        issue = Issue(
            mapping.tab,
            1,
            column_letter(left),
            value,
            f"header cells {ref} are merged; unmerge them so each column has "
            "its own header",
        )
        layout.merge_issues.append((issue, ""))
    if merge.last_row > len(rows) and any(
        index in synced for index in range(left - 1, merge.last_column)
    ):
        layout.below.append(merge)
    names: dict[int, str] = {}
    numbers: list[int] = []
    # Rows past the last one hold nothing to hide (a merge may run down to
    # the sheet's millionth row).
    for number in range(max(top, 2), min(merge.last_row, len(rows)) + 1):
        hides = {
            index
            for index in range(left - 1, merge.last_column)
            if index in synced and (number, index) != (top, left - 1)
        }
        if hides:
            layout.hidden.setdefault(number, set()).update(hides)
            numbers.append(number)
            names.update((index, synced[index]) for index in hides)
    if not numbers:
        return
    headers = [names[index] for index in sorted(names)]
    what = " and ".join(repr(name) for name in headers)
    joint = " and " if len(numbers) == 2 else " to "
    rows_text = (
        f"row {numbers[0]}"
        if len(numbers) == 1
        else f"rows {numbers[0]}{joint}{numbers[-1]}"
    )
    issue = Issue(
        mapping.tab,
        numbers[0],
        headers[0],
        None,  # the hidden cell's own value is gone; the merge shows another
        f"cells {ref} are merged, hiding {what} in {rows_text}: not synced "
        "until you unmerge them so each column has its own value (merging "
        "emptied the hidden cells; once unmerged, a sync to the sheet writes "
        "the app's values back into them)",
    )
    layout.merge_issues.append((issue, rows_text))


def _merge_ref(merge: CellRange) -> str:
    first = f"{column_letter(merge.first_column)}{merge.first_row}"
    return f"{first}:{column_letter(merge.last_column)}{merge.last_row}"


# The rows a workbook's tab has; a Google tab of our columns reaches its
# cell limit sooner.
MAX_SHEET_ROWS = 1_048_576


def _keep_appends_in_room(ctx: _ToSheet, rows: int) -> None:
    """Rows go below the last one (``rows``), never into merged cells there,
    whose hidden parts would not show them, nor past the sheet's last row:
    such records wait, each told."""
    appended = ctx.plan.changes.append
    first, last = rows + 1, rows + len(appended)
    merge = next(
        (m for m in ctx.layout.below if m.first_row <= last and m.last_row >= first),
        None,
    )
    if merge is None and last <= MAX_SHEET_ROWS:
        return
    id_index = ctx.layout.id_index
    assert id_index is not None  # set by plan_to_sheet before appending
    kept = []
    for number, row in enumerate(appended, first):
        if merge is None and number <= MAX_SHEET_ROWS:
            kept.append(row)
            continue
        record_id = row[id_index]
        assert isinstance(record_id, int)
        del ctx.plan.snapshots[record_id]
        if merge is not None:
            reason = (
                f"cells {_merge_ref(merge)} are merged right below the table, "
                f"where new rows go; record {record_id} is added once you "
                "unmerge them"
            )
        else:
            reason = (
                f"the tab has no row left below its last one (row "
                f"{MAX_SHEET_ROWS:,} is used); record {record_id} is added once "
                "the rows at the bottom of the tab are cleared"
            )
        ctx.issue(
            Issue(ctx.mapping.tab, number, None, str(record_id), reason), "errors"
        )
    ctx.plan.counts["appended"] -= len(appended) - len(kept)
    appended[:] = kept


def _stranger_issues(
    mapping: TabMapping, header: Sequence[Cell], layout: _Layout
) -> list[Issue]:
    """Headers that are none of ours while some of ours are missing: most
    likely ours, renamed (or broken, like a header showing #REF!). People's
    own columns are no concern while all of ours are there."""
    names = ", ".join(repr(column.header) for column in layout.missing)
    verb = "are" if len(layout.missing) > 1 else "is"
    issues = []
    for index in layout.strangers:
        text = header[index]
        letter = column_letter(index + 1)
        name = shown(text)
        issues.append(
            Issue(
                mapping.tab,
                1,
                letter,
                name,
                f"column {letter} {name!r} is not a Sheetbridge column and "
                f"{names} {verb} missing; neither is synced — if it was renamed, "
                "give it its name back",
                "warning",
            )
        )
    return issues


def _header_issues(
    mapping: TabMapping, header: Sequence[Cell], positions: dict[str, list[int]]
) -> list[Issue]:
    issues = []
    ours = [mapping.id_header, *(col.header for col in mapping.columns)]
    for name in ours:
        found = positions.get(normalize_header(name), [])
        if len(found) > 1:
            letters = " and ".join(column_letter(i + 1) for i in found)
            issues.append(
                Issue(
                    mapping.tab,
                    1,
                    name,
                    None,
                    f"header {name!r} appears in columns {letters}; rename or "
                    "remove one — nothing is synced from these columns",
                )
            )
    return issues


def _first_value_row(rows: Sequence[list[Cell]], index: int) -> int | None:
    """The sheet row of the first cell below the header holding a value."""
    for number, cells in enumerate(rows[1:], start=2):
        if index < len(cells) and not _is_blank(cells[index]):
            return number
    return None


def _headerless_issues(
    mapping: TabMapping,
    rows: Sequence[list[Cell]],
    firsts: dict[int, int],
    missing: Sequence[Column],
) -> list[Issue]:
    """One warning per column without a header, at its first cell holding a
    value (at its header cell if it holds none). While some of ours are
    missing, it may be one of them, its header cleared or lost to a merge."""
    names = " or ".join(repr(column.header) for column in missing)
    issues = []
    for index, number in firsts.items():
        letter = column_letter(index + 1)
        value = rows[number - 1][index] if number > 1 else None
        reason = f"column {letter} has no header; its values are not synced"
        if missing:
            reason += (
                f" — if it is {names}, whose header is missing, type that "
                f"header in {letter}1"
            )
        issues.append(
            Issue(
                mapping.tab,
                number,
                letter,
                None if value is None else shown(value),
                reason,
                "warning",
            )
        )
    return issues


def _add_headers(
    layout: _Layout, columns: Iterable[Column], changes: TabChanges
) -> None:
    for column in columns:
        layout.added.add(column.field)
        layout.indexes[column.field] = layout.next_index
        changes.cells[(1, layout.next_index + 1)] = column.header
        layout.next_index += 1
    layout.missing = []


def _add_id_header(mapping: TabMapping, layout: _Layout, changes: TabChanges) -> None:
    layout.id_index = layout.next_index
    changes.cells[(1, layout.next_index + 1)] = mapping.id_header
    layout.next_index += 1


# Rows


@dataclass
class _Rows:
    by_id: dict[int, tuple[int, list[Cell]]]  # record id -> (sheet row, cells)
    new: list[tuple[int, list[Cell]]]
    seen: set[int]  # every valid ID present, duplicates included
    issues: list[Issue]
    examined: int = 0  # rows with an ID or values in our columns
    unreadable: list[int] = dataclasses.field(default_factory=list)  # rows
    doubled: list[int] = dataclasses.field(default_factory=list)  # rows of an ID twice


def _errors_in(issues: list[Issue]) -> int:
    return sum(issue.kind == "error" for issue in issues)


def _cell(cells: Sequence[Cell], index: int) -> Cell:
    return cells[index] if index < len(cells) else None


def _is_blank(value: Cell) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _scan_rows(
    mapping: TabMapping,
    layout: _Layout,
    rows: Sequence[list[Cell]],
    parser: CellParser,
) -> _Rows:
    ours = [index for _, index in layout.columns(mapping)]
    id_index = layout.id_index
    found: dict[int, list[tuple[int, list[Cell]]]] = defaultdict(list)
    result = _Rows({}, [], set(), [])
    for number, cells in enumerate(rows[1:], start=2):
        if id_index in layout.hidden.get(number, ()):
            # a merge hides the ID: a row of a record, never a new one
            result.unreadable.append(number)
            result.examined += 1
            continue
        if not cells:
            continue  # an empty row: a tab used far down has a million
        raw_id = None if id_index is None else _cell(cells, id_index)
        if _is_blank(raw_id):
            if any(not _is_blank(_cell(cells, i)) for i in ours):
                result.new.append((number, cells))
                result.examined += 1
            continue
        result.examined += 1
        record_id = read_id(raw_id, parser)
        if record_id is None:
            result.unreadable.append(number)
            result.issues.append(
                Issue(
                    mapping.tab,
                    number,
                    mapping.id_header,
                    shown(raw_id),
                    "ID must be a whole number written by Sheetbridge; if the "
                    "row is a synced record, put its ID back; only if it is a "
                    "new one, clear the ID to import it",
                )
            )
            continue
        found[record_id].append((number, cells))
    for record_id, places in found.items():
        result.seen.add(record_id)
        if len(places) == 1:
            result.by_id[record_id] = places[0]
        else:
            result.issues.extend(_duplicate_issues(mapping, record_id, places))
            result.doubled.extend(number for number, _ in places)
    return result


# Past this many pairs of records without a row and rows without an ID,
# rows are not sought for records: the search would take longer than the sync.
_MAX_PAIRS_SOUGHT = 250_000


@dataclass(frozen=True)
class _RowSought:
    key: int  # the record's ID
    values: RowValues
    row: int = 0  # where it was first: unknown


def _rows_found_again(
    ctx: _Pass[Any], scanned: _Rows, app: dict[int, Record], base: dict[int, Record]
) -> dict[tuple[int, int], Cell]:
    """Give synced records whose ID no row has any more their rows among
    those without an ID: a person cleared the ID cell, or a merge hid it and
    emptied it. Each such row becomes its record's (in ``scanned``), a
    warning says so, and the ID cells to write back are returned. A row no
    record fits unmistakably (see :mod:`sheetbridge.sync.matching`) stays a
    new row, as does every row when a merge hides some of its cells."""
    id_index = ctx.layout.id_index
    lost = [record_id for record_id in base.keys() - scanned.seen if record_id in app]
    if not lost or not scanned.new or id_index is None:
        return {}
    if len(lost) * len(scanned.new) > _MAX_PAIRS_SOUGHT:
        return {}
    headers = {
        column.field: (normalize_header(column.header), index)
        for column, index in ctx.columns
        if not column.readonly
    }
    rows = {n: cells for n, cells in scanned.new if n not in ctx.layout.hidden}
    values = {n: _recognised_by(ctx, cells, headers) for n, cells in rows.items()}
    sought = [
        _RowSought(record_id, _snapshot_values(base[record_id], headers))
        for record_id in sorted(lost)
    ]
    placed = place(sought, list(values), values, set(), naming(ctx.mapping))
    scanned.new = [(n, cells) for n, cells in scanned.new if n not in placed.values()]
    cells_to_write: dict[tuple[int, int], Cell] = {}
    for record_id, number in placed.items():
        scanned.by_id[record_id] = (number, rows[number])
        scanned.seen.add(record_id)
        cells_to_write[(number, id_index + 1)] = record_id
        ctx.plan.issues.append(_found_again_issue(ctx.mapping, record_id, number))
    return cells_to_write


def _recognised_by(
    ctx: _Pass[Any], cells: list[Cell], headers: dict[str, tuple[str, int]]
) -> RowValues:
    """A row's values as read, by header, to tell whose row it is: blank and
    unreadable cells left out."""
    values: RowValues = {}
    for column, _ in ctx.columns:
        if column.field not in headers:
            continue
        header, index = headers[column.field]
        try:
            value = ctx.parser.parse(column, _cell(cells, index))
        except CellError:
            continue
        if value is not None:
            values[header] = value
    return values


def _snapshot_values(
    snapshot: Record, headers: dict[str, tuple[str, int]]
) -> RowValues:
    return {
        headers[name][0]: value
        for name, value in snapshot.items()
        if name in headers and value is not None
    }


def _found_again_issue(mapping: TabMapping, record_id: int, number: int) -> Issue:
    return Issue(
        mapping.tab,
        number,
        mapping.id_header,
        None,
        f"row {number} had no ID, and holds record {record_id}'s values (all, "
        "or all but one), whose ID no other row has: it is that record's row, "
        "and its ID was put back in it (to make the row a new record instead, "
        "type it anew below, with values of its own)",
        "warning",
    )


def _doubtful_rows(
    scanned: _Rows, app: dict[int, Record], base: dict[int, Record]
) -> list[int]:
    """Rows whose ID is unreadable, given twice, or names no record of the
    book: a mistyped ID, any of which may be the row of a record no row
    carries."""
    unknown = (
        number
        for record_id, (number, _) in scanned.by_id.items()
        if record_id not in app and record_id not in base
    )
    return sorted({*scanned.unreadable, *scanned.doubled, *unknown})


def read_id(raw: Cell, parser: CellParser) -> int | None:
    """The record ID an ID cell holds, as a sync reads it; None for a blank
    cell or one that holds no ID."""
    try:
        value = parser.parse(_ID_COLUMN, raw)
    except CellError:
        return None
    return value if isinstance(value, int) and value > 0 else None


def _duplicate_issues(
    mapping: TabMapping, record_id: int, places: list[tuple[int, list[Cell]]]
) -> list[Issue]:
    numbers = ", ".join(str(number) for number, _ in places)
    return [
        Issue(
            mapping.tab,
            number,
            mapping.id_header,
            str(record_id),
            f"duplicate ID {record_id} in rows {numbers}; keep it in one row "
            "only — none of these rows is synced",
        )
        for number, _ in places
    ]


def shown(value: Cell) -> str:
    """``value`` as text for people to read, in an issue or a job's result:
    longer than ``SHOWN_CHARS``, it is cut with an ellipsis. The data itself
    is never cut; only what is shown of it."""
    text = value if isinstance(value, str) else cell_text(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def _base_value(base: Record | None, name: str) -> Canonical | _Missing:
    if base is None or name not in base:
        return _NO_BASE
    return base[name]


def _unknown_id_issue(mapping: TabMapping, record_id: int, row: int) -> Issue:
    return Issue(
        mapping.tab,
        row,
        mapping.id_header,
        str(record_id),
        f"unknown ID {record_id}: no record of this book was synced to this "
        "tab with it; if the row is a new record of this book, clear the ID to "
        "import it, else delete the row (it may be another book's)",
    )


def _missing_header_issue(
    mapping: TabMapping, header: str, done: str = "imported from"
) -> Issue:
    return Issue(
        mapping.tab,
        1,
        header,
        None,
        f"required column {header!r} is missing from the header row of tab "
        f"{mapping.tab!r}; nothing was {done} this tab",
    )


def _missing_column_issue(mapping: TabMapping, header: str) -> Issue:
    return Issue(
        mapping.tab,
        1,
        header,
        None,
        f"column {header!r} is missing from the header row of tab "
        f"{mapping.tab!r}; its values were not imported — Sync to sheet "
        "adds it back with the app's values",
        "warning",
    )


# to-sheet


@dataclass
class _Pass(Generic[PlanT]):
    """One planning pass over a tab: what it reads and the plan it fills."""

    mapping: TabMapping
    layout: _Layout
    plan: PlanT
    parser: CellParser = dataclasses.field(default_factory=CellParser)
    cell_limit: int = MAX_TEXT_LENGTH  # characters a cell of the sheet holds

    @functools.cached_property
    def columns(self) -> list[tuple[Column, int]]:
        """Our columns and their indexes; read once the header is settled."""
        return self.layout.columns(self.mapping)

    def issue(self, issue: Issue, count: str) -> None:
        self.plan.issues.append(issue)
        self.plan.counts[count] += 1


_ToSheet: TypeAlias = _Pass[ToSheetPlan]


def _parser_for(tab: TabData | None) -> CellParser:
    return CellParser(date_system=tab.date_system if tab else DateSystem.GOOGLE)


def _to_sheet_counts() -> dict[str, int]:
    names = (
        "written_cells updated_rows appended deleted unchanged pending_import "
        "conflicts errors deleted_in_sheet deleted_in_app readonly"
    )
    return dict.fromkeys(names.split(), 0)


def plan_to_sheet(
    mapping: TabMapping,
    tab: TabData | None,
    app: dict[int, Record],
    base: dict[int, Record],
    *,
    delete_mode: str = "flag",
    cell_limit: int = MAX_TEXT_LENGTH,
    write_back: Collection[int] = (),
) -> ToSheetPlan:
    """Plan writing app records to the tab without overwriting sheet edits.

    ``delete_mode`` "delete" removes rows of records deleted in the app (if
    their sheet values were not edited since the last sync); "flag" only
    reports them. A synced record whose row was deleted from the sheet is
    reported and left out, unless it is in ``write_back``: then its row is
    appended again.
    """
    if delete_mode not in DELETE_MODES:
        raise ValueError(f"delete_mode must be one of {', '.join(DELETE_MODES)}")
    if tab is None:
        # The tab (or its whole book) is gone and is written anew: what the
        # last sync wrote is no longer there, and none of it was deleted by
        # hand row by row, so every record is written again.
        base = {}
    rows = tab.rows if tab is not None else []
    plan = ToSheetPlan(TabChanges(), {}, set(), [], [], _to_sheet_counts())
    layout = _read_layout(mapping, rows, tab.merges if tab is not None else ())
    ctx = _Pass(mapping, layout, plan, _parser_for(tab), cell_limit)
    plan.issues.extend(layout.issues)
    plan.counts["errors"] += _errors_in(layout.issues)
    if not _to_sheet_header_usable(ctx, rows, base):
        # Each error the header check listed counts, and at least one.
        plan.counts["errors"] = max(1, _errors_in(plan.issues))
        return plan
    scanned = _scan_rows(mapping, layout, rows, ctx.parser)
    plan.compared = scanned.examined
    plan.changes.cells.update(_rows_found_again(ctx, scanned, app, base))
    if layout.id_index is None:
        _add_id_header(mapping, layout, plan.changes)
    # A missing column comes back, unless it may be one renamed after a sync:
    # a second one would leave the first, and the edits in it, out of every
    # sync. A tab never synced gets ours beside people's own columns.
    if layout.strangers and base:
        plan.issues.extend(_stranger_issues(mapping, rows[0], layout))
    else:
        _add_headers(layout, layout.missing, plan.changes)
    for issue in [*(issue for issue, _ in layout.merge_issues), *scanned.issues]:
        ctx.issue(issue, "errors")
    for number, cells in scanned.new:
        if number in layout.hidden:
            continue  # the import leaves it until its cells are unmerged
        values = _new_row_values(ctx, number, cells)
        if values is not None:
            plan.new_rows.append(NewRow(number, values))
            ctx.issue(_pending_new_row_issue(mapping, number), "pending_import")
    for record_id, (number, cells) in scanned.by_id.items():
        plan.rows[record_id] = number
        _sync_row_to_sheet(ctx, record_id, number, cells, app, base, delete_mode)
    doubtful = _doubtful_rows(scanned, app, base)
    for record_id in sorted(app.keys() - scanned.seen):
        asked = record_id in write_back
        # A row with a mistyped ID may be the record's: never a second.
        if record_id in base and (not asked or doubtful):
            issue = _gone_from_sheet_issue(mapping, record_id, doubtful, asked=asked)
            ctx.issue(issue, "deleted_in_sheet")
            if not doubtful:
                plan.can_write_back.append(record_id)
        elif doubtful and not base:
            # No earlier sync with this sheet tells a record new to it from
            # one whose row is there under a mistyped ID.
            ctx.issue(_held_for_doubt_issue(mapping, record_id, doubtful), "errors")
        else:
            _append(ctx, record_id, app[record_id])
    if layout.added:
        _wait_for_added_cells(plan, app.keys(), base, layout.added)
    if layout.id_index is not None:
        plan.changes.id_column = layout.id_index + 1
    plan.changes.known_columns = _known_columns(ctx)
    if plan.changes.append:
        _keep_appends_in_room(ctx, len(rows))
    return plan


def _known_columns(ctx: _Pass[Any]) -> frozenset[int]:
    """The 1-based columns of the synced fields people type."""
    return frozenset(index + 1 for column, index in ctx.columns if not column.readonly)


def _wait_for_added_cells(
    plan: ToSheetPlan, records: Iterable[int], base: dict[int, Record], added: set[str]
) -> None:
    """A record whose row this sync left alone (its ID in two rows, say) or
    did not find (its ID typed over) got no value in a column the sync added:
    until its row syncs, its empty cells there are no edits but wait for the
    app's values."""
    for record_id in sorted(set(records) - plan.snapshots.keys()):
        old = base.get(record_id)
        if old is not None:
            waiting = ",".join(sorted(_emptied(old) | added))
            plan.snapshots[record_id] = {**old, EMPTIED_BY_MERGE: waiting}


def _to_sheet_header_usable(
    ctx: _ToSheet, rows: Sequence[list[Cell]], base: dict[int, Record]
) -> bool:
    layout, mapping = ctx.layout, ctx.mapping
    if layout.id_ambiguous or layout.header_row != 1:
        return False
    if layout.id_index is None and len(rows) > 1 and base:
        # the ID column was removed: every row would look new and be duplicated
        issue = _missing_header_issue(mapping, mapping.id_header, "written to")
        ctx.plan.issues.append(issue)
        return False
    return True


def _pending_new_row_issue(mapping: TabMapping, number: int) -> Issue:
    return Issue(
        mapping.tab,
        number,
        None,
        None,
        "row has no ID; it will be created in the app by the next sync from the sheet",
        "pending_import",
    )


def _sync_row_to_sheet(
    ctx: _ToSheet,
    record_id: int,
    number: int,
    cells: list[Cell],
    app: dict[int, Record],
    base: dict[int, Record],
    delete_mode: str,
) -> None:
    record = app.get(record_id)
    if record is None:
        _deleted_in_app(ctx, record_id, number, cells, base, delete_mode)
        return
    old = base.get(record_id)
    cells = _own_texts(ctx, cells, record, old)
    writes: dict[int, Cell] = {}
    snapshot = _last_agreed(old)
    # An emptied cell the sheet shows again gets its value now, or holds one.
    waiting = set(_emptied(old))
    hidden = ctx.layout.hidden.get(number, set())
    for column, index in ctx.columns:
        if index in hidden:
            continue  # a merge hides the cell: neither read nor written
        waiting.discard(column.field)
        write = _field_to_sheet(
            ctx, record_id, number, column, _cell(cells, index), record, old, snapshot
        )
        if write is not None:
            writes[index] = write[0]
    if writes and not _app_values_valid(ctx, record_id, number, record, writes):
        writes = {}
        snapshot = dict(old) if old is not None else {}
        # Nor are the cells of a column this sync added: they wait.
        waiting = set(_emptied(old)) | ctx.layout.added
    _emit_writes(ctx, number, writes)
    ctx.plan.snapshots[record_id] = _emptied_by_merge(ctx, number, snapshot, waiting)


def _field_to_sheet(
    ctx: _ToSheet,
    record_id: int,
    number: int,
    column: Column,
    raw: Cell,
    record: Record,
    old: Record | None,
    snapshot: Record,
) -> tuple[Cell] | None:
    """Decide one field; return (value to write,) or None for no write."""
    name = column.field
    app_value = record.get(name)
    # A column added by this sync holds nothing of the sheet's yet: no edits.
    base_value = _NO_BASE if name in ctx.layout.added else _base_value(old, name)
    try:
        sheet_value = ctx.parser.parse(column, raw)
    except CellError as exc:
        ctx.issue(_cell_issue(ctx.mapping, number, column, raw, exc), "errors")
        _keep_base(snapshot, name, base_value)
        return None
    if sheet_value is None and name in _emptied(old):
        snapshot[name] = app_value  # the app's value goes back into the cell
        return None if app_value is None else (render_cell(column, app_value),)
    if sheet_value == app_value:
        snapshot[name] = app_value
        if column.digits and isinstance(raw, int | float) and app_value is not None:
            # A code typed as a number lost its leading zeros on screen; the
            # import padded it, and the cell gets it back as text.
            return (render_cell(column, app_value),)
        return None
    if column.readonly:
        snapshot[name] = app_value
        # A blank cell is filled in without a word: rows typed into the sheet
        # and created by an import have none of the app's values yet.
        edited = sheet_value is not None and sheet_value != base_value
        if edited and not isinstance(base_value, _Missing):
            ctx.issue(_readonly_issue(ctx.mapping, number, column, raw), "readonly")
        return (render_cell(column, app_value),)
    outcome = _merge(app_value, sheet_value, base_value)
    if outcome is _Outcome.SAME:
        snapshot[name] = app_value
    elif outcome is _Outcome.APP:
        snapshot[name] = app_value
        return (render_cell(column, app_value),)
    elif outcome is _Outcome.SHEET:
        _keep_base(snapshot, name, base_value)
        ctx.plan.edits.setdefault(record_id, {})[name] = sheet_value
        ctx.issue(
            _pending_edit_issue(ctx.mapping, number, column, raw), "pending_import"
        )
    else:
        _keep_base(snapshot, name, base_value)
        _conflict(ctx, record_id, column, number, (app_value, sheet_value, base_value))
    return None


def _emptied_by_merge(
    ctx: _Pass[Any], number: int, snapshot: Record, waiting: Iterable[str] = ()
) -> Record:
    """``snapshot`` noting as emptied the fields a merge hides in row
    ``number``, and ``waiting``: fields emptied before whose cells still wait
    for their value.

    Merging empties the hidden cells. Such a field keeps the value both sides
    last agreed on, and its empty cell is no edit: once unmerged, the app's
    value goes back into it, and a value typed there is an edit like any other.
    """
    hidden = ctx.layout.hidden.get(number)
    emptied = set(waiting)
    if hidden:
        emptied.update(column.field for column, i in ctx.columns if i in hidden)
    if emptied:
        snapshot[EMPTIED_BY_MERGE] = ",".join(sorted(emptied))
    else:
        snapshot.pop(EMPTIED_BY_MERGE, None)
    return snapshot


def _emptied(snapshot: Record | None) -> frozenset[str]:
    """The fields of ``snapshot`` whose cells a merge emptied."""
    names = snapshot.get(EMPTIED_BY_MERGE) if snapshot else None
    return frozenset(names.split(",")) if isinstance(names, str) else frozenset()


def _last_agreed(old: Record | None) -> Record:
    """Where a row's new snapshot starts: what both sides last agreed on. A
    field this sync does not decide (its column renamed, doubled or unreadable
    for now) keeps that value, so edits made meanwhile on either side are
    still told apart when the column is back."""
    return dict(old) if old is not None else {}


def _keep_base(snapshot: Record, name: str, base_value: Canonical | _Missing) -> None:
    if not isinstance(base_value, _Missing):
        snapshot[name] = base_value


def _app_values_valid(
    ctx: _ToSheet,
    record_id: int,
    number: int | None,
    record: Record,
    writes: dict[int, Cell],
) -> bool:
    """Check app values before writing; a bad one stops the whole row."""
    ok = True
    for column, index in ctx.columns:
        if index not in writes:
            continue
        try:
            ctx.parser.parse(column, writes[index])
            _fits(writes[index], ctx.cell_limit)
        except CellError as exc:
            value = record.get(column.field)
            ctx.issue(
                Issue(
                    ctx.mapping.tab,
                    number,
                    column.header,
                    shown(value),
                    f"record {record_id}: app value {exc.reason}; the row was not "
                    "written",
                ),
                "errors",
            )
            ok = False
    return ok


def _fits(value: Cell, limit: int) -> None:
    if isinstance(value, str) and cell_length(value) > limit:
        raise CellError(
            f"is longer than a cell of this sheet holds: at most {limit:,} "
            "characters, an emoji counting as two"
        )


def _emit_writes(ctx: _ToSheet, number: int, writes: dict[int, Cell]) -> None:
    counts = ctx.plan.counts
    if not writes:
        counts["unchanged"] += 1
        return
    for index, value in writes.items():
        ctx.plan.changes.cells[(number, index + 1)] = value
    counts["written_cells"] += len(writes)
    counts["updated_rows"] += 1


def _deleted_in_app(
    ctx: _ToSheet,
    record_id: int,
    number: int,
    cells: list[Cell],
    base: dict[int, Record],
    delete_mode: str,
) -> None:
    old = base.get(record_id)
    if old is None:
        ctx.issue(_unknown_id_issue(ctx.mapping, record_id, number), "errors")
        return
    if (
        delete_mode == "delete"
        and number not in ctx.layout.hidden
        and _matches_base(ctx, cells, old)
    ):
        ctx.plan.changes.delete_rows.append(number)
        ctx.plan.drop_snapshots.add(record_id)
        ctx.plan.counts["deleted"] += 1
        return
    reason = f"record {record_id} {LEFT_THE_BOOK}; "
    if delete_mode == "delete" and number in ctx.layout.hidden:
        reason += "the row has merged cells, so it was kept (unmerge them first)"
    elif delete_mode == "delete":
        reason += "the row was edited in the sheet since the last sync, so it was kept"
    else:
        reason += "the row was kept (delete it in the sheet if it is no longer needed)"
    ctx.issue(
        Issue(ctx.mapping.tab, number, None, str(record_id), reason, "deleted_in_app"),
        "deleted_in_app",
    )


def _matches_base(ctx: _ToSheet, cells: list[Cell], old: Record) -> bool:
    """Whether a row holds what the last sync left there: the columns the app
    owns (an agent's name) are the app's to write, never a sheet's edit."""
    for column, index in ctx.columns:
        if column.readonly:
            continue
        try:
            value = ctx.parser.parse(column, _cell(cells, index))
        except CellError:
            return False
        if value != old.get(column.field):
            return False
    return True


def _append(ctx: _ToSheet, record_id: int, record: Record) -> None:
    columns = ctx.columns
    writes = {index: render_cell(col, record.get(col.field)) for col, index in columns}
    if not _app_values_valid(ctx, record_id, None, record, writes):
        return
    id_index = ctx.layout.id_index
    assert id_index is not None  # set by plan_to_sheet before appending
    row: list[Cell] = [None] * (max([id_index, *writes]) + 1)
    row[id_index] = record_id
    for index, value in writes.items():
        row[index] = value
    ctx.plan.changes.append.append(row)
    ctx.plan.snapshots[record_id] = {
        col.field: record.get(col.field) for col, _ in columns
    }
    ctx.plan.counts["appended"] += 1


def _cell_issue(
    mapping: TabMapping, number: int, column: Column, raw: Cell, exc: CellError
) -> Issue:
    return Issue(mapping.tab, number, column.header, shown(raw), exc.reason)


def _readonly_issue(
    mapping: TabMapping, number: int, column: Column, raw: Cell
) -> Issue:
    return Issue(
        mapping.tab,
        number,
        column.header,
        shown(raw),
        f"column {column.header!r} is maintained by the app; the sheet edit is "
        "not imported",
        "readonly",
    )


def _pending_edit_issue(
    mapping: TabMapping, number: int, column: Column, raw: Cell
) -> Issue:
    return Issue(
        mapping.tab,
        number,
        column.header,
        shown(raw),
        "edited in the sheet; waiting for a sync from the sheet",
        "pending_import",
    )


def _conflict(
    ctx: _ToSheet | _FromSheet,
    record_id: int,
    column: Column,
    number: int,
    values: tuple[Canonical, Canonical, Canonical | _Missing],
) -> None:
    report_conflict(ctx.plan, ctx.mapping, record_id, column, number, values)


def report_conflict(
    plan: ToSheetPlan | FromSheetPlan,
    mapping: TabMapping,
    record_id: int,
    column: Column,
    number: int,
    values: tuple[Canonical, Canonical, Canonical | _Missing],
) -> None:
    """Report a field changed on both sides: ``values`` are the app's, the
    sheet's and the base; a missing base means no earlier sync of the field
    with this sheet tells which side changed (the book's sheet was just set)."""
    app, sheet, base = values
    unsynced = isinstance(base, _Missing)
    conflict = Conflict(
        record_id,
        column.field,
        column.header,
        number,
        app,
        sheet,
        None if isinstance(base, _Missing) else base,
        base_known=not unsynced,
    )
    plan.conflicts.append(conflict)
    plan.counts["conflicts"] += 1
    sides = f"the app ({app!r}) and the sheet ({sheet!r})"
    how = (
        f"differs in {sides}, and no earlier sync of it with this sheet tells "
        "which side changed"
        if unsynced
        else f"changed in both {sides} since the last sync"
    )
    plan.issues.append(
        Issue(
            mapping.tab,
            number,
            column.header,
            None if sheet is None else str(sheet),
            f"{how}; nothing was overwritten",
            "conflict",
        )
    )


def merge_again(
    plan: FromSheetPlan,
    mapping: TabMapping,
    record_id: int,
    imports: Record,
    app: tuple[Record, Record],
    old: Record | None,
) -> tuple[Record, list[str]]:
    """The sheet's values an import planned for a record (``imports``) that
    the app changed after the plan read it, merged with the record as it is
    now: ``app`` is the record as the plan read it and as it is now, ``old``
    its last-synced values. A field the app left alone still imports; one
    both sides changed differently is reported in ``plan`` as a conflict, at
    once. Returns the values to import and the fields in conflict."""
    then, now = app
    row = plan.rows[record_id]
    take: Record = {}
    conflicted: list[str] = []
    for name, sheet_value in imports.items():
        app_value = now.get(name)
        if app_value == sheet_value:
            continue
        if app_value == then.get(name):
            take[name] = sheet_value
            continue
        column = next(c for c in mapping.columns if c.field == name)
        values = (app_value, sheet_value, _base_value(old, name))
        report_conflict(plan, mapping, record_id, column, row, values)
        conflicted.append(name)
    return take, conflicted


# from-sheet


_FromSheet: TypeAlias = _Pass[FromSheetPlan]


def _from_sheet_counts() -> dict[str, int]:
    names = (
        "updated created unchanged conflicts errors deleted_in_sheet "
        "deleted_in_app readonly pending_export"
    )
    return dict.fromkeys(names.split(), 0)


def plan_from_sheet(
    mapping: TabMapping,
    tab: TabData | None,
    app: dict[int, Record],
    base: dict[int, Record],
) -> FromSheetPlan:
    """Plan importing sheet edits and new rows without overwriting app edits."""
    rows = tab.rows if tab is not None else []
    layout = _read_layout(mapping, rows, tab.merges if tab is not None else ())
    plan = FromSheetPlan({}, [], {}, [], [], _from_sheet_counts(), 0, TabChanges())
    ctx = _Pass(mapping, layout, plan, _parser_for(tab))
    plan.issues.extend(layout.issues)
    plan.counts["errors"] += _errors_in(layout.issues)
    if layout.strangers:
        plan.issues.extend(_stranger_issues(mapping, rows[0], layout))
    if tab is None:
        plan.issues.append(_missing_tab_issue(mapping))
        return plan
    if not _prepare_from_sheet_header(ctx, rows, base):
        plan.counts["errors"] = max(1, _errors_in(plan.issues))
        return plan
    scanned = _scan_rows(mapping, layout, rows, ctx.parser)
    plan.compared = scanned.examined
    plan.id_cell_changes.cells.update(_rows_found_again(ctx, scanned, app, base))
    for issue, rows_text in layout.merge_issues:
        if rows_text:
            were = "was" if rows_text.startswith("row ") else "were"
            issue.reason += f"; {rows_text} {were} not imported"
        ctx.issue(issue, "errors")
    for issue in scanned.issues:
        ctx.issue(issue, "errors")
    # A row a merge hides cells of waits, whole, until they are unmerged.
    for record_id, (number, cells) in scanned.by_id.items():
        plan.rows[record_id] = number
        if number not in layout.hidden:
            _import_row(ctx, record_id, number, cells, app, base)
        elif record_id in base:
            old = base[record_id]
            plan.snapshots[record_id] = _emptied_by_merge(
                ctx, number, _last_agreed(old), _emptied(old)
            )
    for number, cells in scanned.new:
        if number not in layout.hidden:
            _create_row(ctx, number, cells)
    if layout.id_index is None:
        plan.id_column = layout.next_index + 1
        if plan.creates:
            # a tab typed by hand without an ID column: add it for the new IDs
            plan.id_cell_changes.cells[(1, plan.id_column)] = mapping.id_header
    plan.known_columns = _known_columns(ctx)
    doubtful = _doubtful_rows(scanned, app, base)
    for record_id in sorted((app.keys() & base.keys()) - scanned.seen):
        issue = _gone_from_sheet_issue(mapping, record_id, doubtful, asked=False)
        ctx.issue(issue, "deleted_in_sheet")
        if not doubtful:
            plan.can_write_back.append(record_id)
    return plan


def _missing_tab_issue(mapping: TabMapping) -> Issue:
    return Issue(
        mapping.tab,
        None,
        None,
        None,
        f"tab {mapping.tab!r} does not exist; nothing was imported",
        "missing_tab",
    )


def _prepare_from_sheet_header(
    ctx: _FromSheet, rows: Sequence[list[Cell]], base: dict[int, Record]
) -> bool:
    layout, mapping, plan = ctx.layout, ctx.mapping, ctx.plan
    if layout.id_ambiguous or layout.header_row != 1:
        return False
    ok = True
    if layout.id_index is None and len(rows) > 1 and base:
        plan.issues.append(_missing_header_issue(mapping, mapping.id_header))
        ok = False
    for column in layout.missing:
        if column.required:
            plan.issues.append(_missing_header_issue(mapping, column.header))
            ok = False
        elif not layout.strangers:  # else told with the headers in its place
            plan.issues.append(_missing_column_issue(mapping, column.header))
    for column in _ambiguous(mapping, layout):
        if column.required:
            ok = False
            _told_stops_the_tab(plan.issues, mapping, column)
    if layout.id_index is not None:
        plan.id_column = layout.id_index + 1
    return ok


def _told_stops_the_tab(
    issues: list[Issue], mapping: TabMapping, column: Column
) -> None:
    """Add to the error about a required column's doubled header that no row
    of the tab was imported, not only its columns' values."""
    for issue in issues:
        if issue.kind == "error" and issue.row == 1 and issue.column == column.header:
            issue.reason += (
                f"; {column.header!r} is required, so no row of tab "
                f"{mapping.tab!r} was imported"
            )


def _ambiguous(mapping: TabMapping, layout: _Layout) -> list[Column]:
    return [col for col in mapping.columns if col.field in layout.ambiguous]


def _own_texts(
    ctx: _Pass[Any], cells: list[Cell], record: Record, old: Record | None
) -> list[Cell]:
    """``cells``, where one reads as a spreadsheet error whose text the record
    holds or held when last synced, with that text instead: the Sheets API
    gives an error a formula shows (``#N/A``) as its text, the same as that
    text typed, and the text is the record's own, written by a sync."""
    own: list[Cell] | None = None
    for column, index in ctx.columns:
        raw = _cell(cells, index)
        if isinstance(raw, ErrorValue) and (
            record.get(column.field) == raw
            or (old is not None and old.get(column.field) == raw)
        ):
            own = own if own is not None else list(cells)
            own[index] = str(raw)
    return own if own is not None else cells


def _parse_row(
    ctx: _Pass[Any], number: int, cells: list[Cell]
) -> dict[str, Canonical] | None:
    """Parse the importable cells of a row; None (and issues) if any is bad."""
    values: dict[str, Canonical] = {}
    ok = True
    width = len(cells)
    for column, index in ctx.columns:
        raw = cells[index] if index < width else None
        try:
            values[column.field] = ctx.parser.parse(column, raw)
        except CellError as exc:
            if column.readonly:
                continue  # never imported, so a bad value there blocks nothing
            issue = _cell_issue(ctx.mapping, number, column, raw, exc)
            if isinstance(ctx.plan, FromSheetPlan):
                issue = dataclasses.replace(
                    issue, reason=f"{issue.reason}; nothing of this row was imported"
                )
            ctx.issue(issue, "errors")
            ok = False
    return values if ok else None


def _import_row(
    ctx: _FromSheet,
    record_id: int,
    number: int,
    cells: list[Cell],
    app: dict[int, Record],
    base: dict[int, Record],
) -> None:
    record = app.get(record_id)
    if record is None:
        _report_unimportable(ctx, record_id, number, base)
        return
    cells = _own_texts(ctx, cells, record, base.get(record_id))
    values = _parse_row(ctx, number, cells)
    if values is None:
        return
    old = base.get(record_id)
    updates: Record = {}
    snapshot = _last_agreed(old)
    emptied = _emptied(old)
    waiting = {name for name in emptied if name not in values}
    conflicts = len(ctx.plan.conflicts)
    for column, index in ctx.columns:
        name = column.field
        if name not in values:
            continue
        if values[name] == record.get(name):
            snapshot[name] = values[name]  # the common case, decided at once
            continue
        if column.readonly and values[name] is None:
            filled = render_cell(column, record.get(name))
            ctx.plan.fill_ins[(number, index + 1)] = filled
        if name in emptied and values[name] is None:
            waiting.add(name)  # no edit: a sync to the sheet fills the cell in
            ctx.plan.counts["pending_export"] += 1
            continue
        _field_from_sheet(
            ctx, record_id, number, column, values, record, old, updates, snapshot
        )
    if updates and not _required_present(ctx, number, updates):
        return
    if updates:
        ctx.plan.updates[record_id] = updates
        ctx.plan.counts["updated"] += 1
    elif len(ctx.plan.conflicts) == conflicts:  # a conflict is no "unchanged"
        ctx.plan.counts["unchanged"] += 1
    ctx.plan.snapshots[record_id] = _emptied_by_merge(ctx, number, snapshot, waiting)


def _report_unimportable(
    ctx: _FromSheet, record_id: int, number: int, base: dict[int, Record]
) -> None:
    if record_id not in base:
        ctx.issue(_unknown_id_issue(ctx.mapping, record_id, number), "errors")
        return
    ctx.issue(
        Issue(
            ctx.mapping.tab,
            number,
            None,
            str(record_id),
            f"record {record_id} {LEFT_THE_BOOK}; the row was not imported "
            "(delete it, or clear its ID to import it as a new record)",
            "deleted_in_app",
        ),
        "deleted_in_app",
    )


def _field_from_sheet(
    ctx: _FromSheet,
    record_id: int,
    number: int,
    column: Column,
    values: dict[str, Canonical],
    record: Record,
    old: Record | None,
    updates: Record,
    snapshot: Record,
) -> None:
    name = column.field
    sheet_value, app_value = values[name], record.get(name)
    base_value = _base_value(old, name)
    if column.readonly:
        _readonly_from_sheet(ctx, number, column, sheet_value, app_value, base_value)
        _keep_base(
            snapshot, name, app_value if sheet_value == app_value else base_value
        )
        return
    outcome = _merge(app_value, sheet_value, base_value)
    if outcome is _Outcome.SAME:
        snapshot[name] = app_value
    elif outcome is _Outcome.SHEET:
        updates[name] = snapshot[name] = sheet_value
    elif outcome is _Outcome.APP:
        _keep_base(snapshot, name, base_value)
        ctx.plan.counts["pending_export"] += 1
    else:
        _keep_base(snapshot, name, base_value)
        _conflict(ctx, record_id, column, number, (app_value, sheet_value, base_value))


def _readonly_from_sheet(
    ctx: _FromSheet,
    number: int,
    column: Column,
    sheet_value: Canonical,
    app_value: Canonical,
    base_value: Canonical | _Missing,
) -> None:
    # A blank cell is no edit: rows created by an import have none of the
    # app's values until a sync to the sheet fills them in.
    if sheet_value is None or sheet_value in (app_value, base_value):
        return
    raw = render_cell(column, sheet_value)
    ctx.issue(_readonly_issue(ctx.mapping, number, column, raw), "readonly")


def _required_present(ctx: _Pass[Any], number: int, values: Record) -> bool:
    ok = True
    for column in ctx.mapping.columns:
        if column.required and column.field in values and values[column.field] is None:
            ctx.issue(
                Issue(
                    ctx.mapping.tab,
                    number,
                    column.header,
                    None,
                    "is required; nothing of this row is imported until it is "
                    "filled in",
                ),
                "errors",
            )
            ok = False
    return ok


def _new_row_values(
    ctx: _Pass[Any], number: int, cells: list[Cell]
) -> dict[str, Canonical] | None:
    """The values a row typed into the sheet creates a record with; None (and
    issues) if the import would refuse it."""
    values = _parse_row(ctx, number, cells)
    if values is None:
        return None
    for column in ctx.mapping.columns:
        if column.readonly:
            values.pop(column.field, None)
        elif column.required:
            values.setdefault(column.field, None)
    return values if _required_present(ctx, number, values) else None


def _create_row(ctx: _FromSheet, number: int, cells: list[Cell]) -> None:
    values = _new_row_values(ctx, number, cells)
    if values is not None:
        blank = {
            column.field: index + 1
            for column, index in ctx.columns
            if column.readonly and _is_blank(_cell(cells, index))
        }
        ctx.plan.creates.append(NewRow(number, values, blank))
        ctx.plan.counts["created"] += 1


def _gone_from_sheet_issue(
    mapping: TabMapping, record_id: int, doubtful: list[int], *, asked: bool
) -> Issue:
    """A synced record no row carries any more: deleted from the sheet, or
    one of the rows whose ID is in doubt (the issue points at it where it is
    the only one; several are named in its reason). It is kept in the app
    and not written back, which could give it two rows, unless ``asked`` and
    no row's ID is in doubt."""
    reason = f"record {record_id} is no longer in the sheet"
    kept = "not written back to the sheet"
    if doubtful:
        rows = ", ".join(str(number) for number in doubtful)
        reason = (
            f"no row has ID {record_id}; if it is row {rows}, whose ID is "
            f"unreadable, unknown or another row's too, put {record_id} back in "
            "its ID cell"
        )
        if asked:
            which = (
                f"row {rows}'s ID is"
                if len(doubtful) == 1
                else f"the IDs of rows {rows} are"
            )
            kept = f"not written back while {which} in doubt"
    return Issue(
        mapping.tab,
        _the_one(doubtful),
        None,
        str(record_id),
        f"{reason}; it was kept in the app and {kept}",
        "deleted_in_sheet",
    )


def _the_one(rows: list[int]) -> int | None:
    """The row an issue points at: the only one it may be, else none."""
    return rows[0] if len(rows) == 1 else None


def _held_for_doubt_issue(
    mapping: TabMapping, record_id: int, doubtful: list[int]
) -> Issue:
    rows = ", ".join(str(number) for number in doubtful)
    which = (
        f"row {rows}'s ID is" if len(doubtful) == 1 else f"the IDs of rows {rows} are"
    )
    return Issue(
        mapping.tab,
        _the_one(doubtful),
        None,
        str(record_id),
        f"no row has ID {record_id}, and no earlier sync with this sheet tells "
        f"whether row {rows}, whose ID is unreadable, unknown or another row's "
        f"too, is its row: it is not added while {which} in doubt; if it is, "
        f"put {record_id} back in its ID cell",
        "error",
    )


def column_letter(index: int) -> str:
    """Return the letter(s) of a 1-based column number: 1 -> A, 28 -> AB."""
    letters = ""
    while index > 0:
        index, remainder = divmod(index - 1, 26)
        letters = chr(ord("A") + remainder) + letters
    return letters
