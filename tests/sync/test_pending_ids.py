"""Finding again the rows of records an import created, whose IDs it may not
have written."""

from __future__ import annotations

from sheetbridge.insurance.mapping import CUSTOMERS
from sheetbridge.sheets.base import Cell, CellRange, TabData
from sheetbridge.sync.pending_ids import PendingRow, find_rows, fingerprint

HEADER: list[Cell] = ["ID", "Name", "City"]


def entry(key: int, record_id: int, row: int, cells: list[Cell]) -> PendingRow:
    return PendingRow(key, record_id, row, 1, fingerprint(cells, 1))


def test_a_row_that_holds_its_id_already_is_settled_with_nothing_to_write() -> None:
    tab = TabData([HEADER, [7, "Ann", "Bath"]], "v1")

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, [None, "Ann", "Bath"])])

    assert found.cells == {} and found.lost == set() and found.settled == [1]
    assert found.tab == tab


def test_a_row_moved_by_rows_inserted_above_is_found_by_its_values() -> None:
    tab = TabData([HEADER, [None, "Typed later", "Bath"], [None, "Ann", "Bath"]])

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, [None, "Ann", "Bath"])])

    assert found.cells == {(3, 1): 7}
    assert found.tab is not None and found.tab.rows[2] == [7, "Ann", "Bath"]
    assert found.tab.rows[1] == [None, "Typed later", "Bath"]


def test_an_edited_row_is_found_where_it_was() -> None:
    tab = TabData([HEADER, [None, "Ann", "Bangor"]])

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, [None, "Ann", "Bath"])])

    assert found.cells == {(2, 1): 7} and found.lost == set()


def test_two_rows_alike_get_one_record_each() -> None:
    cells: list[Cell] = [None, "Ann", "Bath"]
    tab = TabData([HEADER, list(cells), list(cells)])

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, cells), entry(2, 8, 3, cells)])

    assert found.cells == {(2, 1): 7, (3, 1): 8}


def test_a_row_gone_makes_its_record_lost_and_writes_nothing() -> None:
    tab = TabData([HEADER, [5, "Bo", "Bath"]])

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, [None, "Ann", "Bath"])])

    assert found.cells == {} and found.lost == {7} and found.settled == [1]


def test_an_id_is_never_written_into_a_column_headed_otherwise_now() -> None:
    tab = TabData([["Notes", "Name", "City"], [None, "Ann", "Bath"]])

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, [None, "Ann", "Bath"])])

    assert found.cells == {} and found.lost == {7}


def test_a_missing_id_header_is_written_with_the_id() -> None:
    tab = TabData([["", "Name", "City"], [None, "Ann", "Bath"]])

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, [None, "Ann", "Bath"])])

    assert found.cells == {(2, 1): 7, (1, 1): "ID"}


def test_the_tab_read_keeps_its_merged_cells() -> None:
    merges = [CellRange(3, 2, 3, 3)]
    tab = TabData([HEADER, [None, "Ann", "Bath"], [4, "Bo", None]], "v1", merges)

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, [None, "Ann", "Bath"])])

    assert found.tab is not None and found.tab.merges == merges
