from __future__ import annotations

import copy
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openpyxl.utils.datetime import CALENDAR_MAC_1904

from sheetbridge.sheets.base import (
    Cell,
    CellRange,
    DateSystem,
    ErrorValue,
    TabChanges,
    TabData,
)
from sheetbridge.sheets.xlsx import XlsxBackend
from sheetbridge.sync.columns import Canonical, Column, ColumnType, parse_value
from sheetbridge.sync.engine import (
    MAX_SHEET_ROWS,
    Conflict,
    FromSheetPlan,
    Record,
    TabMapping,
    ToSheetPlan,
    column_letter,
    plan_from_sheet,
    plan_to_sheet,
)

MAPPING = TabMapping(
    "Policies",
    "ID",
    (
        Column("Name", "name", required=True),
        Column("Policy Number", "policy_number"),
        Column("Premium", "premium", ColumnType.MONEY),
        Column("Start", "start", ColumnType.DATE),
        Column("Status", "status", ColumnType.ENUM, choices=("active", "lapsed")),
        Column("Phone", "phone", ColumnType.PHONE),
        Column("Note", "note"),
        Column("Agent", "agent", readonly=True),
    ),
)
HEADER: list[Cell] = [
    "ID",
    "Name",
    "Policy Number",
    "Premium",
    "Start",
    "Status",
    "Phone",
    "Note",
    "Agent",
]


def rec(name: str, **fields: str | int | None) -> Record:
    record: Record = {
        "name": name,
        "policy_number": "00123",
        "premium": "100.00",
        "start": "2020-01-01",
        "status": "active",
        "phone": "+15551234",
        "note": None,
        "agent": "Kim",
    }
    record.update(fields)
    return record


def row_of(record_id: int, record: Record) -> list[Cell]:
    return [
        record_id,
        record["name"],
        record["policy_number"],
        Decimal(str(record["premium"])) if record["premium"] is not None else None,
        date.fromisoformat(str(record["start"])) if record["start"] else None,
        record["status"],
        record["phone"],
        record["note"],
        record["agent"],
    ]


def tab_of(*rows: list[Cell], header: list[Cell] | None = None) -> TabData:
    return TabData([list(header or HEADER), *[list(r) for r in rows]], "v1")


def synced(app: dict[int, Record]) -> tuple[TabData, dict[int, Record]]:
    """A sheet and base as right after a clean sync of ``app``."""
    rows = [row_of(i, r) for i, r in sorted(app.items())]
    return tab_of(*rows), copy.deepcopy(app)


def apply_changes(rows: list[list[Cell]], changes: TabChanges) -> list[list[Cell]]:
    """Apply TabChanges like a backend does, to a list of rows."""
    result = [list(r) for r in rows]
    for (row, col), value in changes.cells.items():
        _put(result, row, col, value)
    last = max(
        (i + 1 for i, r in enumerate(result) if any(_full(v) for v in r)), default=0
    )
    for offset, values in enumerate(changes.append):
        for index, value in enumerate(values):
            if value is not None:
                _put(result, last + 1 + offset, index + 1, value)
    for row in sorted(set(changes.delete_rows), reverse=True):
        del result[row - 1]
    return result


def _full(value: Cell) -> bool:
    return value is not None and value != ""


def _put(rows: list[list[Cell]], row: int, col: int, value: Cell) -> None:
    while len(rows) < row:
        rows.append([])
    cells = rows[row - 1]
    while len(cells) < col:
        cells.append(None)
    cells[col - 1] = value


def kinds(plan: ToSheetPlan | FromSheetPlan) -> list[str]:
    return [issue.kind for issue in plan.issues]


# header and layout


def test_to_sheet_on_missing_tab_writes_header_and_appends_every_record() -> None:
    app = {1: rec("Ann"), 2: rec("Bob", note='=HYPERLINK("http://x","prize")')}
    plan = plan_to_sheet(MAPPING, None, app, {})
    rows = apply_changes([], plan.changes)
    assert rows[0] == HEADER
    assert rows[1:] == [row_of(1, app[1]), row_of(2, app[2])]
    assert plan.snapshots == app
    assert plan.counts["appended"] == 2


def test_missing_headers_are_added_right_of_the_last_used_header_cell() -> None:
    tab = tab_of(header=["Name", "Mine", None, "ID"])
    plan = plan_to_sheet(MAPPING, tab, {1: rec("Ann")}, {})
    assert plan.changes.cells[(1, 5)] == "Policy Number"
    assert plan.changes.cells[(1, 11)] == "Agent"
    assert all(col >= 5 for (row, col) in plan.changes.cells if row == 1)
    appended = plan.changes.append[0]
    assert appended[3] == 1 and appended[0] == "Ann"
    assert appended[1] is None and appended[2] is None  # people's columns


def test_headers_match_ignoring_case_and_spacing() -> None:
    header: list[Cell] = ["id", "NAME", "policy_number", "premium", "start", "status"]
    header += ["phone", "note", "agent"]
    app = {1: rec("Ann")}
    tab = TabData([header, row_of(1, app[1])], "v")
    plan = plan_to_sheet(MAPPING, tab, app, app)
    assert plan.changes.is_empty()


def test_duplicate_and_blank_headers_name_their_column_letters_c08() -> None:
    mapping = TabMapping("T", "id", (Column("name", "name"),))
    tab = TabData([["id", "", "", "name", "name"], [1, None, None, "a", "b"]], "v")
    plan = plan_from_sheet(mapping, tab, {1: {"name": "x"}}, {1: {"name": "x"}})
    errors = [i for i in plan.issues if i.kind == "error"]
    assert len(errors) == 1 and "D and E" in errors[0].reason
    blanks = [i.column for i in plan.issues if i.kind == "warning"]
    assert blanks == ["B", "C"]
    assert plan.updates == {} and plan.creates == []
    to = plan_to_sheet(mapping, tab, {1: {"name": "new"}}, {1: {"name": "x"}})
    assert to.changes.is_empty()


@pytest.mark.parametrize("plan", [plan_to_sheet, plan_from_sheet])
@pytest.mark.parametrize("again", [["name", "Note"], ["Note"]])
def test_each_doubled_header_counts_as_the_error_it_is_listed_as(
    plan: Any, again: list[str]
) -> None:
    app = {1: rec("Ann", note="call back")}
    tab, base = synced(app)
    tab.rows[0] += again

    doubled = plan(MAPPING, tab, app, base)

    listed = [i for i in doubled.issues if i.kind == "error"]
    assert [i.column for i in listed] == [header.title() for header in again]
    assert doubled.counts["errors"] == len(again)


def test_an_import_says_a_doubled_required_header_stops_the_whole_tab() -> None:
    app = {1: rec("Ann", note="call back")}
    tab, base = synced(app)
    tab.rows[0] += ["Name"]
    tab.rows[1][HEADER.index("Note")] = "edited"

    plan = plan_from_sheet(MAPPING, tab, app, base)

    (error,) = [i for i in plan.issues if i.kind == "error"]
    assert "nothing is synced from these columns" in error.reason
    assert "'Name' is required, so no row of tab 'Policies' was imported" in (
        error.reason
    )
    assert plan.updates == {}


@pytest.mark.parametrize("plan", [plan_to_sheet, plan_from_sheet])
def test_a_required_cell_left_blank_says_the_row_waits_until_it_is_filled_in(
    plan: Any,
) -> None:
    app = {1: rec("Ann")}
    tab, base = synced(app)
    new_row = row_of(0, rec("Bob", note="typed"))
    new_row[HEADER.index("ID")] = new_row[HEADER.index("Name")] = None
    tab.rows.append(new_row)

    planned = plan(MAPPING, tab, app, base)

    (error,) = [i for i in planned.issues if i.kind == "error"]
    assert (error.row, error.column) == (3, "Name")
    assert error.reason == (
        "is required; nothing of this row is imported until it is filled in"
    )


@pytest.mark.parametrize(
    "above", [[["Alice's book"], []], [[], [], ["updated weekly"]]]
)
def test_headers_below_the_first_row_are_one_error_saying_where_and_nothing_moves(
    above: list[list[Cell]],
) -> None:
    # Rows inserted above the headers (a title, say): the tab is not read
    # as one without headers, nor written over.
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced(app)
    moved = TabData([*above, *tab.rows], "v1")
    app[1]["name"] = "Anne"
    header_row = len(above) + 1

    imported = plan_from_sheet(MAPPING, moved, copy.deepcopy(app), base)
    written = plan_to_sheet(MAPPING, moved, app, base)

    for plan in (imported, written):
        (issue,) = plan.issues
        assert (issue.kind, issue.row, issue.column) == ("error", header_row, None)
        assert issue.reason == (
            f"the headers are in row {header_row}, not row 1, where a sync reads "
            f"them: delete the {len(above)} row{'s' * (len(above) > 1)} above "
            "them (a title can go right of the columns); until then this tab "
            "is not synced"
        )
        assert plan.counts["errors"] == 1
    assert imported.updates == {} and imported.creates == []
    assert written.changes.is_empty()


def test_duplicate_id_header_stops_the_tab() -> None:
    tab = tab_of([1, "Ann"], header=["ID", "Name", "ID"])
    plan = plan_from_sheet(MAPPING, tab, {1: rec("Bob")}, {1: rec("Bob")})
    assert plan.updates == {} and plan.counts["errors"] == 1
    assert "A and C" in plan.issues[0].reason


def test_missing_required_header_imports_nothing_from_the_tab() -> None:
    tab = TabData([["ID", "Note"], [1, "changed"], [None, "new"]], "v")
    base = {1: rec("Ann")}
    plan = plan_from_sheet(MAPPING, tab, copy.deepcopy(base), base)
    assert plan.updates == {} and plan.creates == []
    assert any("'Name' is missing" in i.reason for i in plan.issues)


def test_missing_optional_header_imports_the_other_columns() -> None:
    base = {1: rec("Ann")}
    tab = TabData([["ID", "Name"], [1, "Anna"]], "v")
    plan = plan_from_sheet(MAPPING, tab, copy.deepcopy(base), base)
    assert plan.updates == {1: {"name": "Anna"}}


def test_a_deleted_column_comes_back_with_the_app_values_not_blanks() -> None:
    app = {1: rec("Ann", note="call back"), 2: rec("Bob", note="paid")}
    tab, base = synced(app)
    for row in tab.rows:
        row[HEADER.index("Note")] = None

    to = plan_to_sheet(MAPPING, tab, app, base)
    rows = apply_changes(tab.rows, to.changes)
    frm = plan_from_sheet(MAPPING, TabData(rows, "v2"), app, to.snapshots)

    added = len(HEADER)  # the first column right of the header
    assert rows[0][added] == "Note"
    assert [row[added] if len(row) > added else None for row in rows[1:]] == [
        "call back",
        "paid",
    ]
    assert to.counts["pending_import"] == 0 and to.snapshots == base
    assert frm.updates == {} and frm.counts["updated"] == 0


def test_a_column_that_came_back_is_no_edit_in_a_row_it_could_not_fill_yet() -> None:
    # The row's ID was in two rows as the column came back: neither was
    # written, and once one is gone its empty cell is still no edit.
    app = {1: rec("Ann", note="call back"), 2: rec("Bob", note="paid")}
    tab, base = synced(app)
    note = HEADER.index("Note")
    for row in tab.rows:
        row[note] = None
    tab.rows.append(list(tab.rows[1]))  # Ann's row, copied below

    to = plan_to_sheet(MAPPING, tab, app, base)
    rows = apply_changes(tab.rows, to.changes)
    del rows[-1]  # the copy is deleted
    stored = {**base, **to.snapshots}
    frm = plan_from_sheet(MAPPING, TabData(rows, "v2"), app, stored)
    stored.update(frm.snapshots)
    again = plan_to_sheet(MAPPING, TabData(rows, "v3"), app, stored)

    added = len(HEADER)
    assert [row[added] if len(row) > added else None for row in rows[1:]] == [
        None,
        "paid",
    ]
    assert frm.updates == {} and frm.conflicts == []
    assert apply_changes(rows, again.changes)[1][added] == "call back"


def test_a_column_that_came_back_is_no_edit_in_a_row_whose_id_was_typed_over() -> None:
    # Bob's row was given Ann's ID as the column came back: Bob had no row
    # the sync knew, and once his ID is back his empty cell is still no edit.
    app = {1: rec("Ann", note="call back"), 2: rec("Bob", note="paid")}
    tab, base = synced(app)
    note = HEADER.index("Note")
    for row in tab.rows:
        row[note] = None
    tab.rows[2][0] = 1

    to = plan_to_sheet(MAPPING, tab, app, base)
    rows = apply_changes(tab.rows, to.changes)
    rows[2][0] = 2  # the ID typed back
    frm = plan_from_sheet(MAPPING, TabData(rows, "v2"), app, {**base, **to.snapshots})

    assert frm.updates == {} and frm.conflicts == []


def test_a_column_that_came_back_is_no_edit_where_app_values_were_refused() -> None:
    app = {1: rec("Ann", note="call back"), 2: rec("Bob", note="paid")}
    tab, base = synced(app)
    for row in tab.rows:
        row[HEADER.index("Note")] = None
    app[1]["policy_number"] = "9" * 101  # the whole row is not written

    to = plan_to_sheet(MAPPING, tab, app, base, cell_limit=100)
    rows = apply_changes(tab.rows, to.changes)
    frm = plan_from_sheet(MAPPING, TabData(rows, "v2"), app, {**base, **to.snapshots})

    assert to.counts["errors"] == 1
    assert frm.updates == {} and frm.conflicts == []


def test_a_renamed_column_is_left_for_its_name_to_come_back_then_syncs() -> None:
    app = {1: rec("Ann", note="call back"), 2: rec("Bob", note="paid")}
    tab, base = synced(app)
    tab.rows[0][HEADER.index("Note")] = "Remark"
    tab.rows[1][HEADER.index("Note")] = "edited meanwhile"

    renamed = plan_to_sheet(MAPPING, tab, app, base)
    assert renamed.changes.is_empty(), "no second Note column"
    assert [i.kind for i in renamed.issues] == ["warning"]
    tab.rows[0][HEADER.index("Note")] = "Note"
    again = plan_from_sheet(MAPPING, tab, app, renamed.snapshots)

    assert again.updates == {1: {"note": "edited meanwhile"}}
    assert again.counts["conflicts"] == 0


@pytest.mark.parametrize("plan_while_renamed", [plan_to_sheet, plan_from_sheet])
def test_syncs_while_a_column_is_renamed_keep_its_last_synced_values(
    plan_while_renamed: Any,
) -> None:
    app = {1: rec("Ann", note="call back"), 2: rec("Bob", note="paid")}
    tab, base = synced(app)
    tab.rows[0][HEADER.index("Note")] = "Remark"

    renamed = plan_while_renamed(MAPPING, tab, app, base)
    app[1]["note"] = None  # cleared in the app meanwhile
    tab.rows[0][HEADER.index("Note")] = "Note"
    to = plan_to_sheet(MAPPING, tab, app, renamed.snapshots)
    frm = plan_from_sheet(MAPPING, tab, app, renamed.snapshots)

    assert renamed.snapshots == base
    assert to.changes.cells == {(2, HEADER.index("Note") + 1): None}
    assert frm.updates == {} and frm.counts["conflicts"] == 0


@pytest.mark.parametrize("plan_while_doubled", [plan_to_sheet, plan_from_sheet])
def test_syncs_while_a_header_is_doubled_keep_its_last_synced_values(
    plan_while_doubled: Any,
) -> None:
    app = {1: rec("Ann", note="call back"), 2: rec("Bob", note="paid")}
    tab, base = synced(app)
    tab.rows[0][HEADER.index("Phone")] = "Note"

    doubled = plan_while_doubled(MAPPING, tab, app, base)

    assert doubled.snapshots == base


def test_an_unknown_header_beside_a_missing_column_is_named_both_ways() -> None:
    app = {1: rec("Ann", note="call back")}
    tab, base = synced(app)
    tab.rows[0][HEADER.index("Note")] = "Remark"
    tab.rows[0][HEADER.index("Phone")] = ErrorValue("#REF!")
    tab.rows[1][HEADER.index("Note")] = "edited"

    for plan in (
        plan_from_sheet(MAPPING, tab, app, base),
        plan_to_sheet(MAPPING, tab, app, base),
    ):
        warned = {i.column: i.reason for i in plan.issues if i.kind == "warning"}
        assert set(warned) == {"G", "H"}
        assert "'Remark'" in warned["H"] and "'#REF!'" in warned["G"]
        assert "'Phone', 'Note'" in warned["H"]


def test_the_records_own_text_that_reads_as_a_sheet_error_is_no_error() -> None:
    # The Sheets API gives an error a formula shows (#N/A) as its text, the
    # same as that text typed: a note of "#N/A" must not block its row.
    app = {1: rec("Ann", note="#N/A"), 2: rec("Bo", note="#N/A")}
    tab, base = synced(app)
    note = HEADER.index("Note")
    for row in tab.rows[1:]:
        row[note] = ErrorValue(row[note])
    tab.rows[1][HEADER.index("Name")] = "Ann Lee"  # edited in the sheet
    app[2]["name"] = "Bo Chan"  # edited in the app

    frm = plan_from_sheet(MAPPING, tab, app, base)
    to = plan_to_sheet(MAPPING, tab, app, base)

    assert [i for i in (*frm.issues, *to.issues) if i.kind == "error"] == []
    assert frm.updates == {1: {"name": "Ann Lee"}}
    assert to.changes.cells == {(3, HEADER.index("Name") + 1): "Bo Chan"}
    # Where the record holds other text, the error is the sheet's.
    app[1]["note"] = base[1]["note"] = "call back"
    (error,) = [
        i for i in plan_from_sheet(MAPPING, tab, app, base).issues if i.kind == "error"
    ]
    assert (error.row, error.column) == (2, "Note")


def test_a_column_of_peoples_own_is_no_warning_while_ours_are_all_there() -> None:
    app = {1: rec("Ann")}
    tab, base = synced(app)
    tab.rows[0].append("My remarks")

    assert plan_from_sheet(MAPPING, tab, app, base).issues == []
    assert plan_to_sheet(MAPPING, tab, app, base).issues == []


def test_app_text_longer_than_the_sheets_cells_hold_is_an_error_not_cut() -> None:
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced(app)
    app[1]["note"] = "x" * 101
    app[3] = rec("Cy", note="y" * 101)

    app[2]["note"] = "\N{GRINNING FACE}" * 51  # 102 units, as sheets count
    plan = plan_to_sheet(MAPPING, tab, app, base, cell_limit=100)

    assert plan.changes.is_empty()
    refused = [(i.row, i.column) for i in plan.issues if i.kind == "error"]
    assert refused == [(2, "Note"), (3, "Note"), (None, "Note")]
    assert "100 characters" in plan.issues[0].reason
    # A record not in the sheet yet has no row: its ID says which one.
    assert plan.issues[2].reason.startswith("record 3: app value")


def test_missing_id_column_after_a_sync_is_an_error_not_a_duplication() -> None:
    base = {1: rec("Ann")}
    tab = TabData([["Name"], ["Ann"]], "v")
    to = plan_to_sheet(MAPPING, tab, copy.deepcopy(base), base)
    assert to.changes.is_empty() and to.counts["errors"] == 1
    frm = plan_from_sheet(MAPPING, tab, copy.deepcopy(base), base)
    assert frm.creates == [] and frm.counts["errors"] == 1


def test_hand_typed_tab_without_id_column_imports_rows_and_adds_the_id_header() -> None:
    tab = TabData([["Name", "Status"], ["Ann", "Active"], ["Bob", "lapsed"]], "v")
    plan = plan_from_sheet(MAPPING, tab, {}, {})
    assert [c.values for c in plan.creates] == [
        {"name": "Ann", "status": "active"},
        {"name": "Bob", "status": "lapsed"},
    ]
    assert plan.id_column == 3
    assert plan.id_cell_changes.cells == {(1, 3): "ID"}


def test_header_only_tab_has_zero_rows_and_imports_nothing_c07() -> None:
    plan = plan_from_sheet(MAPPING, tab_of(), {1: rec("Ann")}, {})
    assert plan.updates == {} and plan.creates == [] and plan.counts["errors"] == 0
    assert plan.id_cell_changes.is_empty()


def test_missing_tab_is_reported_on_import() -> None:
    plan = plan_from_sheet(MAPPING, None, {1: rec("Ann")}, {})
    assert kinds(plan) == ["missing_tab"] and "Policies" in plan.issues[0].reason


# rows by ID


def test_sorted_sheet_still_updates_the_right_rows() -> None:
    app = {1: rec("Ann"), 2: rec("Bob"), 3: rec("Cy")}
    tab, base = synced(app)
    tab.rows[1:] = list(reversed(tab.rows[1:]))  # rows 2..4 are now 3, 2, 1
    app[1]["note"] = "for Ann"
    app[3]["premium"] = "300.00"
    plan = plan_to_sheet(MAPPING, tab, app, base)
    assert plan.changes.cells == {(4, 8): "for Ann", (2, 4): Decimal("300.00")}
    assert plan.counts["written_cells"] == 2 and plan.counts["updated_rows"] == 2
    assert plan.counts["unchanged"] == 1


def test_reordered_columns_still_get_the_right_values() -> None:
    header: list[Cell] = ["Note", "Mine", "Name", "ID"]
    app = {1: rec("Ann")}
    tab = TabData([header, [None, "x", "Ann", 1]], "v")
    app2 = {1: rec("Ann", note="n")}
    plan = plan_to_sheet(MAPPING, tab, app2, {1: app[1]})
    assert plan.changes.cells[(2, 1)] == "n"
    assert (2, 2) not in plan.changes.cells


def test_unchanged_values_produce_no_writes_whatever_the_cell_type() -> None:
    app = {1: rec("Ann", premium="1234.50", policy_number="04001")}
    row: list[Cell] = row_of(1, app[1])
    row[3] = 1234.5  # money read back as float
    row[4] = datetime(2020, 1, 1)  # date read back as datetime
    row[2] = "04001"
    plan = plan_to_sheet(MAPPING, tab_of(row), app, app)
    assert plan.changes.is_empty() and plan.counts["unchanged"] == 1


def test_serial_date_cell_equals_the_app_date_c01() -> None:
    app = {1: rec("Ann", start="2020-01-01")}
    row = row_of(1, app[1])
    row[4] = 43831
    assert plan_to_sheet(MAPPING, tab_of(row), app, app).changes.is_empty()
    assert plan_from_sheet(MAPPING, tab_of(row), app, app).updates == {}


def test_leading_zeros_plus_signs_and_formula_text_stay_text_c02_c03_c04() -> None:
    texts = ["04001", "+Dri7abc", '=HYPERLINK("http://x","prize")', "@SUM(A1)", "-1+1"]
    app = {i + 1: rec("Ann", note=t, policy_number=t) for i, t in enumerate(texts)}
    plan = plan_to_sheet(MAPPING, None, app, {})
    for row in plan.changes.append:
        assert row[7] == row[2] and isinstance(row[7], str)
    rows = apply_changes([], plan.changes)
    back = plan_from_sheet(MAPPING, TabData(rows, "v"), app, plan.snapshots)
    assert back.updates == {} and back.conflicts == []


def test_ragged_short_row_reads_missing_cells_as_empty_c06() -> None:
    base = {1: rec("Ann", note="old", agent=None)}
    tab = tab_of([1, "Ann", "00123", 100, "2020-01-01"])  # stops after Start
    plan = plan_from_sheet(MAPPING, tab, copy.deepcopy(base), base)
    assert plan.updates == {1: {"status": None, "phone": None, "note": None}}


def test_empty_rows_and_rows_with_only_peoples_columns_are_ignored() -> None:
    header: list[Cell] = [*HEADER, "Mine"]
    people: list[Cell] = [None] * 9
    people.append("total")
    tab = TabData([header, [], [None, None], people], "v")
    to = plan_to_sheet(MAPPING, tab, {}, {})
    frm = plan_from_sheet(MAPPING, tab, {}, {})
    assert to.issues == [] and frm.creates == [] and frm.issues == []


# per-field three-way merge


def test_app_change_is_written_and_not_imported() -> None:
    app = {1: rec("Ann")}
    tab, base = synced(app)
    app[1]["status"] = "lapsed"
    to = plan_to_sheet(MAPPING, tab, app, base)
    assert to.changes.cells == {(2, 6): "lapsed"}
    assert to.snapshots[1]["status"] == "lapsed"
    frm = plan_from_sheet(MAPPING, tab, app, base)
    assert frm.updates == {} and frm.counts["pending_export"] == 1
    assert frm.snapshots[1]["status"] == "active"


def test_sheet_edit_is_left_by_to_sheet_and_applied_by_from_sheet() -> None:
    app = {1: rec("Ann")}
    tab, base = synced(app)
    tab.rows[1][5] = "Lapsed"
    to = plan_to_sheet(MAPPING, tab, app, base)
    assert to.changes.is_empty() and to.counts["pending_import"] == 1
    assert "pending_import" in kinds(to)
    assert to.snapshots[1]["status"] == "active"
    frm = plan_from_sheet(MAPPING, tab, app, base)
    assert frm.updates == {1: {"status": "lapsed"}}
    assert frm.rows == {1: 2}
    assert frm.snapshots[1]["status"] == "lapsed" and frm.counts["updated"] == 1


def test_both_sides_changed_differently_is_a_conflict_both_ways() -> None:
    app = {1: rec("Ann")}
    tab, base = synced(app)
    app[1]["note"] = "app"
    tab.rows[1][7] = "sheet"
    for plan in (
        plan_to_sheet(MAPPING, tab, app, base),
        plan_from_sheet(MAPPING, tab, app, base),
    ):
        assert [
            (c.record_id, c.field, c.app, c.sheet, c.base, c.base_known, c.row)
            for c in plan.conflicts
        ] == [(1, "note", "app", "sheet", None, True, 2)]
        assert plan.snapshots[1]["note"] is None
        assert plan.counts["conflicts"] == 1 and "conflict" in kinds(plan)
    assert plan_to_sheet(MAPPING, tab, app, base).changes.is_empty()
    assert plan_from_sheet(MAPPING, tab, app, base).updates == {}


def test_both_sides_changed_to_the_same_value_agree() -> None:
    app = {1: rec("Ann")}
    tab, base = synced(app)
    app[1]["note"] = "same"
    tab.rows[1][7] = " same "
    plan = plan_to_sheet(MAPPING, tab, app, base)
    assert plan.changes.is_empty() and plan.conflicts == []
    assert plan.snapshots[1]["note"] == "same"


def test_row_without_base_agreeing_fields_are_recorded_and_others_conflict() -> None:
    app = {1: rec("Ann", note="app")}
    row = row_of(1, rec("Ann", note="sheet"))
    for plan in (
        plan_to_sheet(MAPPING, tab_of(row), app, {}),
        plan_from_sheet(MAPPING, tab_of(row), app, {}),
    ):
        assert [c.field for c in plan.conflicts] == ["note"]
        assert "note" not in plan.snapshots[1]
        assert plan.snapshots[1]["name"] == "Ann"


def test_without_base_an_empty_side_is_filled_from_the_other() -> None:
    app = {1: rec("Ann", note="app")}
    row = row_of(1, rec("Ann", note=None))
    row[6] = None  # phone empty in the sheet, set in the app
    to = plan_to_sheet(MAPPING, tab_of(row), app, {})
    assert to.changes.cells == {(2, 8): "app", (2, 7): "+15551234"}
    app2 = {1: rec("Ann", note=None)}
    frm = plan_from_sheet(MAPPING, tab_of(row_of(1, rec("Ann", note="s"))), app2, {})
    assert frm.updates == {1: {"note": "s"}}


def test_field_added_to_the_mapping_later_is_filled_in() -> None:
    app = {1: rec("Ann", note="n")}
    base = {1: {k: v for k, v in app[1].items() if k != "note"}}
    header = [h for h in HEADER if h != "Note"]
    row = [c for i, c in enumerate(row_of(1, app[1])) if i != 7]
    plan = plan_to_sheet(MAPPING, tab_of(row, header=header), app, base)
    assert plan.changes.cells == {(1, 9): "Note", (2, 9): "n"}


def test_clearing_a_value_in_the_app_clears_the_cell() -> None:
    app = {1: rec("Ann", note="n")}
    tab, base = synced(app)
    app[1]["note"] = None
    plan = plan_to_sheet(MAPPING, tab, app, base)
    assert plan.changes.cells == {(2, 8): None}


# readonly columns


def test_readonly_column_is_written_but_never_imported() -> None:
    app = {1: rec("Ann")}
    tab, base = synced(app)
    tab.rows[1][8] = "Someone"
    frm = plan_from_sheet(MAPPING, tab, app, base)
    assert frm.updates == {} and "readonly" in kinds(frm)
    to = plan_to_sheet(MAPPING, tab, app, base)
    assert to.changes.cells == {(2, 9): "Kim"}
    assert "readonly" in kinds(to)


def test_a_blank_readonly_cell_is_filled_in_without_a_warning() -> None:
    # Rows typed into the sheet and created by an import have no agent yet.
    app = {1: rec("Ann")}
    tab, base = synced(app)
    tab.rows[1][8] = None
    to = plan_to_sheet(MAPPING, tab, app, base)
    assert to.changes.cells == {(2, 9): "Kim"}
    assert to.issues == []
    frm = plan_from_sheet(MAPPING, tab, app, base)
    assert frm.issues == [], "an import waits for it to be filled in, without a word"


def test_readonly_column_is_not_part_of_new_rows() -> None:
    tab = tab_of([None, "New", None, None, None, None, None, None, "Me"])
    plan = plan_from_sheet(MAPPING, tab, {}, {})
    assert "agent" not in plan.creates[0].values


# rows typed in the sheet, IDs


def test_row_without_id_is_left_by_to_sheet_and_created_by_from_sheet() -> None:
    app = {1: rec("Ann")}
    tab, base = synced(app)
    tab.rows.append([None, "Zed", "04001", "$1,000", "1/2/2021", "Active"])
    to = plan_to_sheet(MAPPING, tab, app, base)
    assert to.changes.is_empty() and to.counts["pending_import"] == 1
    frm = plan_from_sheet(MAPPING, tab, app, base)
    assert len(frm.creates) == 1
    new = frm.creates[0]
    assert new.row == 3 and frm.id_column == 1
    assert new.values == {
        "name": "Zed",
        "policy_number": "04001",
        "premium": "1000.00",
        "start": "2021-01-02",
        "status": "active",
        "phone": None,
        "note": None,
    }
    assert frm.id_cell_changes.is_empty()


def test_invalid_new_row_is_an_error_and_not_created() -> None:
    tab = tab_of([None, None, "x"], [None, "Ok", None, "abc"], [None, "Fine"])
    plan = plan_from_sheet(MAPPING, tab, {}, {})
    assert [c.values["name"] for c in plan.creates] == ["Fine"]
    errors = [(i.row, i.column) for i in plan.issues if i.kind == "error"]
    assert errors == [(2, "Name"), (3, "Premium")]


def test_a_new_row_the_import_would_refuse_is_an_error_in_to_sheet_too() -> None:
    app = {1: rec("Ann")}
    tab, base = synced(app)
    tab.rows.append([None, "Zed", None, "abc"])
    tab.rows.append([None, "Yan", None, ErrorValue("#N/A")])
    tab.rows.append([None, None, "04002"])
    tab.rows.append([None, "Fine"])

    to = plan_to_sheet(MAPPING, tab, app, base)
    frm = plan_from_sheet(MAPPING, tab, app, base)

    for plan in (to, frm):
        errors = [(i.row, i.column) for i in plan.issues if i.kind == "error"]
        assert errors == [(3, "Premium"), (4, "Premium"), (5, "Name")]
    assert to.counts["pending_import"] == 1 and to.counts["errors"] == 3
    assert [(i.row, i.kind) for i in to.issues if i.row == 6] == [(6, "pending_import")]


def test_a_record_whose_id_cell_cannot_be_read_may_be_that_row_both_ways() -> None:
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced(app)
    tab.rows[2][0] = ErrorValue("#REF!")

    to = plan_to_sheet(MAPPING, tab, app, base)
    frm = plan_from_sheet(MAPPING, tab, app, base)

    assert to.changes.is_empty(), "record 2 would be duplicated if appended"
    for plan in (to, frm):
        (missing,) = [i for i in plan.issues if i.kind == "deleted_in_sheet"]
        assert missing.value == "2"
        assert "row 3" in missing.reason and "kept in the app" in missing.reason


def test_duplicate_ids_are_errors_and_neither_row_is_synced() -> None:
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced(app)
    tab.rows[2][0] = 1
    tab.rows[2][7] = "edit"
    app[1]["note"] = "app edit"
    to = plan_to_sheet(MAPPING, tab, app, base)
    assert to.changes.is_empty()
    dupes = [i for i in to.issues if i.kind == "error"]
    assert [i.row for i in dupes] == [2, 3] and "duplicate ID 1" in dupes[0].reason
    frm = plan_from_sheet(MAPPING, tab, app, base)
    assert frm.updates == {} and frm.counts["errors"] == 2
    # record 2 lost its row to the duplicate: reported, not re-appended
    assert "deleted_in_sheet" in kinds(to)


def test_non_integer_id_is_an_error() -> None:
    tab = tab_of(["abc", "Ann"], [1.5, "Bob"])
    plan = plan_from_sheet(MAPPING, tab, {}, {})
    assert plan.creates == [] and plan.counts["errors"] == 2
    assert all("whole number" in i.reason for i in plan.issues)


def test_float_id_from_a_number_cell_is_accepted() -> None:
    app = {7: rec("Ann")}
    row = row_of(7, app[7])
    row[0] = 7.0
    assert plan_to_sheet(MAPPING, tab_of(row), app, app).changes.is_empty()


def test_unknown_id_without_base_is_an_error_both_ways() -> None:
    tab = tab_of(row_of(99, rec("Ghost")))
    for plan in (
        plan_to_sheet(MAPPING, tab, {}, {}),
        plan_from_sheet(MAPPING, tab, {}, {}),
    ):
        assert plan.counts["errors"] == 1 and "unknown ID 99" in plan.issues[0].reason
        assert "it may be another book's" in plan.issues[0].reason


def test_an_unreadable_id_is_told_to_be_put_back_before_it_is_cleared() -> None:
    app = {1: rec("Ann")}
    tab, base = synced(app)
    tab.rows[1][0] = "1x"

    (error, _gone) = plan_from_sheet(MAPPING, tab, app, base).issues

    assert (error.row, error.column, error.value) == (2, "ID", "1x")
    assert "if the row is a synced record, put its ID back" in error.reason
    assert "only if it is a new one, clear the ID" in error.reason


def test_values_that_differ_with_no_earlier_sync_are_a_conflict_that_says_so() -> None:
    app = {1: rec("Ann", note="app note")}
    tab, _ = synced({1: rec("Ann", note="sheet note")})  # e.g. a sheet just set

    for plan in (
        plan_from_sheet(MAPPING, tab, app, {}),
        plan_to_sheet(MAPPING, tab, app, {}),
    ):
        (conflict,) = plan.conflicts
        assert (conflict.app, conflict.sheet, conflict.base) == (
            "app note",
            "sheet note",
            None,
        )
        (issue,) = [i for i in plan.issues if i.kind == "conflict"]
        assert "differs in the app ('app note') and the sheet ('sheet note')" in (
            issue.reason
        )
        assert "no earlier sync of it with this sheet" in issue.reason
        assert "changed in both" not in issue.reason


# deletions


def test_deleted_in_app_is_flagged_by_default() -> None:
    tab, base = synced({1: rec("Ann"), 2: rec("Bob")})
    app = {2: base[2]}
    plan = plan_to_sheet(MAPPING, tab, app, base)
    assert plan.changes.is_empty() and plan.drop_snapshots == set()
    assert kinds(plan) == ["deleted_in_app"] and plan.issues[0].row == 2


def test_deleted_in_app_is_deleted_in_delete_mode_c13() -> None:
    tab, base = synced({1: rec("Ann"), 2: rec("Bob"), 3: rec("Cy")})
    app = {2: base[2]}
    plan = plan_to_sheet(MAPPING, tab, app, base, delete_mode="delete")
    assert sorted(plan.changes.delete_rows) == [2, 4]
    assert plan.drop_snapshots == {1, 3} and plan.counts["deleted"] == 2
    rows = apply_changes(tab.rows, plan.changes)
    again = plan_to_sheet(MAPPING, TabData(rows, "v2"), app, {2: base[2]})
    assert again.changes.is_empty() and again.issues == []


def test_deleted_in_app_but_edited_in_sheet_is_kept_in_delete_mode() -> None:
    tab, base = synced({1: rec("Ann")})
    tab.rows[1][7] = "important"
    plan = plan_to_sheet(MAPPING, tab, {}, base, delete_mode="delete")
    assert plan.changes.delete_rows == [] and kinds(plan) == ["deleted_in_app"]


def test_deleted_in_app_differing_only_in_a_column_the_app_owns_is_deleted() -> None:
    # A row an import created: the app filled in its agent, the sheet's cell
    # is still blank until a sync to the sheet writes it.
    tab, base = synced({1: rec("Ann")})
    tab.rows[1][8] = None

    plan = plan_to_sheet(MAPPING, tab, {}, base, delete_mode="delete")

    assert plan.changes.delete_rows == [2] and plan.counts["deleted"] == 1


def test_deleted_in_app_is_never_recreated_by_from_sheet() -> None:
    tab, base = synced({1: rec("Ann")})
    plan = plan_from_sheet(MAPPING, tab, {}, base)
    assert plan.creates == [] and plan.updates == {}
    assert kinds(plan) == ["deleted_in_app"]


def test_deleted_in_sheet_is_reported_and_never_re_appended() -> None:
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced(app)
    del tab.rows[1]
    to = plan_to_sheet(MAPPING, tab, app, base)
    assert to.changes.is_empty() and kinds(to) == ["deleted_in_sheet"]
    frm = plan_from_sheet(MAPPING, tab, app, base)
    assert frm.updates == {} and kinds(frm) == ["deleted_in_sheet"]
    assert to.can_write_back == frm.can_write_back == [1], (
        "Ann's row can be written back"
    )


def test_row_deleted_in_sheet_is_appended_again_when_written_back() -> None:
    app = {1: rec("Ann"), 2: rec("Bob"), 3: rec("Cy")}
    tab, base = synced(app)
    del tab.rows[1:3]  # Ann's and Bob's rows
    plan = plan_to_sheet(MAPPING, tab, app, base, write_back={1})
    ((record_id, name, *_),) = plan.changes.append
    assert (record_id, name) == (1, "Ann")
    assert plan.snapshots[1]["name"] == "Ann" and plan.counts["appended"] == 1
    (gone,) = plan.issues  # Bob's row is still only reported
    assert gone.kind == "deleted_in_sheet" and gone.value == "2"
    assert plan.can_write_back == [2]


@pytest.mark.parametrize(
    ("typed", "first", "doubtful"),
    [
        ("2x", 3, "row 3's ID is"),
        (987654, 3, "row 3's ID is"),
        # Ann's ID: both rows are in doubt, and the issue points at neither.
        (1, None, "the IDs of rows 2, 3 are"),
    ],
    ids=["unreadable", "unknown", "another-rows"],
)
def test_a_record_that_may_be_a_row_with_a_mistyped_id_is_never_written_back(
    typed: Cell, first: int | None, doubtful: str
) -> None:
    app = {1: rec("Ann"), 2: rec("Bob"), 3: rec("Cy")}
    tab, base = synced(app)
    tab.rows[2][0] = typed  # Bob's row, its ID mistyped
    del tab.rows[3]  # Cy's row

    for asked in ({2, 3}, app.keys()):
        plan = plan_to_sheet(MAPPING, tab, app, base, write_back=asked)

        assert plan.changes.append == [], "Bob or Cy may be row 3: neither is added"
        assert plan.can_write_back == [], "nor offered for a write-back"
        gone = {i.value: i for i in plan.issues if i.kind == "deleted_in_sheet"}
        assert gone.keys() == {"2", "3"}
        assert gone["2"].row == first, "it points at the one row it may be"
        assert "put 2 back in its ID cell" in gone["2"].reason
        assert f"not written back while {doubtful} in doubt" in gone["2"].reason


def test_a_sheet_never_synced_gets_no_record_while_a_rows_id_is_in_doubt() -> None:
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced(app)
    tab.rows[2][0] = 77778  # Bob's row, its ID mistyped

    plan = plan_to_sheet(MAPPING, tab, app, {})  # e.g. the book's sheet just set

    assert plan.changes.append == [], "row 3 may be Bob's: he is not added"
    (held,) = [i for i in plan.issues if i.value == "2"]
    assert held.row == 3 and "row 3's ID is in doubt" in held.reason
    synced_before = plan_to_sheet(MAPPING, tab, {**app, 3: rec("Cy")}, base)
    added = [row[0] for row in synced_before.changes.append]
    assert added == [3], "a record new since the last sync was never in the sheet"


def test_writing_back_a_record_still_in_the_sheet_changes_nothing() -> None:
    app = {1: rec("Ann")}
    tab, base = synced(app)
    plan = plan_to_sheet(MAPPING, tab, app, base, write_back={1, 7})
    assert plan.changes.is_empty() and plan.issues == []


def test_invalid_delete_mode_is_rejected() -> None:
    with pytest.raises(ValueError):
        plan_to_sheet(MAPPING, None, {}, {}, delete_mode="wipe")


# bad cells


def test_bad_cell_skips_only_its_row_on_import() -> None:
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced(app)
    tab.rows[1][4] = "someday"
    tab.rows[1][7] = "note 1"
    tab.rows[2][7] = "note 2"
    plan = plan_from_sheet(MAPPING, tab, app, base)
    assert plan.updates == {2: {"note": "note 2"}}
    [issue] = [i for i in plan.issues if i.kind == "error"]
    assert (issue.tab, issue.row, issue.column, issue.value) == (
        "Policies",
        2,
        "Start",
        "someday",
    )
    assert "YYYY-MM-DD" in issue.reason


@pytest.mark.parametrize("premium", ["1,50", "1 234,50", "1,2,3", "(-5)"])
def test_an_amount_with_a_decimal_comma_or_two_signs_is_a_row_error_not_imported(
    premium: str,
) -> None:
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced(app)
    tab.rows[1][3] = premium
    tab.rows[1][7] = "note 1"
    tab.rows.append([None, "Cy", None, premium])
    plan = plan_from_sheet(MAPPING, tab, app, base)
    assert plan.updates == {} and plan.creates == []
    errors = [(i.row, i.column, i.value) for i in plan.issues if i.kind == "error"]
    assert errors == [(2, "Premium", premium), (4, "Premium", premium)]


def test_bad_sheet_cell_is_not_overwritten_by_to_sheet() -> None:
    app = {1: rec("Ann")}
    tab, base = synced(app)
    tab.rows[1][5] = "maybe"
    app[1]["status"] = "lapsed"
    plan = plan_to_sheet(MAPPING, tab, app, base)
    assert plan.changes.is_empty() and plan.counts["errors"] == 1
    assert plan.snapshots[1]["status"] == "active"


def test_equal_values_of_different_cell_types_are_each_parsed_by_their_type() -> None:
    # True == 1 == 1.0 in Python; a tab full of repeated values must not let
    # one stand in for another.
    app = {1: rec("Ann"), 2: rec("Bob"), 3: rec("Cy")}
    tab, base = synced(app)
    tab.rows[1][7], tab.rows[2][7], tab.rows[3][7] = True, 1, 1.5
    tab.rows[1][3], tab.rows[2][3] = True, 1
    plan = plan_from_sheet(MAPPING, tab, app, base)
    assert plan.updates == {2: {"premium": "1.00", "note": "1"}, 3: {"note": "1.5"}}
    [issue] = [i for i in plan.issues if i.kind == "error"]
    assert (issue.row, issue.column) == (2, "Premium")


def test_the_same_bad_value_in_many_rows_is_an_error_on_each_row() -> None:
    app = {i: rec(f"N{i}") for i in range(1, 4)}
    tab, base = synced(app)
    for row in tab.rows[1:]:
        row[5] = "someday"
    for plan in (
        plan_from_sheet(MAPPING, tab, app, base),
        plan_to_sheet(MAPPING, tab, app, base),
    ):
        errors = [i for i in plan.issues if i.kind == "error"]
        assert [(i.row, i.column, i.value) for i in errors] == [
            (row, "Status", "someday") for row in (2, 3, 4)
        ]


def test_required_value_cleared_in_sheet_is_an_error() -> None:
    app = {1: rec("Ann")}
    tab, base = synced(app)
    tab.rows[1][1] = None
    plan = plan_from_sheet(MAPPING, tab, app, base)
    assert plan.updates == {} and plan.counts["errors"] == 1


def test_50001_character_note_is_a_row_level_error_before_writing_c12() -> None:
    long_note = "x" * 50_001
    app = {1: rec("Ann", note=long_note), 2: rec("Bob")}
    plan = plan_to_sheet(MAPPING, None, app, {})
    assert [r[0] for r in plan.changes.append] == [2]
    [issue] = [i for i in plan.issues if i.kind == "error"]
    assert issue.column == "Note" and "50,000" in issue.reason
    assert 1 not in plan.snapshots
    tab, base = synced({1: rec("Ann")})
    tab.rows[1][7] = long_note
    frm = plan_from_sheet(MAPPING, tab, {1: rec("Ann")}, base)
    assert frm.updates == {} and frm.counts["errors"] == 1
    assert frm.issues[0].value is not None and len(frm.issues[0].value) <= 80


def test_app_update_with_invalid_value_writes_nothing_for_that_row() -> None:
    app = {1: rec("Ann")}
    tab, base = synced(app)
    app[1]["note"] = "y" * 50_001
    app[1]["status"] = "lapsed"
    plan = plan_to_sheet(MAPPING, tab, app, base)
    assert plan.changes.is_empty() and plan.counts["errors"] == 1
    assert plan.snapshots[1] == base[1]


def test_peoples_columns_are_never_written() -> None:
    header = ["Mine", *HEADER, "Also mine"]
    app = {1: rec("Ann"), 2: rec("Bob")}
    rows: list[list[Cell]] = [["m1", *row_of(1, app[1]), "a1"]]
    base = copy.deepcopy(app)
    app[1] = rec("Anna", note="n", status="lapsed")
    plan = plan_to_sheet(MAPPING, TabData([header, *rows], "v"), app, base)
    assert all(col not in (1, 11) for (_, col) in plan.changes.cells)
    assert all(r[0] is None and len(r) <= 10 for r in plan.changes.append)


def test_counts_summarise_the_job() -> None:
    app = {1: rec("Ann"), 2: rec("Bob"), 3: rec("Cy")}
    tab, base = synced({1: app[1], 2: app[2]})
    app = copy.deepcopy(app)
    app[1]["note"] = "n"
    plan = plan_to_sheet(MAPPING, tab, app, base)
    assert plan.counts["written_cells"] == 1
    assert plan.counts["updated_rows"] == 1
    assert plan.counts["appended"] == 1
    assert plan.counts["unchanged"] == 1


def test_plans_count_the_rows_they_compared() -> None:
    # rows with an ID or values in our columns; not empty rows, nor rows that
    # hold only people's own columns
    app = {1: rec("Ann"), 2: rec("Bob")}
    header = [*HEADER, "Mine"]
    rows: list[list[Cell]] = [
        row_of(1, app[1]),
        [],
        [None] * len(HEADER) + ["my note"],
        [None, "Typed"],
        row_of(2, app[2]),
        ["not an id"],
    ]
    tab = TabData([header, *rows], "v")
    base = copy.deepcopy(app)
    assert plan_from_sheet(MAPPING, tab, app, base).compared == 4
    assert plan_to_sheet(MAPPING, tab, app, base).compared == 4


def test_column_letters() -> None:
    assert [column_letter(n) for n in (1, 26, 27, 52, 703)] == [
        "A",
        "Z",
        "AA",
        "AZ",
        "AAA",
    ]


def test_ten_thousand_rows_plan_only_the_changed_cells() -> None:
    app = {i: rec(f"N{i}", note=f"n{i}") for i in range(1, 10_001)}
    tab, base = synced(app)
    for i in range(1, 10_001, 10):
        app[i]["note"] = "changed"
    to = plan_to_sheet(MAPPING, tab, app, base)
    frm = plan_from_sheet(MAPPING, tab, app, base)
    assert to.counts["written_cells"] == 1000 and frm.counts["pending_export"] == 1000
    assert len(to.changes.cells) == 1000


# end to end with the xlsx backend


def test_a_plain_number_in_a_workbooks_date_column_is_read_as_excel_counts_days(
    tmp_path: Path,
) -> None:
    backend = XlsxBackend(tmp_path / "book.xlsx")
    app = {1: rec("Ann", start="1900-02-01"), 2: rec("Bob", start="2020-01-01")}
    plan = plan_to_sheet(MAPPING, None, app, {})
    backend.write({MAPPING.tab: plan.changes}, expected_version="")
    tab = backend.read_tabs([MAPPING.tab])[MAPPING.tab]
    assert tab is not None
    start = HEADER.index("Start") + 1
    # Typed as numbers into the date column, no date format: Excel shows
    # 1 February 1900 for 32, and 29 February 1900 for 60.
    backend.write(
        {MAPPING.tab: TabChanges(cells={(2, start): 32, (3, start): 60})},
        expected_version=tab.version,
    )

    tab = backend.read_tabs([MAPPING.tab])[MAPPING.tab]
    assert tab is not None
    frm = plan_from_sheet(MAPPING, tab, app, plan.snapshots)

    assert tab.date_system is DateSystem.EXCEL_1900
    assert frm.updates == {}
    (error,) = [issue for issue in frm.issues if issue.kind == "error"]
    assert (error.row, error.column, error.value) == (3, "Start", "60")
    assert "29 February 1900" in error.reason


def test_a_plain_number_in_a_1904_workbooks_date_column_counts_days_from_1904(
    tmp_path: Path,
) -> None:
    # Excel for Mac saved workbooks counting days from 1 January 1904 (day 0),
    # and any workbook may still be set to: 42000 is then 28 December 2018,
    # not 27 December 2014.
    path = tmp_path / "book.xlsx"
    workbook = openpyxl.Workbook()
    workbook.epoch = CALENDAR_MAC_1904
    workbook.save(path)
    backend = XlsxBackend(path)
    app = {1: rec("Ann", start="2020-01-01"), 2: rec("Bob", start="2021-06-30")}
    tab = backend.read_tabs([MAPPING.tab])[MAPPING.tab]
    plan = plan_to_sheet(MAPPING, tab, app, {})
    backend.write({MAPPING.tab: plan.changes}, expected_version=backend.version())
    tab = backend.read_tabs([MAPPING.tab])[MAPPING.tab]
    assert tab is not None
    # The app's own dates read back as written: nothing to import.
    assert plan_from_sheet(MAPPING, tab, app, plan.snapshots).updates == {}
    start = HEADER.index("Start") + 1
    backend.write(
        {MAPPING.tab: TabChanges(cells={(3, start): 42000})},
        expected_version=tab.version,
    )

    tab = backend.read_tabs([MAPPING.tab])[MAPPING.tab]
    assert tab is not None
    frm = plan_from_sheet(MAPPING, tab, app, plan.snapshots)

    assert tab.date_system is DateSystem.EXCEL_1904
    assert frm.updates == {2: {"start": "2018-12-28"}}
    sheet = openpyxl.load_workbook(path)[MAPPING.tab]
    assert sheet.cell(2, start).value == datetime(2020, 1, 1)


def test_round_trip_through_a_workbook_with_sorting_and_edits(tmp_path: Path) -> None:
    backend = XlsxBackend(tmp_path / "book.xlsx")
    app = {1: rec("Ann"), 2: rec("Bob", note="=1+1"), 3: rec("Cy")}
    base: dict[int, Record] = {}
    plan = plan_to_sheet(MAPPING, None, app, base)
    backend.write({MAPPING.tab: plan.changes}, expected_version="")
    base.update(plan.snapshots)
    tab = backend.read_tabs([MAPPING.tab])[MAPPING.tab]
    assert tab is not None
    # a person sorts the rows descending, edits Bob, adds a row
    rows = [tab.rows[0], *reversed(tab.rows[1:])]
    rows[2][7] = "typed"
    rows.append([None, "Dee", "0042", 50, 44000, "active", "555 1234"])
    backend.write(
        {MAPPING.tab: TabChanges(cells=_as_cells(rows))}, expected_version=tab.version
    )
    tab = backend.read_tabs([MAPPING.tab])[MAPPING.tab]
    assert tab is not None
    frm = plan_from_sheet(MAPPING, tab, app, base)
    assert frm.updates == {2: {"note": "typed"}} and frm.conflicts == []
    assert frm.creates[0].values["start"] == "2020-06-18"
    assert frm.creates[0].values["policy_number"] == "0042"
    assert parse_value(MAPPING.columns[2], tab.rows[3][3]) == "100.00"


def _as_cells(rows: list[list[Cell]]) -> dict[tuple[int, int], Cell]:
    return {
        (r + 1, c + 1): value
        for r, row in enumerate(rows)
        for c, value in enumerate(row)
    }


# property: no edit is lost


PROPERTY_MAPPING = TabMapping(
    "T",
    "ID",
    (
        Column("Name", "name"),
        Column("Premium", "premium", ColumnType.MONEY),
        Column("Count", "count", ColumnType.INTEGER),
    ),
)
FIELDS = ("name", "premium", "count")

op = st.one_of(
    st.tuples(st.just("app"), st.integers(0, 5), st.sampled_from(FIELDS)),
    st.tuples(st.just("sheet"), st.integers(0, 5), st.sampled_from(FIELDS)),
    st.tuples(st.just("to"), st.just(0), st.just("")),
    st.tuples(st.just("from"), st.just(0), st.just("")),
    st.tuples(st.just("sort"), st.just(0), st.just("")),
    st.tuples(st.just("new_app"), st.just(0), st.just("")),
    st.tuples(st.just("new_sheet"), st.just(0), st.just("")),
)


class Model:
    """An app, a sheet tab and a base, synced with the engine."""

    def __init__(self) -> None:
        self.app: dict[int, Record] = {}
        self.rows: list[list[Cell]] = []
        self.base: dict[int, Record] = {}
        self.conflicts: set[tuple[int, str]] = set()
        self.latest: dict[tuple[int, str], str | int] = {}
        self.counter = 0
        self.next_id = 1

    def unique(self, name: str) -> str | int:
        self.counter += 1
        if name == "premium":
            return f"{self.counter}.25"
        if name == "count":
            return self.counter
        return f"v{self.counter}"

    def raw(self, name: str, value: str | int) -> Cell:
        if name == "premium":  # people type money in many shapes
            shapes: list[Cell] = [float(str(value)), f"${value}", Decimal(str(value))]
            return shapes[self.counter % 3]
        return value

    def new_app(self) -> None:
        record_id = self.next_id
        self.next_id += 1
        self.app[record_id] = {f: self.unique(f) for f in FIELDS}

    def new_sheet(self) -> None:
        if not self.rows:
            return
        values = {f: self.unique(f) for f in FIELDS}
        header = [parse_header(h) for h in self.rows[0]]
        row: list[Cell] = [None] * len(header)
        for name, value in values.items():
            row[header.index(name)] = self.raw(name, value)
        self.rows.append(row)

    def edit(self, side: str, pick: int, name: str) -> None:
        ids = sorted(self.app) if side == "app" else self.sheet_ids()
        if not ids:
            return
        record_id = ids[pick % len(ids)]
        value = self.unique(name)
        self.latest[(record_id, name)] = value
        if side == "app":
            self.app[record_id][name] = value
            return
        row, col = self.locate(record_id, name)
        self.rows[row][col] = self.raw(name, value)

    def sheet_ids(self) -> list[int]:
        return [int(str(r[0])) for r in self.rows[1:] if r and r[0] is not None]

    def locate(self, record_id: int, name: str) -> tuple[int, int]:
        header = [parse_header(h) for h in self.rows[0]]
        for index, row in enumerate(self.rows[1:], start=1):
            if row and row[0] == record_id:
                return index, header.index(name)
        raise AssertionError(record_id)

    def sheet_value(self, record_id: int, name: str) -> Canonical:
        row, col = self.locate(record_id, name)
        cells = self.rows[row]
        column = PROPERTY_MAPPING.columns[FIELDS.index(name)]
        return parse_value(column, cells[col] if col < len(cells) else None)

    def to_sheet(self) -> None:
        tab = TabData(self.rows, "v") if self.rows else None
        plan = plan_to_sheet(PROPERTY_MAPPING, tab, self.app, self.base)
        for (row, col), _ in plan.changes.cells.items():
            if row > 1:
                self.assert_overwrites_only_synced(row, col)
        self.rows = apply_changes(self.rows, plan.changes)
        self.record(plan.snapshots, plan.conflicts)

    def assert_overwrites_only_synced(self, row: int, col: int) -> None:
        record_id = int(str(self.rows[row - 1][0]))
        name = parse_header(self.rows[0][col - 1])
        current = self.sheet_value(record_id, name)
        assert current in (None, self.base.get(record_id, {}).get(name)), "lost edit"

    def from_sheet(self) -> None:
        tab = TabData(self.rows, "v") if self.rows else None
        plan = plan_from_sheet(PROPERTY_MAPPING, tab, self.app, self.base)
        for record_id, updates in plan.updates.items():
            for name in updates:
                current = self.app[record_id][name]
                assert current in (None, self.base[record_id].get(name)), "lost edit"
            self.app[record_id].update(updates)
        for new in plan.creates:
            record_id = self.next_id
            self.next_id += 1
            self.app[record_id] = dict(new.values)
            self.base[record_id] = dict(new.values)
            changes = TabChanges(cells={(new.row, plan.id_column): record_id})
            changes.cells.update(plan.id_cell_changes.cells)
            self.rows = apply_changes(self.rows, changes)
        self.record(plan.snapshots, plan.conflicts)

    def record(self, snapshots: dict[int, Record], conflicts: list[Conflict]) -> None:
        self.base.update(copy.deepcopy(snapshots))
        for conflict in conflicts:
            self.conflicts.add((conflict.record_id, conflict.field))

    def sort(self) -> None:
        self.rows[1:] = list(reversed(self.rows[1:]))


def parse_header(text: Cell) -> str:
    return str(text).lower()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(op, max_size=40))
def test_random_edits_on_both_sides_never_lose_an_edit(
    ops: list[tuple[str, int, str]],
) -> None:
    model = Model()
    for _ in range(3):
        model.new_app()
    model.to_sheet()
    for kind, pick, name in ops:
        if kind in ("app", "sheet"):
            model.edit(kind, pick, name)
        elif kind == "to":
            model.to_sheet()
        elif kind == "from":
            model.from_sheet()
        else:
            getattr(model, kind)()
    for _ in range(2):
        model.from_sheet()
        model.to_sheet()
    assert sorted(model.sheet_ids()) == sorted(model.app)  # nothing duplicated
    for record_id, record in model.app.items():
        for name in FIELDS:
            app_value, sheet_value = record[name], model.sheet_value(record_id, name)
            latest = model.latest.get((record_id, name))
            if latest is not None:
                assert latest in (app_value, sheet_value)
            if (record_id, name) not in model.conflicts:
                assert app_value == sheet_value


@pytest.mark.parametrize(
    ("column", "cell", "shown"),
    [
        ("Start", time(0, 0), "00:00:00"),
        ("Premium", datetime(1800, 1, 1, 9, 30), "1800-01-01 09:30:00"),
    ],
)
def test_a_bad_cell_is_quoted_as_the_sheet_shows_it_never_as_python(
    column: str, cell: Cell, shown: str
) -> None:
    app = {1: rec("Ann", start="2020-01-01")}
    row = row_of(1, app[1])
    row[HEADER.index(column)] = cell
    plan = plan_from_sheet(MAPPING, tab_of(row), app, app)
    (issue,) = [i for i in plan.issues if i.kind == "error"]
    assert (issue.column, issue.value) == (column, shown)


def warnings_of(plan: ToSheetPlan | FromSheetPlan) -> list[Any]:
    return [issue for issue in plan.issues if issue.kind == "warning"]


@pytest.mark.parametrize("plan", [plan_to_sheet, plan_from_sheet])
def test_only_a_column_without_header_that_holds_values_is_warned_about(
    plan: Any,
) -> None:
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced(app)
    tab.rows[0] += [None, None, None, "Helper"]  # J, K, L empty; M has a header
    tab.rows[2] += [None, "typed", None, "x"]  # a value in K

    warned = warnings_of(plan(MAPPING, tab, app, base))

    assert [(i.column, i.reason) for i in warned] == [
        ("K", "column K has no header; its values are not synced")
    ]


@pytest.mark.parametrize("plan", [plan_to_sheet, plan_from_sheet])
def test_a_column_whose_header_was_cleared_is_named_as_the_one_missing(
    plan: Any,
) -> None:
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced(app)
    tab.rows[0][HEADER.index("Agent")] = None  # lost to a merge, say

    warned = warnings_of(plan(MAPPING, tab, app, base))

    (told,) = [i for i in warned if i.column == "I"]
    assert told.reason == (
        "column I has no header; its values are not synced — if it is "
        "'Agent', whose header is missing, type that header in I1"
    )


def test_an_import_without_an_optional_column_says_its_values_were_not_imported() -> (
    None
):
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced(app)
    phone = HEADER.index("Phone")
    for row in tab.rows:
        del row[phone]

    plan = plan_from_sheet(MAPPING, tab, app, base)

    assert [(i.column, i.kind) for i in plan.issues] == [("Phone", "warning")]
    assert "'Phone' is missing" in plan.issues[0].reason
    assert "Sync to sheet" in plan.issues[0].reason
    assert plan.updates == {}


def test_values_right_of_the_last_header_are_warned_about_and_never_overwritten() -> (
    None
):
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced(app)
    phone = HEADER.index("Phone")
    for row in tab.rows:
        del row[phone]  # a column for to-sheet to add back
    tab.rows[2] += [None, None, "stray"]  # two columns right of the last header

    frm = plan_from_sheet(MAPPING, tab, app, base)
    to = plan_to_sheet(MAPPING, tab, app, base)

    stray = len(HEADER) - 1 + 2  # the index of "stray"
    letter = column_letter(stray + 1)
    for plan in (frm, to):
        warned = {i.column: i.reason for i in plan.issues if i.kind == "warning"}
        assert warned[letter] == (
            f"column {letter} has no header; its values are not synced — if it "
            f"is 'Phone', whose header is missing, type that header in {letter}1"
        )
    added = {col for (row, col), value in to.changes.cells.items() if row == 1}
    assert min(added) > stray + 1, "the Phone column goes right of the stray value"


def _stray(rows: list[list[Cell]], row: int, index: int, value: Cell) -> None:
    _put(rows, row, index + 1, value)


def test_empty_columns_left_of_one_added_right_of_stray_values_are_no_concern() -> None:
    app = {i: rec(f"R{i}") for i in range(1, 8)}
    tab, base = synced(app)
    note = HEADER.index("Note")
    for row in tab.rows:
        del row[note]  # A..H: the Note column is gone
    for row, letter, value in ((2, "K", "k"), (5, "M", "m5"), (7, "M", "m7")):
        _stray(tab.rows, row, ord(letter) - ord("A"), value)
    _stray(tab.rows, 3, 25, "z")  # Z3
    to = plan_to_sheet(MAPPING, tab, app, base)
    added = [col for (row, col), v in to.changes.cells.items() if row == 1]
    assert added == [27], "the Note column goes to AA, right of Z"
    after = TabData(apply_changes(tab.rows, to.changes), "v2")

    frm = plan_from_sheet(MAPPING, after, app, to.snapshots)

    warned = [i.column for i in frm.issues if i.kind == "warning"]
    assert warned == ["K", "M", "Z"]


@pytest.mark.parametrize("plan", [plan_to_sheet, plan_from_sheet])
def test_a_column_without_header_is_warned_about_at_its_first_cell_holding_a_value(
    plan: Any,
) -> None:
    app = {i: rec(f"R{i}") for i in range(1, 6)}
    tab, base = synced(app)
    width = len(HEADER)
    _stray(tab.rows, 4, width + 1, "first")
    _stray(tab.rows, 6, width + 1, "second")

    warned = warnings_of(plan(MAPPING, tab, app, base))

    letter = column_letter(width + 2)
    assert [(i.column, i.row, i.value) for i in warned] == [(letter, 4, "first")]


def test_an_empty_headerless_column_among_ours_is_told_only_while_one_is_missing() -> (
    None
):
    app = {1: rec("Ann")}
    tab, base = synced(app)
    for row in tab.rows:
        row.insert(2, None)  # an empty column C between Name and Policy Number

    calm = plan_from_sheet(MAPPING, tab, app, base)
    for row in tab.rows:
        del row[HEADER.index("Phone") + 1]  # now one of ours is missing
    told = plan_from_sheet(MAPPING, tab, app, base)

    assert [i.column for i in calm.issues if i.kind == "warning"] == []
    assert ("C", 1, None) in [
        (i.column, i.row, i.value) for i in told.issues if i.kind == "warning"
    ]


def merged(tab: TabData, ref: str) -> TabData:
    """``tab`` with the cells of ``ref`` merged, as a spreadsheet program
    leaves them: the top-left value kept, the others emptied."""
    first, last = ref.split(":")
    top, left = _row_col(first)
    bottom, right = _row_col(last)
    for row in range(top, bottom + 1):
        for col in range(left, right + 1):
            if (row, col) != (top, left) and row <= len(tab.rows):
                cells = tab.rows[row - 1]
                if col <= len(cells):
                    cells[col - 1] = None
    tab.merges.append(CellRange(top, left, bottom, right))
    return tab


def _row_col(ref: str) -> tuple[int, int]:
    letters = ref.rstrip("0123456789")
    col = 0
    for letter in letters:
        col = col * 26 + ord(letter) - ord("A") + 1
    return int(ref[len(letters) :]), col


def test_a_merge_over_synced_cells_is_an_error_and_never_imports_them_as_empty() -> (
    None
):
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced(app)
    tab.rows[2][HEADER.index("Name")] = "Bobby"  # an edit in the merged row
    merged(tab, "C3:D3")  # Policy Number and Premium of Bob's row

    plan = plan_from_sheet(MAPPING, tab, app, base)

    (error,) = [i for i in plan.issues if i.kind == "error"]
    assert (error.tab, error.row, error.column) == ("Policies", 3, "Premium")
    assert error.value is None, "a hidden cell shows nothing, not the merge's value"
    assert "cells C3:D3 are merged" in error.reason
    assert "unmerge them" in error.reason and "'Premium'" in error.reason
    assert plan.counts["errors"] == 1
    assert 2 not in plan.updates, "the merged row is not imported"
    # The hidden cells keep the value both sides last agreed on; that
    # merging emptied them is noted, so their emptiness is no edit.
    assert {k: v for k, v in plan.snapshots[2].items() if k in base[2]} == base[2]
    assert plan.snapshots[2] != base[2]
    assert plan.creates == [] and not any(
        i.kind == "deleted_in_sheet" for i in plan.issues
    )


@pytest.mark.parametrize("seen_by", [plan_from_sheet, plan_to_sheet])
def test_cells_a_merge_emptied_get_the_apps_values_back_once_unmerged(
    seen_by: Any,
) -> None:
    app = {1: rec("Ann", note="call back"), 2: rec("Bob", note="paid")}
    tab, base = synced(app)
    merged(tab, "G3:H3")  # Phone and Note of Bob's row: Note emptied
    while_merged = seen_by(MAPPING, tab, app, base)
    base = {**base, **while_merged.snapshots}
    tab.merges.clear()  # unmerged: the Note cell stays empty

    imported = plan_from_sheet(MAPPING, tab, app, base)
    written = plan_to_sheet(MAPPING, tab, app, base)

    assert imported.updates == {}, "the emptied cell is no edit to import"
    assert imported.counts["pending_export"] == 1
    note = (3, HEADER.index("Note") + 1)
    assert written.changes.cells == {note: "paid"}


def unmerged_after_a_sync(
    seen_by: Any, app: dict[int, Record], ref: str
) -> tuple[TabData, dict[int, Record]]:
    """A tab synced with ``app``, then merged over ``ref`` and seen by one
    sync (``seen_by``) while merged, then unmerged: the hidden cells stay
    empty. Returns the tab and the base the next sync starts from."""
    tab, base = synced(app)
    merged(tab, ref)
    base = {**base, **seen_by(MAPPING, tab, app, base).snapshots}
    tab.merges.clear()
    return tab, base


@pytest.mark.parametrize("seen_by", [plan_from_sheet, plan_to_sheet])
def test_a_value_typed_into_a_cell_a_merge_emptied_is_an_edit_not_a_conflict(
    seen_by: Any,
) -> None:
    app = {1: rec("Ann"), 2: rec("Bob", note="paid")}
    tab, base = unmerged_after_a_sync(seen_by, app, "G3:H3")
    tab.rows[2][HEADER.index("Note")] = "paid twice"  # typed once unmerged

    imported = plan_from_sheet(MAPPING, tab, app, base)
    written = plan_to_sheet(MAPPING, tab, app, base)

    assert imported.conflicts == [] and written.conflicts == []
    assert imported.updates == {2: {"note": "paid twice"}}
    assert written.edits == {2: {"note": "paid twice"}}
    assert written.changes.is_empty(), "the sheet's edit is not overwritten"


@pytest.mark.parametrize("seen_by", [plan_from_sheet, plan_to_sheet])
def test_an_app_edit_made_while_cells_were_merged_goes_into_them_once_unmerged(
    seen_by: Any,
) -> None:
    app = {1: rec("Ann"), 2: rec("Bob", note="paid")}
    tab, base = unmerged_after_a_sync(seen_by, app, "G3:H3")
    app[2] = {**app[2], "note": "refunded"}  # edited in the app meanwhile

    imported = plan_from_sheet(MAPPING, tab, app, base)
    written = plan_to_sheet(MAPPING, tab, app, base)

    assert imported.updates == {} and imported.conflicts == []
    assert imported.counts["pending_export"] == 1
    assert written.changes.cells == {(3, HEADER.index("Note") + 1): "refunded"}


def test_edits_on_both_sides_of_a_cell_a_merge_emptied_are_a_conflict() -> None:
    app = {1: rec("Ann"), 2: rec("Bob", note="paid")}
    tab, base = unmerged_after_a_sync(plan_to_sheet, app, "G3:H3")
    app[2] = {**app[2], "note": "refunded"}
    tab.rows[2][HEADER.index("Note")] = "paid twice"

    plan = plan_from_sheet(MAPPING, tab, app, base)

    (conflict,) = plan.conflicts
    assert (conflict.app, conflict.sheet) == ("refunded", "paid twice")
    assert conflict.base == "paid", "the base is the value both last had"


def test_once_its_value_is_back_a_cell_a_merge_emptied_is_cleared_as_any_other() -> (
    None
):
    app = {1: rec("Ann"), 2: rec("Bob", note="paid")}
    tab, base = unmerged_after_a_sync(plan_from_sheet, app, "G3:H3")
    written = plan_to_sheet(MAPPING, tab, app, base)
    base = {**base, **written.snapshots}
    tab = TabData(apply_changes(tab.rows, written.changes), "v2")
    assert tab.rows[2][HEADER.index("Note")] == "paid"
    tab.rows[2][HEADER.index("Note")] = None  # a person clears it, on purpose

    plan = plan_from_sheet(MAPPING, tab, app, base)

    assert plan.updates == {2: {"note": None}}


def test_a_merge_of_an_unsynced_column_into_its_neighbour_is_no_concern() -> None:
    app = {1: rec("Ann")}
    tab, base = synced(app)
    tab.rows[0].append(None)
    merged(tab, "I2:J2")  # Agent, and the column right of it without a header

    plan = plan_from_sheet(MAPPING, tab, app, base)

    assert plan.issues == []


def test_to_sheet_never_writes_into_the_hidden_part_of_a_merge() -> None:
    app = {1: rec("Ann"), 2: rec("Bob", note=None)}
    tab, base = synced(app)
    merged(tab, "G3:H3")  # Phone and Note of Bob's row
    app[2] = rec("Robert", premium="200.00", note="new note")

    plan = plan_to_sheet(MAPPING, tab, app, base)

    written = {col for (row, col) in plan.changes.cells if row == 3}
    assert written == {2, 4}, "Name and Premium written, Note's hidden cell not"
    (error,) = [i for i in plan.issues if i.kind == "error"]
    assert (error.row, error.column) == (3, "Note")
    assert "cells G3:H3 are merged" in error.reason
    assert plan.snapshots[2]["note"] is None, "Note keeps its last synced value"
    assert plan.edits == {}, "the emptied cell is no sheet edit"


def cleared_id(tab: TabData, row: int) -> TabData:
    tab.rows[row - 1][HEADER.index("ID")] = None
    return tab


def test_a_row_whose_id_was_cleared_is_its_records_again_never_a_second() -> None:
    app = {1: rec("Ann"), 2: rec("Bob", note="paid"), 3: rec("Cy")}
    tab, base = synced(app)
    cleared_id(tab, 3)  # Bob's row, otherwise as synced

    frm = plan_from_sheet(MAPPING, tab, app, base)
    to = plan_to_sheet(MAPPING, tab, app, base)

    assert frm.creates == [] and frm.updates == {}
    assert frm.id_cell_changes.cells == {(3, 1): 2}, "its ID goes back in"
    assert to.changes.cells == {(3, 1): 2} and to.changes.append == []
    for plan in (frm, to):
        assert plan.rows[2] == 3
        assert not any(i.kind == "deleted_in_sheet" for i in plan.issues)
        (told,) = [i for i in plan.issues if i.kind == "warning"]
        assert (told.row, told.column) == (3, "ID")
        assert "row 3 had no ID" in told.reason and "record 2" in told.reason


def test_an_edit_in_a_row_whose_id_was_cleared_is_imported_into_its_record() -> None:
    app = {1: rec("Ann"), 2: rec("Bob", note="paid")}
    tab, base = synced(app)
    cleared_id(tab, 3)
    tab.rows[2][HEADER.index("Note")] = "paid twice"

    frm = plan_from_sheet(MAPPING, tab, app, base)

    assert frm.creates == []
    assert frm.updates == {2: {"note": "paid twice"}}
    assert frm.id_cell_changes.cells == {(3, 1): 2}


def test_two_rows_alike_without_ids_get_back_the_two_records_alike() -> None:
    app = {1: rec("Ann"), 2: rec("Bob"), 3: rec("Bob")}
    tab, base = synced(app)
    cleared_id(tab, 3)
    cleared_id(tab, 4)  # which is whose cannot matter: they hold the same

    frm = plan_from_sheet(MAPPING, tab, app, base)

    assert frm.creates == []
    assert sorted(frm.id_cell_changes.cells.values()) == [2, 3]


def test_a_row_two_records_without_rows_fit_equally_is_not_guessed() -> None:
    app = {
        1: rec("Ann"),
        2: rec("Bob", note="a"),
        3: rec("Bob", policy_number="00456", note="b"),
    }
    tab, base = synced(app)
    del tab.rows[3]  # the second Bob's row is gone
    cleared_id(tab, 3)
    tab.rows[2][HEADER.index("Note")] = "b"  # one value off each Bob now

    frm = plan_from_sheet(MAPPING, tab, app, base)

    assert len(frm.creates) == 1 and frm.id_cell_changes.is_empty()


def test_a_new_row_like_no_record_without_a_row_is_created() -> None:
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced(app)
    cleared_id(tab, 3)
    tab.rows[2][HEADER.index("Name")] = "Dee"
    tab.rows[2][HEADER.index("Policy Number")] = "00999"
    tab.rows[2][HEADER.index("Phone")] = "+15550000"

    frm = plan_from_sheet(MAPPING, tab, app, base)

    assert [new.values["name"] for new in frm.creates] == ["Dee"]


def test_an_id_a_merge_hid_is_written_back_once_unmerged_not_a_new_record() -> None:
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced(app)
    merged(tab, "A2:A3")
    base = {**base, **plan_from_sheet(MAPPING, tab, app, base).snapshots}
    tab.merges.clear()  # unmerged: Bob's ID cell stays empty

    frm = plan_from_sheet(MAPPING, tab, app, base)

    assert frm.creates == [] and frm.id_cell_changes.cells == {(3, 1): 2}


def test_a_merge_over_a_rows_id_never_makes_it_a_new_row() -> None:
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced(app)
    merged(tab, "A2:A3")

    frm = plan_from_sheet(MAPPING, tab, app, base)
    to = plan_to_sheet(MAPPING, tab, app, base)

    assert frm.creates == [] and to.new_rows == [] and to.changes.append == []
    for plan in (frm, to):
        (error,) = [i for i in plan.issues if i.kind == "error"]
        assert (error.row, error.column) == (3, "ID")
        assert "cells A2:A3 are merged" in error.reason


def test_a_row_with_merged_cells_is_never_deleted_by_to_sheet() -> None:
    app = {1: rec("Ann"), 2: rec("Bob", note=None)}
    tab, base = synced(app)
    merged(tab, "G3:H3")
    del app[2]

    plan = plan_to_sheet(MAPPING, tab, app, base, delete_mode="delete")

    assert plan.changes.delete_rows == []
    (kept,) = [i for i in plan.issues if i.kind == "deleted_in_app"]
    assert "merged" in kept.reason and "edited" not in kept.reason


def test_a_merge_below_the_data_is_no_concern_of_an_import() -> None:
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced(app)
    merged(tab, "B5:D9")  # a box below the table, over Name to Premium

    plan = plan_from_sheet(MAPPING, tab, app, base)

    assert plan.issues == [] and plan.counts["errors"] == 0


def test_a_merge_down_a_whole_column_tells_only_the_rows_that_hold_data() -> None:
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced(app)
    merged(tab, "G3:H1048576")  # Phone and Note, from Bob's row to the end

    plan = plan_from_sheet(MAPPING, tab, app, base)

    (error,) = plan.issues
    assert (error.row, error.column) == (3, "Note") and "in row 3:" in error.reason


def test_to_sheet_adds_no_rows_into_a_merge_below_the_data() -> None:
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced(app)
    merged(tab, "B4:C6")  # a box right below the table, over Name and Policy
    app[3] = rec("Cy")
    app[1] = rec("Ann", note="call back")

    plan = plan_to_sheet(MAPPING, tab, app, base)

    assert plan.changes.append == [] and 3 not in plan.snapshots
    assert plan.changes.cells == {(2, 8): "call back"}, "other changes still go"
    (error,) = plan.issues
    assert error.kind == "error" and error.row == 4 and error.value == "3"
    assert "cells B4:C6 are merged right below the table, where new rows go" in (
        error.reason
    )
    assert "record 3 is added once you unmerge them" in error.reason
    assert plan.counts["appended"] == 0 and plan.counts["errors"] == 1


def test_a_new_record_with_no_row_left_below_the_table_waits_as_an_error() -> None:
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced({1: app[1]})
    # Ann's row is the tab's very last one.
    empty: list[Cell] = []
    tab.rows[1:] = [empty] * (MAX_SHEET_ROWS - 2) + [row_of(1, app[1])]
    app[1] = rec("Ann", note="call back")

    plan = plan_to_sheet(MAPPING, tab, app, base)

    assert plan.changes.append == [] and 2 not in plan.snapshots
    note = (MAX_SHEET_ROWS, HEADER.index("Note") + 1)
    assert plan.changes.cells == {note: "call back"}, "other changes still go"
    (error,) = plan.issues
    assert (error.kind, error.row, error.value) == ("error", MAX_SHEET_ROWS + 1, "2")
    assert "no row left below its last one" in error.reason
    assert plan.counts["appended"] == 0 and plan.counts["errors"] == 1


def test_to_sheet_adds_rows_above_a_merge_further_down() -> None:
    app = {1: rec("Ann"), 2: rec("Bob")}
    tab, base = synced(app)
    merged(tab, "B6:C8")  # two empty rows between the table and the box
    app[3], app[4] = rec("Cy"), rec("Di")

    plan = plan_to_sheet(MAPPING, tab, app, base)

    assert [row[0] for row in plan.changes.append] == [3, 4] and plan.issues == []


def test_merged_header_cells_are_an_error_and_added_columns_go_right_of_them() -> None:
    app = {1: rec("Ann")}
    tab, base = synced(app)
    for row in tab.rows:
        del row[HEADER.index("Note")]
    merged(tab, "H1:K1")  # Agent's header, over three empty columns

    plan = plan_to_sheet(MAPPING, tab, app, base)

    (error,) = [i for i in plan.issues if i.kind == "error"]
    assert (error.row, error.column) == (1, "H")
    assert "cells H1:K1 are merged" in error.reason
    added = [col for (row, col) in plan.changes.cells if row == 1]
    assert added == [12], "Note goes to L, right of the merge"
