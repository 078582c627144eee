from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
import openpyxl.chart
import openpyxl.drawing.image
import pytest
import xlsxwriter

from sheetbridge.sheets.base import (
    XLSX_CELL_LIMIT,
    XLSX_TEXT_LIMIT,
    Cell,
    CellRange,
    ClippedText,
    DateSystem,
    ErrorValue,
    TabChanges,
    TabData,
    UncomputedFormula,
    cell_length,
)
from sheetbridge.sheets.errors import (
    SheetChanged,
    SheetError,
    SheetInvalidRequest,
    SheetLocked,
    SheetNotFound,
    SheetPermissionDenied,
    SheetTransientError,
)
from sheetbridge.sheets.xlsx import XlsxBackend

TRICKY_TEXT = [
    "00123",
    "+15551234",
    "+Dri7abc",
    '=HYPERLINK("http://x","prize")',
    "@SUM(A1)",
    "-1+1",
    "=1+2",
]


def read(backend: XlsxBackend, tab: str = "T") -> TabData:
    data = backend.read_tabs([tab])[tab]
    assert data is not None
    return data


def make_book(path: Path, rows: dict[str, list[list[Cell]]]) -> None:
    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for title, values in rows.items():
        sheet = workbook.create_sheet(title)
        for row in values:
            sheet.append(row)
    workbook.save(path)


@pytest.mark.parametrize("formula_elsewhere", [False, True])
def test_a_date_number_no_calendar_holds_reads_as_the_number_typed_not_a_crash(
    tmp_path: Path, formula_elsewhere: bool
) -> None:
    # The fast reader (written in Rust) panics on such a cell, and the slower
    # one (which also reads every workbook with a formula) takes it for an
    # error cell: either way the sync must see the number, to say what it is.
    path = tmp_path / "far.xlsx"
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "T"
    sheet.append(["Born", "Name", "Age"])
    sheet.append([-1e300, "Ann", "=1+1" if formula_elsewhere else 2])
    sheet.append([1e300, "Bo", 3])
    sheet.append(["=NA()", "Cy", 4])
    for cell in ("A2", "A3"):
        sheet[cell].number_format = "yyyy-mm-dd"
    workbook.save(path)

    tab = XlsxBackend(path).read_tabs(["T"])["T"]

    assert tab is not None
    assert tab.rows[0] == ["Born", "Name", "Age"]
    assert tab.rows[1][:2] == [-1e300, "Ann"]
    assert tab.rows[2][:2] == [1e300, "Bo"]
    # A formula's own error stays an error.
    assert isinstance(tab.rows[3][0], ErrorValue | UncomputedFormula)


def test_a_tab_named_in_other_letter_case_is_that_tab_for_reads_and_writes(
    tmp_path: Path,
) -> None:
    # Excel and LibreOffice hold tab names without regard to case (a workbook
    # cannot have both "customers" and "Customers"), and so does Google.
    path = tmp_path / "case.xlsx"
    make_book(path, {"customers": [["ID", "Name"], [1, "Ann"]]})
    backend = XlsxBackend(path)

    tab = backend.read_tabs(["Customers"])["Customers"]
    assert tab is not None and tab.rows == [["ID", "Name"], [1, "Ann"]]
    backend.write(
        {"Customers": TabChanges(cells={(2, 2): "Anne"})},
        expected_version=tab.version,
    )

    assert openpyxl.load_workbook(path).sheetnames == ["customers"]
    again = backend.read_tabs(["Customers"])["Customers"]
    assert again is not None and again.rows == [["ID", "Name"], [1, "Anne"]]


def test_a_tab_named_in_other_letter_case_is_found_by_the_slower_reader_too(
    tmp_path: Path,
) -> None:
    # A formula cell sends the read to openpyxl, which must find it as well.
    path = tmp_path / "case.xlsx"
    make_book(path, {"customers": [["ID", "Total"], [1, "=NA()"]]})

    tab = XlsxBackend(path).read_tabs(["Customers"])["Customers"]

    assert tab is not None and tab.rows[0] == ["ID", "Total"]


def test_a_workbook_reached_through_a_link_is_written_where_the_link_points(
    tmp_path: Path,
) -> None:
    # A data folder may link to a workbook kept elsewhere (a shared drive):
    # the link stays, and the workbook it names gets the sync's writes.
    shared = tmp_path / "shared"
    shared.mkdir()
    make_book(shared / "book.xlsx", {"T": [["ID", "Name"], [1, "Ann"]]})
    link = tmp_path / "book.xlsx"
    link.symlink_to(shared / "book.xlsx")
    backend = XlsxBackend(link)
    (shared / "~$book.xlsx").write_text("open in Excel there")

    with pytest.raises(SheetLocked):
        backend.write({"T": TabChanges(cells={(2, 2): "Anne"})})
    (shared / "~$book.xlsx").unlink()
    tab = backend.read_tabs(["T"])["T"]
    assert tab is not None
    backend.write(
        {"T": TabChanges(cells={(2, 2): "Anne"})}, expected_version=tab.version
    )

    assert link.is_symlink()
    assert openpyxl.load_workbook(shared / "book.xlsx")["T"]["B2"].value == "Anne"
    assert backend.location == str(link)


def test_a_folder_where_the_workbook_should_be_is_refused_at_once_not_retried(
    tmp_path: Path,
) -> None:
    # Made moments ago, as a file being saved would be: but no program saves
    # a workbook as a folder.
    folder = tmp_path / "book.xlsx"
    folder.mkdir()

    with pytest.raises(SheetInvalidRequest) as refused:
        XlsxBackend(folder).read_tabs(["T"])

    assert not refused.value.transient
    assert str(refused.value) == (
        f"{folder} is a folder, not a workbook: put the workbook there, or point "
        "the link at one"
    )


def test_missing_workbook_reads_as_missing_tabs(tmp_path: Path) -> None:
    backend = XlsxBackend(tmp_path / "none.xlsx")
    assert backend.read_tabs(["A", "B"]) == {"A": None, "B": None}


def test_write_creates_workbook_without_default_sheet(tmp_path: Path) -> None:
    path = tmp_path / "new.xlsx"
    XlsxBackend(path).write({"Policies": TabChanges(cells={(1, 1): "ID"})})
    assert openpyxl.load_workbook(path).sheetnames == ["Policies"]
    assert read(XlsxBackend(path), "Policies").rows == [["ID"]]


def test_missing_tab_reads_as_none_and_write_creates_it(tmp_path: Path) -> None:
    path = tmp_path / "b.xlsx"
    make_book(path, {"Other": [["keep"]]})
    backend = XlsxBackend(path)
    assert backend.read_tabs(["T"]) == {"T": None}
    backend.write({"T": TabChanges(cells={(1, 1): "ID"})})
    tabs = backend.read_tabs(["T", "Other"])
    assert tabs["T"] is not None and tabs["T"].rows == [["ID"]]
    assert tabs["Other"] is not None and tabs["Other"].rows == [["keep"]]


@pytest.mark.parametrize("text", TRICKY_TEXT)
def test_text_is_written_and_read_back_as_the_same_literal_text(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "t.xlsx"
    backend = XlsxBackend(path)
    backend.write({"T": TabChanges(cells={(1, 1): text})})
    assert read(backend).rows == [[text]]
    cell = openpyxl.load_workbook(path)["T"]["A1"]
    assert cell.data_type == "s"
    assert cell.value == text


def test_text_stays_text_after_another_write_of_other_cells(tmp_path: Path) -> None:
    backend = XlsxBackend(tmp_path / "t.xlsx")
    backend.write(
        {"T": TabChanges(cells={(1, i + 1): t for i, t in enumerate(TRICKY_TEXT)})}
    )
    backend.write({"T": TabChanges(cells={(2, 1): "x"})})
    assert read(backend).rows[0] == TRICKY_TEXT


def test_dates_and_money_are_written_as_formatted_numbers(tmp_path: Path) -> None:
    path = tmp_path / "t.xlsx"
    backend = XlsxBackend(path)
    changes: dict[tuple[int, int], Cell] = {
        (1, 1): date(2020, 1, 1),
        (1, 2): Decimal("1234.50"),
        (1, 3): 7,
    }
    backend.write({"T": TabChanges(cells=changes)})
    sheet = openpyxl.load_workbook(path)["T"]
    assert sheet["A1"].number_format == "yyyy-mm-dd"
    assert sheet["A1"].is_date
    assert sheet["B1"].number_format == "#,##0.00"
    assert sheet["B1"].data_type == "n"
    assert read(backend).rows == [[datetime(2020, 1, 1), 1234.5, 7]]


def test_read_returns_cached_values_of_formulas_typed_by_people(tmp_path: Path) -> None:
    path = tmp_path / "f.xlsx"
    make_book(path, {"T": [["a", "b"]]})
    # a workbook saved by a spreadsheet program stores each formula's last value
    _inject_cached_formula(path, "T", "C1", "1+2", "3")
    assert read(XlsxBackend(path)).rows == [["a", "b", 3]]


def _inject_cached_formula(
    path: Path, tab: str, ref: str, formula: str, value: str
) -> None:
    import zipfile

    workbook = openpyxl.load_workbook(path)
    index = workbook.sheetnames.index(tab) + 1
    member = f"xl/worksheets/sheet{index}.xml"
    with zipfile.ZipFile(path) as source:
        files = {name: source.read(name) for name in source.namelist()}
    xml = files[member].decode()
    cell = f'<c r="{ref}"><f>{formula}</f><v>{value}</v></c></row>'
    files[member] = xml.replace("</row>", cell, 1).encode()
    with zipfile.ZipFile(path, "w") as target:
        for name, data in files.items():
            target.writestr(name, data)


def test_error_cells_read_as_their_error_text_never_as_empty(tmp_path: Path) -> None:
    # An error a formula shows is not a cleared cell: reading it as empty
    # would import a blank over the app's value.
    path = tmp_path / "e.xlsx"
    make_book(path, {"T": [["ID", "Email", "Note"], [1, "#N/A", "#DIV/0!"], [2]]})
    assert openpyxl.load_workbook(path)["T"]["B2"].data_type == "e"
    assert read(XlsxBackend(path)).rows == [
        ["ID", "Email", "Note"],
        [1, "#N/A", "#DIV/0!"],
        [2],
    ]


@pytest.mark.parametrize("with_an_error_cell", [False, True])
def test_a_workbook_tells_which_day_its_date_numbers_count_from(
    tmp_path: Path, with_an_error_cell: bool
) -> None:
    # Both readers (the fast one, and openpyxl for a book with error cells).
    row: list[Any] = [42000, "#N/A"] if with_an_error_cell else [42000]
    for epoch, system in (
        (openpyxl.utils.datetime.CALENDAR_WINDOWS_1900, DateSystem.EXCEL_1900),
        (openpyxl.utils.datetime.CALENDAR_MAC_1904, DateSystem.EXCEL_1904),
    ):
        path = tmp_path / f"{system.name}.xlsx"
        workbook = openpyxl.Workbook()
        workbook.epoch = epoch
        sheet = workbook.active
        assert sheet is not None
        sheet.title = "T"
        sheet.append(row)
        if with_an_error_cell:
            sheet["B1"].data_type = "e"
        workbook.save(path)

        tab = read(XlsxBackend(path))

        assert tab.date_system is system
        assert tab.rows == [row]


def test_shared_strings_books_read_like_inline_strings_books(tmp_path: Path) -> None:
    # Spreadsheet programs save text in a shared table; openpyxl inside each
    # cell. Both read the same.
    rows: list[list[Cell]] = [
        ["ID", "Policy Number", "Premium", "Start", "Active", None, "Note"],
        [1, "00123", 1234.5, datetime(2020, 1, 1), True, None, "=1+2"],
        [None, None, None, None, None, None, None],
        [12, "+15551234", 7, datetime(1999, 12, 31), False, "mine", "  spaced  "],
    ]
    inline = tmp_path / "inline.xlsx"
    make_book(inline, {"T": rows})
    sheet = openpyxl.load_workbook(inline)
    for cell in ("D2", "D4"):
        sheet["T"][cell].number_format = "yyyy-mm-dd"
    sheet["T"]["G2"].data_type = "s"
    sheet.save(inline)
    shared = tmp_path / "shared.xlsx"
    book = xlsxwriter.Workbook(str(shared))
    tab = book.add_worksheet("T")
    dates = book.add_format({"num_format": "yyyy-mm-dd"})
    for r, values in enumerate(rows):
        for c, value in enumerate(values):
            if isinstance(value, datetime):
                tab.write_datetime(r, c, value, dates)
            elif isinstance(value, str):
                tab.write_string(r, c, value)
            elif value is not None:
                tab.write(r, c, value)
    book.close()
    expected = [rows[0], rows[1], [], rows[3]]
    assert read(XlsxBackend(inline)).rows == expected
    assert read(XlsxBackend(shared)).rows == expected


def test_text_cells_are_formatted_as_text_in_new_and_existing_books(
    tmp_path: Path,
) -> None:
    # so a ZIP code a person later types over one keeps its leading zero
    path = tmp_path / "t.xlsx"
    backend = XlsxBackend(path)
    backend.write({"T": TabChanges(cells={(1, 1): "04001"}, append=[["02108"]])})
    backend.write({"T": TabChanges(cells={(3, 1): "00901"})})
    sheet = openpyxl.load_workbook(path)["T"]
    assert [sheet[ref].number_format for ref in ("A1", "A2", "A3")] == ["@"] * 3


def test_text_longer_than_a_cell_holds_reads_back_marked_as_clipped(
    tmp_path: Path,
) -> None:
    # Workbook writers keep 32,767 characters; the read says so, so that the
    # cut text is never imported as if it were whole.
    path = tmp_path / "long.xlsx"
    backend = XlsxBackend(path)
    backend.write({"T": TabChanges(cells={(1, 1): "x" * 40_000})})
    backend.write({"T": TabChanges(cells={(2, 1): "y" * 40_000})})
    rows = read(backend).rows
    assert [type(row[0]) for row in rows] == [ClippedText, ClippedText]
    assert [len(str(row[0])) for row in rows] == [XLSX_CELL_LIMIT] * 2


def test_emoji_count_twice_toward_the_cell_limit_so_their_cut_is_seen(
    tmp_path: Path,
) -> None:
    # A workbook cell holds 32,767 UTF-16 units: 16,383 emoji, 32,766 units.
    path = tmp_path / "emoji.xlsx"
    make_book(path, {"T": [["\N{GRINNING FACE}" * 20_000]]})

    (cell,) = read(XlsxBackend(path)).rows[0]

    assert isinstance(cell, ClippedText)
    assert cell_length(cell) > XLSX_TEXT_LIMIT


@pytest.mark.parametrize("book", ["new", "existing", "with a formula"])
def test_text_that_reads_like_an_xml_escape_round_trips_as_typed(
    tmp_path: Path, book: str
) -> None:
    # Workbooks escape characters as _xHHHH_; a literal one must stay literal.
    text = "code _x0041_ here, _x005F_ and _X00e9_, line1\rline2\r\nline3"
    path = tmp_path / "esc.xlsx"
    if book == "with a formula":  # read through openpyxl, not calamine
        make_book(path, {"T": [["=1+2"]]})
    elif book == "existing":
        make_book(path, {"T": [["x"]]})
    backend = XlsxBackend(path)

    backend.write({"T": TabChanges(cells={(2, 1): text})})

    assert read(backend).rows[1] == [text]


# Text as a spreadsheet program stores it in the shared strings table, XML
# escaped (&#13; a lone carriage return) and _xHHHH_ escaped, and as it reads.
SAVED_TEXT = [
    ("code _x005F_x0041_ ok", "code _x0041_ ok"),
    ("line1&#13;line2", "line1\rline2"),
    ("cr _x000D_ and tab\tend", "cr \r and tab\tend"),
    ("a x005F_ b", "a x005F_ b"),
    ("capital _x005F_X0041_ stays", "capital _X0041_ stays"),
    ("raw _X0041_ stays", "raw _X0041_ stays"),
    ("plain &amp; &lt;b&gt;", "plain & <b>"),
    ("  spaced  ", "  spaced  "),
]


def make_shared_strings_book(
    path: Path, tabs: Sequence[str], *, error_cell: bool = False
) -> None:
    """A book whose tabs each hold SAVED_TEXT in column A, rows 1.., stored in
    the shared strings table exactly as given; with ``error_cell``, C1 of the
    first tab shows #DIV/0!, so that the book is read through openpyxl."""
    plain = path.with_suffix(".plain.xlsx")
    book = xlsxwriter.Workbook(str(plain))
    for tab in tabs:
        sheet = book.add_worksheet(tab)
        for row in range(len(SAVED_TEXT)):
            sheet.write_string(row, 0, f"placeholder {row}")
        if error_cell and tab == tabs[0]:
            sheet.write_formula(0, 2, "=1/0", None, "#DIV/0!")
    book.close()
    items = "".join(
        f'<si><t xml:space="preserve">{stored}</t></si>' for stored, _ in SAVED_TEXT
    )
    table = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
        f'count="{len(SAVED_TEXT)}" uniqueCount="{len(SAVED_TEXT)}">{items}</sst>'
    )
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "xl/sharedStrings.xml":
                data = table.encode()
            dst.writestr(name, data)
    plain.unlink()


@pytest.mark.parametrize("error_cell", [False, True])
def test_a_write_keeps_the_exact_text_of_cells_it_did_not_write_on_every_tab(
    tmp_path: Path, error_cell: bool
) -> None:
    # A spreadsheet program stores text escaped in a shared table; the text of
    # every cell a write re-saves, on every tab, must read back unchanged.
    path = tmp_path / "saved.xlsx"
    make_shared_strings_book(path, ["T", "Other"], error_cell=error_cell)
    expected = [[text] for _, text in SAVED_TEXT]
    assert [row[:1] for row in read(XlsxBackend(path)).rows] == expected
    assert read(XlsxBackend(path), "Other").rows == expected

    XlsxBackend(path).write({"T": TabChanges(cells={(1, 2): "written"})})

    tabs = XlsxBackend(path).read_tabs(["T", "Other"])

    assert tabs["Other"] is not None and tabs["Other"].rows == expected
    assert tabs["T"] is not None
    assert [row[:1] for row in tabs["T"].rows] == expected
    assert tabs["T"].rows[0][1] == "written"


def make_rich_text_book(path: Path) -> None:
    """A book as a spreadsheet program saves it (text in the shared strings
    table): a note with a word in bold in B2 of T, a red heading on another
    tab, and text with an escape-like "_x0041_" in one of its runs (stored
    escaped, and read back the same way after a write)."""
    book = xlsxwriter.Workbook(str(path))
    bold = book.add_format({"bold": True})
    red = book.add_format({"italic": True, "font_color": "#FF0000"})
    sheet = book.add_worksheet("T")
    sheet.write_row(0, 0, ["ID", "Note", "Other"])
    sheet.write_number(1, 0, 1)
    sheet.write_rich_string(1, 1, "call ", bold, "before noon", " please")
    sheet.write_rich_string(2, 1, "code ", bold, "_x0041_", " kept")
    sheet.write_number(2, 0, 2)
    summary = book.add_worksheet("Summary")
    summary.write_rich_string(0, 0, red, "Totals", " by agent")
    book.close()


def runs(cell: Any) -> list[tuple[str, bool, bool]]:
    """A cell's text as (text, bold, italic) runs; plain text is one run."""
    value = cell.value
    if isinstance(value, str):
        return [(value, False, False)]
    return [
        (block, False, False)
        if isinstance(block, str)
        else (block.text, bool(block.font.b), bool(block.font.i))
        for block in value
    ]


def test_a_write_keeps_the_formatting_of_words_in_cells_it_did_not_write(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rich.xlsx"
    make_rich_text_book(path)
    before = openpyxl.load_workbook(path, rich_text=True)
    note = runs(before["T"]["B2"])
    assert ("before noon", True, False) in note
    read_before = read(XlsxBackend(path)).rows

    for value in ("written", "again"):  # the second loads what the first saved
        XlsxBackend(path).write({"T": TabChanges(cells={(2, 3): value})})

    after = openpyxl.load_workbook(path, rich_text=True)
    assert runs(after["T"]["B2"]) == note
    assert runs(after["T"]["B3"]) == runs(before["T"]["B3"])
    assert runs(after["Summary"]["A1"]) == [
        ("Totals", False, True),
        (" by agent", False, False),
    ]
    assert after["Summary"]["A1"].value[0].font.color.rgb.endswith("FF0000")
    assert after["T"]["C2"].value == "again"
    tab = read(XlsxBackend(path))
    assert tab.rows[1][1] == "call before noon please"
    assert [row[:2] for row in tab.rows] == [row[:2] for row in read_before]


def test_a_write_into_a_cell_with_formatted_words_leaves_the_apps_plain_text(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rich.xlsx"
    make_rich_text_book(path)

    XlsxBackend(path).write({"T": TabChanges(cells={(2, 2): "called"})})

    after = openpyxl.load_workbook(path, rich_text=True)
    assert after["T"]["B2"].value == "called"
    assert ("_x0041_", True, False) in runs(after["T"]["B3"])


def test_formatted_words_move_up_with_their_row_when_rows_above_are_deleted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rich.xlsx"
    make_rich_text_book(path)

    XlsxBackend(path).write({"T": TabChanges(delete_rows=[2])})

    after = openpyxl.load_workbook(path, rich_text=True)
    assert after["T"]["A2"].value == 2
    assert ("_x0041_", True, False) in runs(after["T"]["B2"])


def test_formulas_in_columns_people_added_survive_a_write(tmp_path: Path) -> None:
    path = tmp_path / "f.xlsx"
    make_book(path, {"T": [["ID", "Mine"], [1, "=A2*2"]]})
    XlsxBackend(path).write({"T": TabChanges(cells={(2, 1): 5})})
    sheet = openpyxl.load_workbook(path)["T"]
    assert sheet["B2"].value == "=A2*2"
    assert sheet["B2"].data_type == "f"


def test_ragged_rows_and_trailing_empties_are_trimmed(tmp_path: Path) -> None:
    path = tmp_path / "r.xlsx"
    make_book(path, {"T": [["a", "b", "c"], ["a", "b", None], [None], [None, "x"], []]})
    assert read(XlsxBackend(path)).rows == [
        ["a", "b", "c"],
        ["a", "b"],
        [],
        [None, "x"],
    ]


def test_header_only_tab_has_no_data_rows(tmp_path: Path) -> None:
    path = tmp_path / "h.xlsx"
    make_book(path, {"T": [["ID", "Name"]]})
    assert read(XlsxBackend(path)).rows == [["ID", "Name"]]


def test_write_touches_only_the_given_cells(tmp_path: Path) -> None:
    path = tmp_path / "w.xlsx"
    make_book(
        path, {"T": [["ID", "Name", "Mine"], [1, "a", "keep"], [2, "b", "keep2"]]}
    )
    XlsxBackend(path).write({"T": TabChanges(cells={(3, 2): "B"})})
    assert read(XlsxBackend(path)).rows == [
        ["ID", "Name", "Mine"],
        [1, "a", "keep"],
        [2, "B", "keep2"],
    ]


def test_none_clears_a_cell(tmp_path: Path) -> None:
    path = tmp_path / "w.xlsx"
    make_book(path, {"T": [["ID", "Name"], [1, "a"]]})
    XlsxBackend(path).write({"T": TabChanges(cells={(2, 2): None})})
    assert read(XlsxBackend(path)).rows == [["ID", "Name"], [1]]


def test_append_goes_after_the_last_non_empty_row(tmp_path: Path) -> None:
    path = tmp_path / "a.xlsx"
    make_book(path, {"T": [["ID", "Name"], [1, "a"], [None, None, "note"]]})
    workbook = openpyxl.load_workbook(path)
    workbook["T"]["B10"].number_format = "0.00"  # formatted but empty
    workbook.save(path)
    XlsxBackend(path).write({"T": TabChanges(append=[[2, "b"], [3, None, None]])})
    assert read(XlsxBackend(path)).rows == [
        ["ID", "Name"],
        [1, "a"],
        [None, None, "note"],
        [2, "b"],
        [3],
    ]


def test_rows_are_deleted_last_highest_first(tmp_path: Path) -> None:
    path = tmp_path / "d.xlsx"
    make_book(path, {"T": [["ID"], [1], [2], [3], [4]]})
    changes = TabChanges(cells={(3, 2): "x"}, append=[[5]], delete_rows=[2, 4])
    XlsxBackend(path).write({"T": changes})
    assert read(XlsxBackend(path)).rows == [["ID"], [2, "x"], [4], [5]]


def test_version_is_empty_for_missing_file_and_changes_on_write(tmp_path: Path) -> None:
    path = tmp_path / "v.xlsx"
    backend = XlsxBackend(path)
    assert backend.version() == ""
    backend.write({"T": TabChanges(cells={(1, 1): "ID"})})
    first = read(backend).version
    assert first and first == backend.version()
    backend.write({"T": TabChanges(cells={(1, 2): "Name"})})
    assert read(backend).version != first


def test_write_with_stale_version_raises_changed_and_writes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v.xlsx"
    backend = XlsxBackend(path)
    backend.write({"T": TabChanges(cells={(1, 1): "ID"})})
    version = read(backend).version
    backend.write({"T": TabChanges(cells={(2, 1): 1})})  # someone else saved
    with pytest.raises(SheetChanged) as info:
        backend.write({"T": TabChanges(cells={(3, 1): 2})}, expected_version=version)
    assert info.value.transient
    assert read(backend).rows == [["ID"], [1]]


def test_write_with_current_version_succeeds(tmp_path: Path) -> None:
    backend = XlsxBackend(tmp_path / "v.xlsx")
    assert read_missing_version(backend) == ""
    backend.write({"T": TabChanges(cells={(1, 1): "ID"})}, expected_version="")
    version = read(backend).version
    backend.write({"T": TabChanges(cells={(2, 1): 1})}, expected_version=version)
    assert read(backend).rows == [["ID"], [1]]


def read_missing_version(backend: XlsxBackend) -> str:
    assert backend.read_tabs(["T"]) == {"T": None}
    return backend.version()


def test_expected_empty_version_fails_when_one_of_its_tabs_appeared(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v.xlsx"
    make_book(path, {"Other": [["x"]], "T": [["ID"]]})
    with pytest.raises(SheetChanged):
        XlsxBackend(path).write(
            {"T": TabChanges(cells={(1, 1): "X"})}, expected_version=""
        )
    assert read(XlsxBackend(path)).rows == [["ID"]]


def test_expected_empty_version_adds_its_tabs_beside_a_workbooks_others(
    tmp_path: Path,
) -> None:
    # An empty version: none of the tabs was there when read, as in a
    # workbook whose tabs were all renamed.
    path = tmp_path / "v.xlsx"
    make_book(path, {"Other": [["x"]]})
    backend = XlsxBackend(path)
    assert backend.read_tabs(["T"]) == {"T": None}

    backend.write({"T": TabChanges(cells={(1, 1): "ID"})}, expected_version="")

    tabs = backend.read_tabs(["Other", "T"])
    assert {name: tab.rows for name, tab in tabs.items() if tab} == {
        "Other": [["x"]],
        "T": [["ID"]],
    }


def test_failed_save_leaves_original_intact_and_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.xlsx"
    make_book(path, {"T": [["ID"], [1]]})
    before = path.read_bytes()

    def crash(self: object, filename: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(openpyxl.Workbook, "save", crash)
    with pytest.raises(RuntimeError):
        XlsxBackend(path).write({"T": TabChanges(cells={(2, 1): 9})})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.xlsx"]


def test_write_replaces_the_file_atomically_keeping_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "m.xlsx"
    make_book(path, {"T": [["ID"]]})
    os.chmod(path, 0o640)
    XlsxBackend(path).write({"T": TabChanges(cells={(2, 1): 1})})
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.xlsx"]


def test_open_in_libreoffice_or_excel_is_locked_and_transient(tmp_path: Path) -> None:
    path = tmp_path / "book.xlsx"
    make_book(path, {"T": [["ID"]]})
    for lock in (tmp_path / ".~lock.book.xlsx#", tmp_path / "~$book.xlsx"):
        lock.write_text("user")
        with pytest.raises(SheetLocked) as info:
            XlsxBackend(path).write({"T": TabChanges(cells={(2, 1): 1})})
        assert info.value.transient and "book.xlsx" in str(info.value)
        # The sync tries a few times, not for ever: no promise it goes on
        # (the message ends a job that gave up as well).
        assert "press Sync again" in str(info.value)
        assert "next try" not in str(info.value)
        assert f"delete {lock.name}" in str(info.value)
        lock.unlink()
    (tmp_path / "~$book.xlsx").write_text("stale")
    XlsxBackend(path, respect_lock_files=False).write(
        {"T": TabChanges(cells={(2, 1): 1})}
    )
    assert read(XlsxBackend(path)).rows == [["ID"], [1]]


def test_a_workbook_open_elsewhere_is_tried_again_after_time_to_close_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "book.xlsx"
    make_book(path, {"T": [["ID"]]})
    (tmp_path / "~$book.xlsx").write_text("user")
    waits = []
    for backend in (XlsxBackend(path), XlsxBackend(path, locked_retry_s=5)):
        with pytest.raises(SheetLocked) as info:
            backend.write({"T": TabChanges(cells={(2, 1): 1})})
        waits.append(info.value.retry_after)

    assert waits == [30.0, 5]


def test_a_write_clears_the_temporary_file_a_killed_write_left_behind(
    tmp_path: Path,
) -> None:
    path = tmp_path / "alice.xlsx"
    make_book(path, {"T": [["ID"]]})
    left = tmp_path / ".alice-tw207x86.xlsx.tmp"  # a write killed mid-save
    others = [
        tmp_path / ".alice-2-k3j9x0qa.xlsx.tmp",  # alice-2.xlsx's
        tmp_path / "alice-notes.xlsx.tmp",
    ]
    for leftover in (left, *others):
        leftover.write_bytes(b"PK half")

    XlsxBackend(path).write({"T": TabChanges(cells={(2, 1): 1})})

    assert not left.exists()
    assert all(other.exists() for other in others)
    assert read(XlsxBackend(path)).rows == [["ID"], [1]]


def test_not_a_workbook_is_a_permanent_invalid_request(tmp_path: Path) -> None:
    path = tmp_path / "bad.xlsx"
    path.write_text("not a zip")
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    with pytest.raises(SheetInvalidRequest) as info:
        XlsxBackend(path).read_tabs(["T"])
    assert not info.value.transient


@pytest.mark.parametrize("with_an_error_cell", [False, True])
def test_a_damaged_tab_is_named_in_a_permanent_invalid_request(
    tmp_path: Path, with_an_error_cell: bool
) -> None:
    # Both readers (the fast one, and openpyxl for a book with error cells).
    path = tmp_path / "book.xlsx"
    rows: list[list[Cell]] = [["ID", "Name"], *([n, f"name {n}"] for n in range(50))]
    make_book(path, {"Customers": [["ID"]], "Policies": rows})
    if with_an_error_cell:
        book = openpyxl.load_workbook(path)
        book["Policies"]["C2"] = "#N/A"
        book["Policies"]["C2"].data_type = "e"
        book.save(path)
    parts = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            parts[name] = archive.read(name)
    half = parts["xl/worksheets/sheet2.xml"]
    parts["xl/worksheets/sheet2.xml"] = half[: len(half) // 2]
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))

    with pytest.raises(SheetInvalidRequest) as info:
        XlsxBackend(path).read_tabs(["Customers", "Policies"])

    assert not info.value.transient
    said = str(info.value)
    assert said.startswith(f"{path} cannot be read: its tab 'Policies' is damaged (")
    assert said.endswith(
        "). Nothing was imported or written. Open the workbook in Excel or "
        "LibreOffice and save it (they repair what they can), or put back a "
        "copy saved before, then press Sync again"
    )


def test_half_a_workbook_saved_a_moment_ago_is_retried_as_still_being_saved(
    tmp_path: Path,
) -> None:
    # Another program paused half-way through its save: nothing moves while
    # the sync looks, but a file written seconds ago is worth another look.
    path = tmp_path / "book.xlsx"
    make_book(path, {"T": [["a"]]})
    path.write_bytes(path.read_bytes()[:300])

    with pytest.raises(SheetChanged) as info:
        XlsxBackend(path).read_tabs(["T"])

    assert info.value.transient
    # Said as what is known: no change was seen, the file just does not read.
    assert str(info.value).startswith(
        f"{path} is not a readable .xlsx workbook yet, and it was saved moments "
        "ago: another program may still be saving it; the sync tries again"
    )


def test_a_workbook_half_saved_by_another_program_as_a_sync_writes_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The write checks the version, then opens the workbook: a save that
    # begins between the two leaves half a file for a moment, no damage.
    path = tmp_path / "book.xlsx"
    make_book(path, {"T": [["ID"], [1]]})
    backend = XlsxBackend(path)
    whole = path.read_bytes()
    check = backend._refuse_to_delete_content

    def save_begins(*args: Any) -> None:
        path.write_bytes(whole[: len(whole) // 2])
        check(*args)

    monkeypatch.setattr(backend, "_refuse_to_delete_content", save_begins)
    version = read(backend).version

    with pytest.raises(SheetChanged) as info:
        backend.write({"T": TabChanges(cells={(2, 2): "x"})}, expected_version=version)

    assert info.value.transient


def test_a_workbook_read_while_another_program_saves_it_is_changed_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "book.xlsx"
    make_book(path, {"T": [["a"], [1]]})
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # the save has written half
    backend = XlsxBackend(path)
    read_values = backend._read_values

    def saved_meanwhile(tabs: list[str], version: str) -> dict[str, TabData | None]:
        try:
            return read_values(tabs, version)
        finally:
            path.write_bytes(whole)  # ... and ends while the read fails

    monkeypatch.setattr(backend, "_read_values", saved_meanwhile)

    with pytest.raises(SheetChanged) as info:
        backend.read_tabs(["T"])
    assert info.value.transient
    assert read(XlsxBackend(path)).rows == [["a"], [1]]


def test_invalid_tab_title_is_an_invalid_request(tmp_path: Path) -> None:
    with pytest.raises(SheetInvalidRequest):
        XlsxBackend(tmp_path / "x.xlsx").write({"a/b": TabChanges(cells={(1, 1): "x"})})


def test_control_characters_are_an_invalid_request(tmp_path: Path) -> None:
    with pytest.raises(SheetInvalidRequest):
        XlsxBackend(tmp_path / "x.xlsx").write(
            {"T": TabChanges(cells={(1, 1): "a\x01"})}
        )


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unreadable_file_is_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "p.xlsx"
    make_book(path, {"T": [["ID"]]})
    os.chmod(path, 0)
    try:
        with pytest.raises(SheetPermissionDenied):
            XlsxBackend(path).read_tabs(["T"])
    finally:
        os.chmod(path, 0o644)


def test_empty_changes_do_not_touch_the_file(tmp_path: Path) -> None:
    path = tmp_path / "e.xlsx"
    XlsxBackend(path).write({"T": TabChanges()})
    assert not path.exists()


def test_latency_is_applied_per_call(tmp_path: Path) -> None:
    backend = XlsxBackend(tmp_path / "l.xlsx", latency_ms=50)
    started = time.perf_counter()
    backend.read_tabs(["T"])
    backend.write({"T": TabChanges(cells={(1, 1): "x"})})
    assert time.perf_counter() - started >= 0.1


def test_location_is_the_path(tmp_path: Path) -> None:
    assert XlsxBackend(tmp_path / "x.xlsx").location == str(tmp_path / "x.xlsx")


def test_ten_thousand_rows_read_back_whole(tmp_path: Path) -> None:
    path = tmp_path / "big.xlsx"
    backend = XlsxBackend(path)
    rows: list[list[Cell]] = [
        [i, f"P{i:06d}", Decimal("100.50"), date(2024, 1, 1), "active", "+15551234"]
        for i in range(1, 10_001)
    ]
    backend.write({"T": TabChanges(cells={(1, 1): "ID"}, append=rows)})
    data = read(backend)
    assert len(data.rows) == 10_001
    assert data.rows[-1][:2] == [10_000, "P010000"]


def test_error_classes_share_a_root_and_say_if_transient() -> None:
    assert SheetTransientError.transient and SheetChanged.transient
    assert SheetLocked.transient
    for permanent in (SheetNotFound, SheetPermissionDenied, SheetInvalidRequest):
        assert issubclass(permanent, SheetError) and not permanent.transient


def test_not_found_names_spreadsheet_and_tab() -> None:
    error = SheetNotFound(location="book.xlsx", tab="Jon's Data")
    assert "book.xlsx" in str(error) and "Jon's Data" in str(error)


def test_parallel_writers_to_different_tabs_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "p.xlsx"
    make_book(path, {f"T{i}": [["ID"]] for i in range(4)})

    def writer(index: int) -> None:
        backend = XlsxBackend(path)
        for row in range(2, 6):
            backend.write({f"T{index}": TabChanges(cells={(row, 1): row})})

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tabs = XlsxBackend(path).read_tabs([f"T{i}" for i in range(4)])
    for data in tabs.values():
        assert data is not None and data.rows == [["ID"], [2], [3], [4], [5]]


def test_processes_writing_one_workbook_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "p.xlsx"
    make_book(path, {f"T{i}": [["ID"]] for i in range(3)})
    writer = (
        "import sys\n"
        "from pathlib import Path\n"
        "from sheetbridge.sheets.base import TabChanges\n"
        "from sheetbridge.sheets.xlsx import XlsxBackend\n"
        "path, tab = Path(sys.argv[1]), sys.argv[2]\n"
        "for row in range(2, 8):\n"
        "    XlsxBackend(path).write({tab: TabChanges(cells={(row, 1): row})})\n"
    )
    writers = [
        subprocess.Popen([sys.executable, "-c", writer, str(path), f"T{i}"])
        for i in range(3)
    ]

    assert [process.wait(timeout=120) for process in writers] == [0, 0, 0]
    tabs = XlsxBackend(path).read_tabs([f"T{i}" for i in range(3)])
    for data in tabs.values():
        assert data is not None and data.rows == [["ID"], *[[n] for n in range(2, 8)]]


def test_workbooks_in_one_folder_are_written_at_the_same_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each user's book is a workbook of its own: one's save waits for no other.
    first, second = tmp_path / "ann.xlsx", tmp_path / "bob.xlsx"
    for path in (first, second):
        make_book(path, {"T": [["ID"], [1]]})
    second_saved = threading.Event()
    save = XlsxBackend._save_atomically

    def first_waits_for_the_second(
        self: XlsxBackend, *args: Any, **kwargs: Any
    ) -> None:
        if self.path == first:
            assert second_saved.wait(10), "the second workbook waited for the first"
        save(self, *args, **kwargs)
        if self.path == second:
            second_saved.set()

    monkeypatch.setattr(XlsxBackend, "_save_atomically", first_waits_for_the_second)
    errors: list[BaseException] = []

    def write(path: Path) -> None:
        try:
            XlsxBackend(path).write({"T": TabChanges(cells={(2, 2): path.stem})})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in (first, second)]
    threads[0].start()
    time.sleep(0.2)  # the first holds its lock
    threads[1].start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert read(XlsxBackend(first)).rows == [["ID"], [1, "ann"]]
    assert read(XlsxBackend(second)).rows == [["ID"], [1, "bob"]]


def picture(path: Path, kind: str = "PNG") -> Path:
    from PIL import Image

    Image.new("RGB", (8, 8), "navy").save(path, kind)
    return path


def book_with_a_logo_tab(path: Path, add: Callable[[Any, Path], None]) -> None:
    """A book with a synced tab "T" and a "Logo" tab the person decorated."""
    book = xlsxwriter.Workbook(str(path))
    book.add_worksheet("T").write_string(0, 0, "ID")
    logo = book.add_worksheet("Logo")
    logo.write_string(0, 0, "Our agency")
    add(logo, path.parent)
    book.close()


def test_pictures_the_person_inserted_survive_a_write(tmp_path: Path) -> None:
    path = tmp_path / "logo.xlsx"
    book_with_a_logo_tab(
        path,
        lambda sheet, folder: sheet.insert_image(
            "B2", str(picture(folder / "logo.png"))
        ),
    )
    jpeg = openpyxl.load_workbook(path)
    jpeg["T"].add_image(
        openpyxl.drawing.image.Image(str(picture(tmp_path / "p.jpg", "JPEG"))), "C3"
    )
    jpeg.save(path)

    XlsxBackend(path).write({"T": TabChanges(cells={(2, 1): 1})})

    book = openpyxl.load_workbook(path)
    assert [len(book[tab]._images) for tab in ("T", "Logo")] == [1, 1]
    with zipfile.ZipFile(path) as archive:
        media = [name for name in archive.namelist() if name.startswith("xl/media/")]
    assert len(media) == 2
    assert read(XlsxBackend(path)).rows == [["ID"], [1]]


def _vba(sheet: Any, folder: Path) -> None:
    del sheet, folder  # the macros are added to the package below


@pytest.mark.parametrize(
    ("add", "told"),
    [
        (
            lambda sheet, folder: sheet.insert_textbox("D2", "Call us"),
            "tab 'Logo' holds shapes or text boxes",
        ),
        (
            lambda sheet, folder: sheet.insert_button("D2", {"macro": "go"}),
            "tab 'Logo' holds form controls",
        ),
        (
            lambda sheet, folder: sheet.add_sparkline("D2", {"range": "Logo!A1:A1"}),
            "tab 'Logo' holds sparklines",
        ),
        (_vba, "the workbook holds macros"),
    ],
    ids=["text box", "button", "sparkline", "macros"],
)
def test_a_write_that_would_delete_what_openpyxl_cannot_keep_is_refused(
    tmp_path: Path, add: Callable[[Any, Path], None], told: str
) -> None:
    # A save through openpyxl drops shapes, form controls, macros and more; the
    # write says so and leaves the file as it was rather than delete them.
    path = tmp_path / "decorated.xlsx"
    book_with_a_logo_tab(path, add)
    if add is _vba:
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr("xl/vbaProject.bin", b"not run, only kept")
    saved = path.read_bytes()

    with pytest.raises(SheetInvalidRequest) as refused:
        XlsxBackend(path).write({"T": TabChanges(cells={(2, 1): 1})})

    assert not refused.value.transient
    assert told in refused.value.message
    assert "Nothing was written" in refused.value.message
    assert "another workbook" in refused.value.message
    assert path.read_bytes() == saved
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_comments_charts_and_pictures_alone_are_no_reason_to_refuse(
    tmp_path: Path,
) -> None:
    path = tmp_path / "kept.xlsx"

    def decorate(sheet: Any, folder: Path) -> None:
        sheet.write_comment("A1", "a note")
        sheet.insert_image("B2", str(picture(folder / "logo.png")))

    book_with_a_logo_tab(path, decorate)
    book = openpyxl.load_workbook(path)
    chart = openpyxl.chart.BarChart()
    chart.add_data(openpyxl.chart.Reference(book["T"], min_col=1, min_row=1))
    book["Logo"].add_chart(chart, "E5")
    book.save(path)

    XlsxBackend(path).write({"T": TabChanges(cells={(2, 1): 1})})

    book = openpyxl.load_workbook(path)
    assert book["Logo"]["A1"].comment is not None
    assert len(book["Logo"]._images) == 1 and len(book["Logo"]._charts) == 1


@pytest.mark.parametrize("stored", ["shared", "inline"])
def test_a_character_xml_forbids_is_a_clear_permanent_error_naming_tab_and_cell(
    tmp_path: Path, stored: str
) -> None:
    # Calamine reads "&#xFFFE;" leniently, openpyxl (which every write loads
    # the workbook with) does not: the error says where it is, not "ParseError".
    path = tmp_path / "odd.xlsx"
    placeholder = "PLACEHOLDER"
    if stored == "shared":
        book = xlsxwriter.Workbook(str(path))
        book.add_worksheet("Other").write_string(0, 0, "fine")
        sheet = book.add_worksheet("Customers")
        sheet.write_string(0, 0, "ID")
        sheet.write_string(3, 1, placeholder)
        book.close()
        part = "xl/sharedStrings.xml"
    else:
        make_book(
            path, {"Other": [["fine"]], "Customers": [["ID"], [], [], [placeholder]]}
        )
        book = openpyxl.load_workbook(path)
        book["Customers"]["A4"], book["Customers"]["B4"] = None, placeholder
        book.save(path)
        part = "xl/worksheets/sheet2.xml"
    patched = path.with_suffix(".patched")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(patched, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == part:
                assert placeholder.encode() in data
                data = data.replace(placeholder.encode(), b"odd &#xFFFE; text")
            dst.writestr(name, data)
    patched.replace(path)
    backend = XlsxBackend(path)
    assert read(backend, "Customers").rows[3] == [None, "odd \ufffe text"]
    saved = path.read_bytes()

    with pytest.raises(SheetInvalidRequest) as refused:
        backend.write({"Customers": TabChanges(cells={(2, 1): 7})})

    message = refused.value.message
    assert not refused.value.transient
    assert refused.value.tab == "Customers"
    assert "tab 'Customers'" in message and "cell B4" in message
    assert "ParseError" not in message
    assert path.read_bytes() == saved


def test_formula_results_a_spreadsheet_program_saved_survive_a_write(
    tmp_path: Path,
) -> None:
    # openpyxl saves formulas without their results; the write puts back the
    # result each formula it did not touch had, so it reads as it did.
    path = tmp_path / "calc.xlsx"
    book = xlsxwriter.Workbook(str(path))
    sheet = book.add_worksheet("T")
    values: list[list[Cell]] = [
        ["ID", "City", "Total", "Flag", "Broken"],
        [1, "keep", 3, True, "x"],
        [2, "PORTLAND", 7.5, False, "y"],
        [3, 'say "hi" & <go>\r', 10, True, "z"],
    ]
    for r, row in enumerate(values):
        for c, value in enumerate(row):
            sheet.write(r, c, value)
    sheet.write_formula("B3", '=UPPER("portland")', None, "PORTLAND")
    sheet.write_formula("C3", "=5*1.5", None, 7.5)
    sheet.write_formula("D3", "=1>2", None, False)
    sheet.write_formula("E3", "=1/0", None, "#DIV/0!")
    sheet.write_formula("B4", '="say ""hi"" & <go>"&CHAR(13)', None, values[3][1])
    sheet.write_formula("C4", "=5+5", None, 10)
    book.close()
    backend = XlsxBackend(path)
    before = read(backend).rows

    backend.write({"T": TabChanges(cells={(2, 2): "written"}, delete_rows=[2])})

    rows = read(backend).rows
    assert rows[0] == before[0]
    assert rows[1] == before[2]
    assert rows[2] == before[3]
    assert [type(cell).__name__ for cell in rows[1]] == [
        "int", "str", "float", "bool", "ErrorValue"
    ]  # fmt: skip
    formulas = openpyxl.load_workbook(path)
    assert formulas["T"]["B2"].value == '=UPPER("portland")'
    assert formulas["T"]["C3"].value == "=5+5"
    # results that the write may have made stale are computed anew on opening
    assert formulas.calculation.fullCalcOnLoad


def test_a_formula_the_write_replaced_with_a_value_keeps_no_old_result(
    tmp_path: Path,
) -> None:
    path = tmp_path / "over.xlsx"
    book = xlsxwriter.Workbook(str(path))
    sheet = book.add_worksheet("T")
    sheet.write_string("A1", "City")
    sheet.write_formula("A2", '=UPPER("portland")', None, "PORTLAND")
    sheet.write_formula("A3", '=UPPER("bangor")', None, "BANGOR")
    book.close()

    XlsxBackend(path).write({"T": TabChanges(cells={(2, 1): "Augusta"})})

    assert read(XlsxBackend(path)).rows == [["City"], ["Augusta"], ["BANGOR"]]


@pytest.mark.parametrize("error_cell_elsewhere", [False, True])
def test_merged_cells_are_read_with_the_values(
    tmp_path: Path, error_cell_elsewhere: bool
) -> None:
    path = tmp_path / "m.xlsx"
    rows: list[list[Cell]] = [["ID", "Name", "Email"], [1, "Ann", "a@x"], [2, "Bo"]]
    make_book(path, {"T": rows, "Other": [["x"]]})
    book = openpyxl.load_workbook(path)
    book["T"].merge_cells("B2:C2")
    book["T"].merge_cells("A3:A4")
    if error_cell_elsewhere:  # read by openpyxl, not calamine
        book["Other"]["A2"].value, book["Other"]["A2"].data_type = "#N/A", "e"
    book.save(path)

    tabs = XlsxBackend(path).read_tabs(["T", "Other"])

    tab, other = tabs["T"], tabs["Other"]
    assert tab is not None and other is not None
    assert tab.rows == [["ID", "Name", "Email"], [1, "Ann"], [2, "Bo"]]
    assert sorted(tab.merges) == [CellRange(2, 2, 2, 3), CellRange(3, 1, 4, 1)]
    assert other.merges == []


def test_a_write_into_the_hidden_part_of_a_merge_is_refused_naming_the_cells(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.xlsx"
    make_book(path, {"T": [["ID", "Name", "Email"], [1, "Ann", "a@x"]]})
    book = openpyxl.load_workbook(path)
    book["T"].merge_cells("B2:C2")
    book.save(path)
    before = path.read_bytes()

    with pytest.raises(SheetInvalidRequest) as raised:
        XlsxBackend(path).write({"T": TabChanges(cells={(2, 3): "b@x"})})

    assert "C2" in str(raised.value) and "B2:C2" in str(raised.value)
    assert path.read_bytes() == before
