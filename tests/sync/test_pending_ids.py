"""Finding again the rows of records an import created, whose IDs it may not
have written."""

from __future__ import annotations

from sheetbridge.insurance.mapping import CUSTOMERS
from sheetbridge.sheets.base import Cell, CellRange, TabData
from sheetbridge.sync.pending_ids import PendingRow, find_rows, row_values

HEADER: list[Cell] = ["ID", "Name", "City"]


def entry(key: int, record_id: int, row: int, cells: list[Cell]) -> PendingRow:
    """A pending record made from ``cells`` (under HEADER) in ``row``."""
    return PendingRow(key, record_id, row, 1, row_values(CUSTOMERS, HEADER, cells))


ANN: list[Cell] = [None, "Ann", "Bath"]


def test_a_row_that_holds_its_id_already_is_settled_with_nothing_to_write() -> None:
    tab = TabData([HEADER, [7, "Ann", "Bath"]], "v1")

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, ANN)])

    assert found.cells == {} and found.lost == set() and found.settled == [1]
    assert found.tab == tab


def test_a_row_moved_by_rows_inserted_above_is_found_by_its_values() -> None:
    tab = TabData([HEADER, [None, "Typed later", "Bath"], [None, "Ann", "Bath"]])

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, ANN)])

    assert found.cells == {(3, 1): 7}
    assert found.tab is not None and found.tab.rows[2] == [7, "Ann", "Bath"]
    assert found.tab.rows[1] == [None, "Typed later", "Bath"]


def test_a_row_edited_and_moved_is_found_by_its_name() -> None:
    tab = TabData([HEADER, [3, "Bo", "Bath"], [None, "Ann", "Bangor"]])

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, ANN)])

    assert found.cells == {(3, 1): 7} and found.lost == set()


def test_a_row_typed_where_a_deleted_one_was_never_takes_its_record() -> None:
    tab = TabData([HEADER, [None, "Newcomer", "Bath"]])

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, ANN)])

    assert found.cells == {} and found.lost == {7}


def test_columns_moved_around_do_not_hide_a_row() -> None:
    tab = TabData([["City", "ID", "Name"], ["Bath", None, "Ann"]])

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, ANN)])

    assert found.cells == {(2, 2): 7}


def test_two_rows_alike_get_one_record_each() -> None:
    tab = TabData([HEADER, list(ANN), list(ANN)])

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, ANN), entry(2, 8, 3, ANN)])

    assert found.cells == {(2, 1): 7, (3, 1): 8}


def test_a_row_gone_makes_its_record_lost_and_writes_nothing() -> None:
    tab = TabData([HEADER, [5, "Bo", "Bath"]])

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, ANN)])

    assert found.cells == {} and found.lost == {7} and found.settled == [1]


def test_an_id_is_never_written_into_a_column_headed_otherwise_now() -> None:
    tab = TabData([["Notes", "Name", "City"], [None, "Ann", "Bath"]])

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, ANN)])

    assert found.cells == {} and found.lost == {7}


def test_a_missing_id_header_is_written_with_the_id() -> None:
    tab = TabData([["", "Name", "City"], [None, "Ann", "Bath"]])

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, ANN)])

    assert found.cells == {(2, 1): 7, (1, 1): "ID"}


def test_the_tab_read_keeps_its_merged_cells() -> None:
    merges = [CellRange(3, 2, 3, 3)]
    tab = TabData([HEADER, list(ANN), [4, "Bo", None]], "v1", merges)

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, ANN)])

    assert found.tab is not None and found.tab.merges == merges
