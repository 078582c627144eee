"""Finding again the rows of records an import created, whose IDs it may not
have written."""

from __future__ import annotations

from sheetbridge.insurance.mapping import CUSTOMERS, POLICIES
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

    assert found.cells == {} and found.lost == set() and found.settled == []


def test_a_missing_id_header_is_written_with_the_id() -> None:
    tab = TabData([["", "Name", "City"], [None, "Ann", "Bath"]])

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, ANN)])

    assert found.cells == {(2, 1): 7, (1, 1): "ID"}


def test_the_tab_read_keeps_its_merged_cells() -> None:
    merges = [CellRange(3, 2, 3, 3)]
    tab = TabData([HEADER, list(ANN), [4, "Bo", None]], "v1", merges)

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, ANN)])

    assert found.tab is not None and found.tab.merges == merges


HEADER4: list[Cell] = ["ID", "Name", "Email", "City"]


def entry4(key: int, record_id: int, row: int, cells: list[Cell]) -> PendingRow:
    return PendingRow(key, record_id, row, 1, row_values(CUSTOMERS, HEADER4, cells))


A: list[Cell] = [None, "X Dup", "a@x.com", "Augusta"]
B: list[Cell] = [None, "X Dup", "b@x.com", "Bangor"]


def test_of_two_records_of_one_name_an_edited_row_goes_to_the_closer_one() -> None:
    edited_b = [None, "X Dup", "b@x.com", "Brewer"]  # A's row deleted
    tab = TabData([HEADER4, edited_b])

    found = find_rows(CUSTOMERS, tab, [entry4(1, 7, 2, A), entry4(2, 8, 3, B)])

    assert found.cells == {(2, 1): 8} and found.lost == {7}


def test_two_rows_of_one_name_swapped_and_edited_keep_their_records() -> None:
    tab = TabData(
        [
            HEADER4,
            [None, "X Dup", "b@x.com", "Brewer"],
            [None, "X Dup", "a@x.com", "Alna"],
        ]
    )

    found = find_rows(CUSTOMERS, tab, [entry4(1, 7, 2, A), entry4(2, 8, 3, B)])

    assert found.cells == {(2, 1): 8, (3, 1): 7}


def test_a_row_two_records_fit_equally_is_given_to_neither() -> None:
    tab = TabData([HEADER4, [None, "X Dup", "c@x.com", "Calais"]])

    found = find_rows(CUSTOMERS, tab, [entry4(1, 7, 2, A), entry4(2, 8, 3, B)])

    assert found.cells == {} and found.lost == {7, 8}


def test_a_pending_id_typed_into_another_pending_row_does_not_move_the_record() -> None:
    tab = TabData([HEADER4, [8, "Ann", "a@x.com", "Augusta"], [None, *B[1:]]])
    ann: list[Cell] = [None, "Ann", "a@x.com", "Augusta"]

    found = find_rows(CUSTOMERS, tab, [entry4(1, 7, 2, ann), entry4(2, 8, 3, B)])

    # B's own row gets its ID: two rows with ID 8 are then an error to fix,
    # never Ann's values imported over B's record.
    assert found.cells[(3, 1)] == 8 and 8 not in found.lost
    assert 7 in found.lost


def test_a_row_renamed_and_nothing_else_keeps_its_record() -> None:
    tab = TabData([HEADER4, [None, "Ann Marie", "a@x.com", "Augusta"]])
    ann: list[Cell] = [None, "Ann", "a@x.com", "Augusta"]

    found = find_rows(CUSTOMERS, tab, [entry4(1, 7, 2, ann)])

    assert found.cells == {(2, 1): 7}


def test_rows_stay_pending_while_the_name_or_id_header_is_renamed() -> None:
    for header in (["ID", "Full name", "City"], ["Record", "Name", "City"]):
        tab = TabData([header, [None, "Ann", "Bath"]])

        found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, ANN)])

        assert found.settled == [] and found.lost == set() and found.cells == {}
        assert found.unsure == {7}


def test_a_row_whose_id_reads_as_none_gets_its_records_id() -> None:
    tab = TabData([HEADER, ["abc", "Ann", "Bath"]])

    found = find_rows(CUSTOMERS, tab, [entry(1, 7, 2, ANN)])

    assert found.cells == {(2, 1): 7}


def test_a_row_of_the_same_name_with_two_other_values_changed_is_no_match() -> None:
    # The record's row was edited past recognition (name and email), and
    # someone else of the same name typed in below: that row is not its.
    jane: list[Cell] = [None, "Jane Roe", "jane.a@x.com", "Augusta"]
    tab = TabData(
        [
            HEADER4,
            [None, "Jane Roe-Smith", "jane.a2@x.com", "Augusta"],
            [None, "Jane Roe", "jane.b@x.com", "Bangor"],
        ]
    )

    found = find_rows(CUSTOMERS, tab, [entry4(1, 7, 2, jane)])

    assert found.cells == {} and found.lost == {7}


def test_a_row_of_the_same_name_with_one_other_value_changed_is_its_record() -> None:
    jane: list[Cell] = [None, "Jane Roe", "jane.a@x.com", "Augusta"]
    tab = TabData([HEADER4, [None, "Jane Roe", "jane.a@x.com", "Bangor"]])

    found = find_rows(CUSTOMERS, tab, [entry4(1, 7, 2, jane)])

    assert found.cells == {(2, 1): 7}


POLICY_HEADER: list[Cell] = ["ID", "Policy Number", "Carrier", "Premium"]


def test_a_policy_row_is_known_by_its_number_whatever_else_changed() -> None:
    typed: list[Cell] = [None, "HO-1", "Acme", 100]
    pending = PendingRow(1, 7, 2, 1, row_values(POLICIES, POLICY_HEADER, typed))
    tab = TabData([POLICY_HEADER, [None, "HO-1", "Bolt", 250]])

    found = find_rows(POLICIES, tab, [pending])

    assert found.cells == {(2, 1): 7}


def test_a_column_the_app_fills_in_typed_by_hand_is_no_difference() -> None:
    header: list[Cell] = ["ID", "Name", "Email", "City", "Agent"]
    typed: list[Cell] = [None, "Zed Agent", "zed@x.com", "Augusta", None]
    pending = PendingRow(1, 7, 2, 1, row_values(CUSTOMERS, header, typed))
    # The email edited, and the agent's name typed in as the app writes it.
    tab = TabData([header, [None, "Zed Agent", "zed2@x.com", "Augusta", "alice"]])

    found = find_rows(CUSTOMERS, tab, [pending])

    assert found.cells == {(2, 1): 7} and found.lost == set()
