"""One contract for every sheet backend, run on xlsx and on Google (emulated)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import pytest

from sheetbridge.sheets.base import Cell, SheetBackend, TabChanges, TabData
from sheetbridge.sheets.errors import SheetChanged
from sheetbridge.sheets.google import serial_to_date
from sheetbridge.sheets.xlsx import XlsxBackend
from sheetbridge.testing.emulator import EmulatorServer
from sheetbridge.testing.harness import GoogleHarness
from tests.support.server import free_port

Factory = Callable[[], SheetBackend]


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(port=free_port()) as server:
        yield server


@pytest.fixture(params=["xlsx", "google"])
def make_backend(
    request: pytest.FixtureRequest, tmp_path: Path, emulator: EmulatorServer
) -> Factory:
    if request.param == "xlsx":
        path = tmp_path / "book.xlsx"
        return lambda: XlsxBackend(path)
    harness = GoogleHarness(emulator)
    book = harness.spreadsheet("contract")
    return lambda: harness.backend(book)


def read(backend: SheetBackend, tab: str = "T") -> TabData:
    data = backend.read_tabs([tab])[tab]
    assert data is not None
    return data


def as_date(value: Cell) -> date:
    if isinstance(value, date):
        return value if type(value) is date else value.date()  # type: ignore[attr-defined]
    assert isinstance(value, int | float)
    return serial_to_date(value)


def test_missing_tab_reads_as_none(make_backend: Factory) -> None:
    assert make_backend().read_tabs(["Nope"]) == {"Nope": None}


def test_write_creates_tab_with_header_and_reads_it_back(make_backend: Factory) -> None:
    backend = make_backend()
    backend.write({"T": TabChanges(cells={(1, 1): "ID", (1, 2): "Name"})})
    assert read(backend).rows == [["ID", "Name"]]


def test_batched_write_of_several_tabs_and_cells(make_backend: Factory) -> None:
    backend = make_backend()
    backend.write(
        {
            "A": TabChanges(cells={(1, 1): "ID", (2, 1): 1, (3, 1): 2, (3, 3): "x"}),
            "B": TabChanges(cells={(1, 1): "only"}),
        }
    )
    tabs = backend.read_tabs(["A", "B"])
    assert tabs["A"] is not None and tabs["A"].rows == [["ID"], [1], [2, None, "x"]]
    assert tabs["B"] is not None and tabs["B"].rows == [["only"]]


def test_ragged_rows_and_trailing_empties_are_trimmed(make_backend: Factory) -> None:
    backend = make_backend()
    backend.write(
        {"T": TabChanges(cells={(1, 1): "a", (1, 2): "b", (1, 3): "c", (2, 1): "x"})}
    )
    backend.write({"T": TabChanges(cells={(1, 3): None, (3, 1): None})})
    assert read(backend).rows == [["a", "b"], ["x"]]


def test_append_goes_after_last_row_and_none_leaves_cells(
    make_backend: Factory,
) -> None:
    backend = make_backend()
    backend.write({"T": TabChanges(cells={(1, 1): "ID", (1, 2): "Name", (2, 1): 1})})
    backend.write({"T": TabChanges(append=[[2, "two"], [3, None, "extra"]])})
    assert read(backend).rows == [
        ["ID", "Name"],
        [1],
        [2, "two"],
        [3, None, "extra"],
    ]


def test_append_past_the_grid_grows_it(
    make_backend: Factory, emulator: EmulatorServer
) -> None:
    backend = make_backend()
    backend.write({"T": TabChanges(cells={(1, 1): "ID"})})
    rows: list[list[Cell]] = [[n] for n in range(1, 1201)]  # a new tab: 1000 rows
    backend.write({"T": TabChanges(append=rows)})
    data = read(backend)
    assert len(data.rows) == 1201
    assert data.rows[-1] == [1200]


def test_delete_rows_removes_them_highest_first(make_backend: Factory) -> None:
    backend = make_backend()
    cells: dict[tuple[int, int], Cell] = {(1, 1): "ID"}
    cells.update({(row, 1): row for row in range(2, 9)})
    backend.write({"T": TabChanges(cells=cells)})
    backend.write({"T": TabChanges(delete_rows=[3, 5, 6, 8])})
    assert read(backend).rows == [["ID"], [2], [4], [7]]


def test_cells_then_appends_then_deletes_in_one_write(make_backend: Factory) -> None:
    backend = make_backend()
    backend.write({"T": TabChanges(cells={(1, 1): "ID", (2, 1): 1, (3, 1): 2})})
    backend.write(
        {"T": TabChanges(cells={(2, 2): "one"}, append=[[3]], delete_rows=[3])}
    )
    assert read(backend).rows == [["ID"], [1, "one"], [3]]


@pytest.mark.parametrize("title", ["Jon's Data", "CRM26", "Q1 2025", "Полисы 🌵"])
def test_unicode_and_awkward_titles_round_trip(
    make_backend: Factory, title: str
) -> None:
    backend = make_backend()
    backend.write({title: TabChanges(cells={(1, 1): "ID", (2, 1): "ok"})})
    assert read(backend, title).rows == [["ID"], ["ok"]]


@pytest.mark.parametrize(
    "text",
    [
        "00123",
        "+15551234",
        "+Dri7abc",
        '=HYPERLINK("http://x","prize")',
        "@SUM(A1)",
        "-1+1",
        "=1+2",
        "'quoted",
    ],
)
def test_text_stays_literal_text(make_backend: Factory, text: str) -> None:
    backend = make_backend()
    backend.write({"T": TabChanges(cells={(1, 1): text})})
    assert read(backend).rows == [[text]]


def test_dates_and_numbers_round_trip(make_backend: Factory) -> None:
    backend = make_backend()
    backend.write({"T": TabChanges(cells={(1, 1): date(2020, 1, 1), (1, 2): 12.5})})
    row = read(backend).rows[0]
    assert as_date(row[0]) == date(2020, 1, 1)
    assert row[1] == 12.5


def test_write_with_stale_version_raises_changed_and_writes_nothing(
    make_backend: Factory,
) -> None:
    backend = make_backend()
    backend.write({"T": TabChanges(cells={(1, 1): "ID"})})
    version = read(backend).version
    if isinstance(backend, XlsxBackend):
        time.sleep(0.01)  # the xlsx version is the file's mtime
    backend.write({"T": TabChanges(cells={(2, 1): "someone else"})})
    with pytest.raises(SheetChanged):
        backend.write(
            {"T": TabChanges(cells={(3, 1): "mine"})}, expected_version=version
        )
    assert read(backend).rows == [["ID"], ["someone else"]]


@pytest.mark.parametrize("other_tab_read", [False, True])
def test_a_tab_someone_added_since_the_read_is_a_change_the_write_leaves_alone(
    make_backend: Factory, other_tab_read: bool
) -> None:
    # The sync read no tab T and would add it; meanwhile a person added it.
    backend, someone = make_backend(), make_backend()
    someone.write({"U": TabChanges(cells={(1, 1): "theirs"})})
    tabs = backend.read_tabs(["T", "U"] if other_tab_read else ["T"])
    assert tabs["T"] is None
    version = next((tab.version for tab in tabs.values() if tab is not None), "")
    if isinstance(backend, XlsxBackend):
        time.sleep(0.01)  # the xlsx version is the file's mtime
    someone.write({"t": TabChanges(cells={(1, 1): "typed meanwhile"})})

    with pytest.raises(SheetChanged):
        backend.write({"T": TabChanges(cells={(1, 1): "ID"})}, expected_version=version)

    assert read(make_backend(), "T").rows == [["typed meanwhile"]]


def test_write_with_current_version_succeeds(make_backend: Factory) -> None:
    backend = make_backend()
    backend.write({"T": TabChanges(cells={(1, 1): "ID"})})
    version = read(backend).version
    backend.write({"T": TabChanges(append=[["x"]])}, expected_version=version)
    assert read(backend).rows == [["ID"], ["x"]]


def test_ten_thousand_row_tab_round_trips(make_backend: Factory) -> None:
    backend = make_backend()
    rows: list[list[Cell]] = [[n, f"name {n}", n * 1.5] for n in range(1, 10_001)]
    backend.write({"Big": TabChanges(cells={(1, 1): "ID"}, append=rows)})
    data = read(backend, "Big")
    assert len(data.rows) == 10_001
    assert data.rows[-1] == [10_000, "name 10000", 15_000]
