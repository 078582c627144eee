"""Corpus cases C01-C12 (``../shared/corpus/sheet-cases.md``) through the Google
backend on the emulator."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal

import httpx
import pytest

from sheetbridge.sheets.base import Cell, CellRange, TabChanges, TabData
from sheetbridge.sheets.errors import (
    SheetError,
    SheetInvalidRequest,
    SheetNotFound,
    SheetRateLimited,
)
from sheetbridge.sheets.quota import InProcessQuotaLimiter, QuotaLimits
from sheetbridge.sync.columns import Column, ColumnType
from sheetbridge.sync.engine import TabMapping, plan_from_sheet
from sheetbridge.testing.cells import Rich
from sheetbridge.testing.emulator import EmulatorServer
from sheetbridge.testing.harness import GoogleHarness
from tests.support.server import free_port
from tests.support.sheets import write_until_done

PEOPLE = TabMapping(
    tab="People",
    id_header="ID",
    columns=(
        Column("Name", "name"),
        Column("ZIP", "zip_code"),
        Column("Born", "born", ColumnType.DATE),
    ),
)


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(port=free_port()) as server:
        yield server


@pytest.fixture
def harness(emulator: EmulatorServer) -> GoogleHarness:
    return GoogleHarness(emulator)


def tab(data: dict[str, TabData | None], name: str) -> TabData:
    found = data[name]
    assert found is not None
    return found


def _formatted(harness: GoogleHarness, book: str, tab: str) -> list[list[str]]:
    """The tab as a person sees it (FORMATTED_VALUE)."""
    answer = httpx.get(
        f"{harness.server.base_url}/v4/spreadsheets/{book}/values/{tab}",
        params={"valueRenderOption": "FORMATTED_VALUE"},
    )
    return answer.json()["values"]  # type: ignore[no-any-return]


def test_dates_in_rows_a_sync_appends_show_as_dates_in_the_same_write(
    harness: GoogleHarness,
) -> None:
    book = harness.spreadsheet()
    backend = harness.backend(book)
    header = TabChanges(cells={(1, 1): "ID", (1, 2): "Born", (1, 3): "Seen"})
    backend.write({"People": header})
    seen = datetime(2020, 1, 1, 18, 0, tzinfo=UTC)
    rows: list[list[Cell]] = [[1, date(2020, 1, 1), seen], [2, date(2021, 2, 3), None]]
    writes = harness.state.calls(contains=":batchUpdate")

    backend.write({"People": TabChanges(append=rows, delete_rows=[])})
    backend.write({"People": TabChanges(append=[[3, "not a date", None]])})

    shown = _formatted(harness, book.spreadsheet_id, "People")
    assert shown[1:] == [
        ["1", "1/1/2020", "1/1/2020 18:00:00"],
        ["2", "2/3/2021"],
        ["3", "not a date"],
    ]
    # The formats went with the values: one structural call, none for text.
    assert harness.state.calls(contains=":batchUpdate") - writes == 2 + 1


def test_amounts_in_rows_a_sync_appends_show_two_decimal_places(
    harness: GoogleHarness,
) -> None:
    book = harness.spreadsheet()
    backend = harness.backend(book)
    backend.write({"Policies": TabChanges(cells={(1, 1): "ID", (1, 2): "Premium"})})
    rows: list[list[Cell]] = [[1, Decimal("1234.5")], [2, Decimal("12")], [3, None]]

    backend.write({"Policies": TabChanges(append=rows)})

    shown = _formatted(harness, book.spreadsheet_id, "Policies")
    assert shown[1:] == [["1", "1,234.50"], ["2", "12.00"], ["3"]]
    # What the app reads back is the number itself.
    assert [
        row[1] for row in tab(backend.read_tabs(["Policies"]), "Policies").rows[1:3]
    ] == [
        1234.5,
        12,
    ]


def test_a_date_or_amount_written_into_a_cell_without_a_number_shows_as_one(
    harness: GoogleHarness,
) -> None:
    book = harness.spreadsheet()
    backend = harness.backend(book)
    header = {(1, 1): "ID", (1, 2): "Born", (1, 3): "Premium"}
    backend.write({"T": TabChanges(cells=header)})
    # Row 2 was filled in with the date and amount blank; row 3 holds text
    # a person typed.
    backend.write({"T": TabChanges(append=[[1, None, None], [2, "soon", "n/a"]])})
    version = tab(backend.read_tabs(["T"]), "T").version

    backend.write(
        {
            "T": TabChanges(
                cells={
                    (2, 2): date(2020, 1, 1),
                    (2, 3): Decimal("99.5"),
                    (3, 2): date(2021, 2, 3),
                    (3, 3): Decimal("7"),
                }
            )
        },
        expected_version=version,
    )

    shown = _formatted(harness, book.spreadsheet_id, "T")
    assert shown[1:] == [["1", "1/1/2020", "99.50"], ["2", "2/3/2021", "7.00"]]


def test_a_date_or_amount_written_over_a_number_keeps_the_cells_own_format(
    harness: GoogleHarness,
) -> None:
    book = harness.spreadsheet()
    backend = harness.backend(book)
    backend.write({"T": TabChanges(cells={(1, 1): "Born", (1, 2): "Premium"})})
    # A person's own formats: a day-first date and dollars.
    backend.client.batch_update_values(
        book.spreadsheet_id,
        [{"range": "'T'!A2:B2", "values": [["2020-01-01", "$5.00"]]}],
        value_input="USER_ENTERED",
    )
    book.sheet_by_title("T").rows[1][0] = Rich(  # type: ignore[union-attr]
        43831, kind="DATE", pattern="dd/mm/yyyy"
    )
    calls = harness.state.calls(contains=":batchUpdate")

    backend.write(
        {"T": TabChanges(cells={(2, 1): date(2021, 2, 3), (2, 2): Decimal("6")})}
    )

    shown = _formatted(harness, book.spreadsheet_id, "T")
    assert shown[1] == ["03/02/2021", "$6.00"]
    # Nothing to format: the values' write alone.
    assert harness.state.calls(contains=":batchUpdate") - calls == 1


def test_c01_date_serial_reads_as_date_and_dates_are_written_as_serials(
    harness: GoogleHarness,
) -> None:
    book = harness.spreadsheet()
    backend = harness.backend(book)
    backend.write(
        {
            "People": TabChanges(
                cells={(1, 1): "ID", (1, 2): "Name", (1, 3): "ZIP", (1, 4): "Born"}
            )
        }
    )
    # a person types a date in the sheet UI
    backend.client.batch_update_values(
        book.spreadsheet_id,
        [
            {"range": "'People'!B2:D2", "values": [["Ann", "04001", "2020-01-01"]]},
            # a date and time of day, as NOW() fills one in
            {"range": "'People'!B3:D3", "values": [["Bo", "04002", 43831.75]]},
        ],
        value_input="USER_ENTERED",
    )
    rows = tab(backend.read_tabs(["People"]), "People")
    assert rows.rows[1][3] == 43831 and rows.rows[2][3] == 43831.75
    plan = plan_from_sheet(PEOPLE, rows, {}, {})
    assert [new.values["born"] for new in plan.creates] == ["2020-01-01"] * 2
    backend.write({"People": TabChanges(cells={(2, 4): date(2021, 2, 3)})})
    stored = book.sheet_by_title("People").cell(2, 4)  # type: ignore[union-attr]
    # A serial number, not a locale string, in the cell's own date format.
    assert stored == Rich(44230, kind="DATE", pattern="yyyy-mm-dd")


@pytest.mark.parametrize("text", ["04001", "+15551234", "+Dri7abc"])
def test_c02_c03_codes_and_phones_stay_literal_text(
    harness: GoogleHarness, text: str
) -> None:
    book = harness.spreadsheet()
    backend = harness.backend(book)
    backend.write({"T": TabChanges(cells={(1, 1): text})})
    assert tab(backend.read_tabs(["T"]), "T").rows == [[text]]
    shown = backend.client.batch_get(
        book.spreadsheet_id, ["'T'!A1"], value_render="FORMATTED_VALUE"
    )
    assert shown[0]["values"] == [[text]]  # no #ERROR!, no 4001


@pytest.mark.parametrize("text", ['=HYPERLINK("http://x","prize")', "@SUM(A1)", "-1+1"])
def test_c04_formula_like_notes_are_stored_as_text_never_evaluated(
    harness: GoogleHarness, text: str
) -> None:
    book = harness.spreadsheet()
    backend = harness.backend(book)
    backend.write({"T": TabChanges(cells={(1, 1): text})})
    cell = book.sheet_by_title("T").cell(1, 1)  # type: ignore[union-attr]
    assert cell == text and not isinstance(cell, Rich)
    formula_view = backend.client.batch_get(
        book.spreadsheet_id, ["'T'!A1"], value_render="FORMATTED_VALUE"
    )
    assert formula_view[0]["values"] == [[text]]


def test_emulator_evaluates_the_same_text_when_user_entered() -> None:
    # the contrast that makes C04 meaningful: USER_ENTERED would run formulas
    from sheetbridge.testing.model import new_spreadsheet

    book = new_spreadsheet("x", {})
    book.update_values(
        "A1",
        [['=HYPERLINK("http://x","prize")', "-1+1"]],
        user_entered=True,
        major="ROWS",
    )
    shown = book.get_values("A1:B1")
    assert shown["values"] == [["prize", "0"]]


def test_a_cell_showing_a_formula_error_is_an_error_of_its_row_never_a_value(
    harness: GoogleHarness,
) -> None:
    book = harness.spreadsheet()
    backend = harness.backend(book)
    header = {(1, 1): "ID", (1, 2): "Name", (1, 3): "ZIP"}
    backend.write({"People": TabChanges(cells={**header, (2, 2): "Ann"})})
    book.update_values(
        "'People'!C2:C3", [["=1/0"], ["#N/A"]], user_entered=True, major="ROWS"
    )
    book.update_values("'People'!B3", [["Bo"]], user_entered=True, major="ROWS")

    rows = tab(backend.read_tabs(["People"]), "People")
    plan = plan_from_sheet(PEOPLE, rows, {}, {})

    assert rows.rows[1:] == [[None, "Ann", "#DIV/0!"], [None, "Bo", "#N/A"]]
    errors = [i for i in plan.issues if i.kind == "error"]
    assert [(i.row, i.column) for i in errors] == [(2, "ZIP"), (3, "ZIP")]
    assert all("spreadsheet error" in i.reason for i in errors)
    assert not plan.creates


def test_c05_quota_exhaustion_waits_and_retries_without_losing_rows(
    harness: GoogleHarness,
) -> None:
    # 60 writes/min per user, scaled down to 10 per second to keep the test fast
    harness.state.knobs.write_quota_per_user = 10
    harness.state.knobs.quota_window_s = 1.0
    retries: list[SheetError] = []
    backend = harness.backend(
        on_retry=lambda attempt, delay_s, error: retries.append(error),
        max_retries=6,
    )
    # A read refused is tried again in the client; a write cut short goes
    # back to the sync, to be planned again.
    cut = sum(
        write_until_done(backend, {"T": TabChanges(append=[[n, f"row {n}"]])})
        for n in range(13)
    )
    assert cut > 0 or any(isinstance(error, SheetRateLimited) for error in retries)
    rows = tab(backend.read_tabs(["T"]), "T").rows
    assert rows == [[n, f"row {n}"] for n in range(13)]  # none lost or doubled


def test_c05_limiter_turns_the_burst_into_waiting_for_quota(
    harness: GoogleHarness,
) -> None:
    harness.state.knobs.write_quota_per_user = 10
    harness.state.knobs.quota_window_s = 1.0
    statuses: list[str] = []
    # One fewer than the emulator's 10: in a 1 s window, a request the
    # limiter sent in time can reach a busy emulator in the next window
    # (Google's window is a minute, where that delay is lost).
    limiter = InProcessQuotaLimiter(
        QuotaLimits(
            reads_per_minute_project=None,
            writes_per_minute_project=None,
            reads_per_minute_user=None,
            writes_per_minute_user=9,
            window_s=1.0,
        )
    )
    backend = harness.backend(
        limiter=limiter,
        on_wait=lambda wait_s: statuses.append(f"waiting for quota ({wait_s:.1f} s)"),
    )
    started = time.monotonic()
    for n in range(13):
        backend.write({"T": TabChanges(append=[[n]])})
    assert statuses and statuses[0].startswith("waiting for quota")
    assert not [entry for entry in harness.state.log if entry.status == 429]
    assert time.monotonic() - started < 10
    assert tab(backend.read_tabs(["T"]), "T").rows == [[n] for n in range(13)]


def test_c06_trailing_empty_cell_omitted_reads_as_short_row(
    harness: GoogleHarness,
) -> None:
    backend = harness.backend()
    backend.write(
        {
            "People": TabChanges(
                cells={
                    (1, 1): "ID",
                    (1, 2): "Name",
                    (1, 3): "ZIP",
                    (2, 2): "a",
                    (2, 3): None,
                }
            )
        }
    )
    rows = tab(backend.read_tabs(["People"]), "People")
    assert rows.rows == [["ID", "Name", "ZIP"], [None, "a"]]
    plan = plan_from_sheet(PEOPLE, rows, {}, {})
    assert plan.creates[0].values["zip_code"] in ("", None)


def test_c07_header_only_tab_has_no_rows_and_import_changes_nothing(
    harness: GoogleHarness,
) -> None:
    book = harness.spreadsheet()
    backend = harness.backend(book)
    backend.write({"People": TabChanges(cells={(1, 1): "ID", (1, 2): "Name"})})
    answer = backend.client.batch_get(book.spreadsheet_id, ["'People'!A2:Z"])
    assert "values" not in answer[0]
    rows = tab(backend.read_tabs(["People"]), "People")
    plan = plan_from_sheet(PEOPLE, rows, {}, {})
    assert not plan.updates and not plan.creates


def test_c08_duplicate_and_blank_headers_are_named_with_column_letters(
    harness: GoogleHarness,
) -> None:
    backend = harness.backend()
    header: list[Cell] = ["ID", None, None, "Name", "Name"]
    cells = {(1, col): value for col, value in enumerate(header, 1)}
    cells.update({(2, 4): "x", (2, 5): "y"})
    backend.write({"People": TabChanges(cells=cells)})
    plan = plan_from_sheet(PEOPLE, tab(backend.read_tabs(["People"]), "People"), {}, {})
    reasons = " | ".join(issue.reason for issue in plan.issues)
    assert "D and E" in reasons and "column B has no header" in reasons
    assert all(
        "name" not in row.values or not row.values["name"] for row in plan.creates
    )


def test_c09_deleted_tab_reads_missing_and_a_racing_read_names_it(
    harness: GoogleHarness,
) -> None:
    book = harness.spreadsheet("Agency book")
    backend = harness.backend(book)
    backend.write({"Policies": TabChanges(cells={(1, 1): "ID"})})
    sheet_id = book.sheet_by_title("Policies").sheet_id  # type: ignore[union-attr]
    backend.client.batch_update(
        book.spreadsheet_id, [{"deleteSheet": {"sheetId": sheet_id}}]
    )
    assert backend.read_tabs(["Policies"]) == {"Policies": None}
    with pytest.raises(SheetNotFound) as info:
        backend.client.batch_get(book.spreadsheet_id, ["'Policies'"])
    assert info.value.tab == "Policies" and book.spreadsheet_id in str(info.value)
    backend.write({"Policies": TabChanges(cells={(1, 1): "ID"})})  # recreated
    assert tab(backend.read_tabs(["Policies"]), "Policies").rows == [["ID"]]


def test_c10_awkward_titles_are_quoted_and_echoed_ranges_parse(
    harness: GoogleHarness,
) -> None:
    book = harness.spreadsheet()
    backend = harness.backend(book)
    titles = ["Jon's Data", "CRM26", "Q1 2025"]
    backend.write({t: TabChanges(cells={(1, 1): t}) for t in titles})
    data = backend.read_tabs(titles)
    assert {t: tab(data, t).rows for t in titles} == {t: [[t]] for t in titles}
    echoed = backend.client.batch_get(book.spreadsheet_id, ["'Jon''s Data'"])
    assert echoed[0]["range"] == "'Jon''s Data'!A1:Z1000"
    assert harness.state.calls(contains="values:batchGet") >= 2


def test_c11_unavailable_on_a_large_read_is_retried_and_counted(
    harness: GoogleHarness,
) -> None:
    retries: list[int] = []
    backend = harness.backend(
        on_retry=lambda attempt, delay_s, error: retries.append(attempt)
    )
    rows: list[list[Cell]] = [[n, f"p{n}"] for n in range(4000)]
    backend.write({"T": TabChanges(cells={(1, 1): "ID"}, append=rows)})
    harness.state.inject(503, path_contains="values:batchGet")
    data = tab(backend.read_tabs(["T"]), "T")
    assert len(data.rows) == 4001
    assert retries == [1]


def test_c12_oversized_note_is_rejected_before_any_call(harness: GoogleHarness) -> None:
    backend = harness.backend()
    before = len(harness.state.log)
    with pytest.raises(SheetInvalidRequest, match="row 2, column C") as info:
        backend.write({"T": TabChanges(cells={(2, 3): "x" * 50_001})})
    assert info.value.tab == "T"
    assert len(harness.state.log) == before


def test_c12_rows_past_the_grid_are_added_before_writing(
    harness: GoogleHarness,
) -> None:
    book = harness.spreadsheet()
    backend = harness.backend(book)
    backend.client.batch_update(
        book.spreadsheet_id,
        [
            {
                "addSheet": {
                    "properties": {
                        "title": "Small",
                        "gridProperties": {"rowCount": 5, "columnCount": 2},
                    }
                }
            }
        ],
    )
    harness.state.log.clear()
    backend.write({"Small": TabChanges(append=[[n, n, n] for n in range(8)])})
    posts = [entry.path for entry in harness.state.log if entry.method == "POST"]
    assert posts[0].endswith(":batchUpdate") and "/values" not in posts[0]
    assert posts[1].endswith("values:batchUpdate")
    small = book.sheet_by_title("Small")
    assert small is not None and small.row_count == 8 and small.col_count == 3
    assert len(tab(backend.read_tabs(["Small"]), "Small").rows) == 8


def test_merged_cells_are_read_and_reported_never_imported_as_empty(
    harness: GoogleHarness,
) -> None:
    book = harness.spreadsheet()
    backend = harness.backend(book)
    header: list[Cell] = ["ID", "Name", "ZIP", "Born"]
    cells = {(1, col): value for col, value in enumerate(header, 1)}
    cells.update({(2, 1): 1, (2, 2): "Ann", (2, 3): "04001"})
    backend.write({"People": TabChanges(cells=cells)})
    people = book.sheet_by_title("People")
    assert people is not None
    grid = {"startRowIndex": 1, "endRowIndex": 2}
    grid.update({"startColumnIndex": 1, "endColumnIndex": 3})
    backend.client.batch_update(
        book.spreadsheet_id,
        [
            {
                "mergeCells": {
                    "range": {"sheetId": people.sheet_id, **grid},
                    "mergeType": "MERGE_ALL",
                }
            }
        ],
    )

    read = tab(backend.read_tabs(["People"]), "People")

    assert read.merges == [CellRange(2, 2, 2, 3)]
    assert read.rows[1] == [1, "Ann"], "merging keeps only the top-left value"
    app = {1: {"name": "Ann", "zip_code": "04001", "born": None}}
    plan = plan_from_sheet(PEOPLE, read, app, app)
    (error,) = [i for i in plan.issues if i.kind == "error"]
    assert "cells B2:C2 are merged" in error.reason
    assert plan.updates == {}


def test_merged_cells_unmerged_again_are_read_as_cells_once_more(
    harness: GoogleHarness,
) -> None:
    book = harness.spreadsheet()
    backend = harness.backend(book)
    header: list[Cell] = ["ID", "Name", "ZIP"]
    cells = {(1, col): value for col, value in enumerate(header, 1)}
    cells.update({(2, 1): 1, (2, 2): "Ann", (2, 3): "04001"})
    backend.write({"People": TabChanges(cells=cells)})
    people = book.sheet_by_title("People")
    assert people is not None
    span = {"sheetId": people.sheet_id, "startRowIndex": 1, "endRowIndex": 2}
    merge = {
        "mergeCells": {"range": {**span, "startColumnIndex": 1, "endColumnIndex": 3}}
    }
    merge_all = {
        "mergeCells": {"range": {**span, "startColumnIndex": 0, "endColumnIndex": 3}}
    }
    part = {
        "unmergeCells": {"range": {**span, "startColumnIndex": 2, "endColumnIndex": 3}}
    }
    whole = {
        "unmergeCells": {"range": {**span, "startColumnIndex": 0, "endColumnIndex": 3}}
    }
    client = backend.client
    client.batch_update(book.spreadsheet_id, [merge])
    client.batch_update(book.spreadsheet_id, [merge_all])  # covers the first whole

    with pytest.raises(SheetInvalidRequest, match="all cells in a merged range"):
        client.batch_update(book.spreadsheet_id, [part])
    merged = tab(backend.read_tabs(["People"]), "People").merges
    client.batch_update(book.spreadsheet_id, [whole])

    assert merged == [CellRange(2, 1, 2, 3)]
    assert tab(backend.read_tabs(["People"]), "People").merges == []
