"""A workbook the app wrote, opened and saved by LibreOffice Calc, syncs clean."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from openpyxl import load_workbook

from sheetbridge.config import Settings
from sheetbridge.insurance.demo import seed_demo
from sheetbridge.insurance.models import Customer
from sheetbridge.insurance.sync_jobs import FROM_SHEET, TO_SHEET
from sheetbridge.web.app import build_runtime
from sheetbridge.web.deps import Runtime
from sheetbridge.web.security import hash_password
from tests.insurance.test_workbook_sync import run_sync, workbook_path
from tests.support.libreoffice import find_soffice, resave_xlsx

pytestmark = pytest.mark.libreoffice


@pytest.fixture(autouse=True)
def _need_libreoffice() -> None:
    if find_soffice() is None:
        message = (
            "LibreOffice (soffice) is not installed: "
            "apt-get install libreoffice-calc-nogui"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    """The full demo agency, so every kind of demo value makes the round trip."""
    runtime = build_runtime(settings)
    with runtime.db.session() as session:
        seed_demo(session, password_hasher=hash_password)
    yield runtime
    runtime.db.dispose()


def test_workbook_saved_by_calc_imports_nothing_and_needs_no_writes(
    runtime: Runtime,
) -> None:
    run_sync(runtime, "admin", TO_SHEET)
    resave_xlsx(workbook_path(runtime, "admin"))

    imported = run_sync(runtime, "admin", FROM_SHEET)
    pushed = run_sync(runtime, "admin", TO_SHEET)

    assert imported["summary"]["updated"] == 0
    assert imported["summary"]["created"] == 0
    assert imported["summary"]["issues"] == 0, imported["tabs"]
    assert pushed["summary"]["written_cells"] == 0
    assert pushed["summary"]["appended"] == 0
    assert pushed["summary"]["issues"] == 0, pushed["tabs"]


def test_text_calc_saved_keeps_its_exact_characters_through_the_apps_next_save(
    runtime: Runtime,
) -> None:
    # Calc stores text in a shared table, escaped; the app's next save of the
    # workbook must not change a character of text it did not write.
    notes = [
        "code _x0041_ ok",
        "line1\rline2",
        "capital _X0041_ and a x005F_ b",
        "a tab\tand a new\nline",  # Calc itself saves "\r\n" as "\n"
    ]
    run_sync(runtime, "admin", TO_SHEET)
    ids = _customer_ids(runtime)
    with runtime.db.session() as session:
        for record_id, note in zip(ids, notes, strict=False):
            customer = session.get(Customer, record_id)
            assert customer is not None
            customer.notes = note
    run_sync(runtime, "admin", TO_SHEET)
    resave_xlsx(workbook_path(runtime, "admin"))
    first = run_sync(runtime, "admin", FROM_SHEET)
    assert first["summary"]["updated"] == 0, first["tabs"]
    with runtime.db.session() as session:
        unrelated = session.get(Customer, ids[len(notes)])
        assert unrelated is not None
        unrelated.city = "Somewhere Else"

    pushed = run_sync(runtime, "admin", TO_SHEET)
    imported = run_sync(runtime, "admin", FROM_SHEET)

    assert pushed["summary"]["issues"] == 0, pushed["tabs"]
    assert imported["summary"]["updated"] == 0, imported["tabs"]
    assert imported["summary"]["issues"] == 0, imported["tabs"]
    with runtime.db.read_session() as session:
        found = [session.get(Customer, record_id) for record_id in ids[: len(notes)]]
        assert [customer.notes for customer in found if customer] == notes


def _customer_ids(runtime: Runtime) -> list[int]:
    book = load_workbook(workbook_path(runtime, "admin"), read_only=True)
    try:
        rows = book["Customers"].iter_rows(min_row=2, max_col=1, values_only=True)
        return [int(row[0]) for row in rows if row[0] is not None]
    finally:
        book.close()


def test_a_formula_calc_computed_still_reads_as_its_result_after_the_apps_save(
    runtime: Runtime,
) -> None:
    # The app's save (through openpyxl) must not leave the formula without its
    # result, which the next import would report as the user's fault.
    run_sync(runtime, "admin", TO_SHEET)
    path = workbook_path(runtime, "admin")
    book = load_workbook(path)
    customers = book["Customers"]
    header = {cell.value: cell.column for cell in customers[1] if cell.value}
    record_id = int(customers.cell(2, 1).value)
    customers.cell(2, header["City"]).value = '=UPPER("portland")'
    book.save(path)
    resave_xlsx(path)
    imported = run_sync(runtime, "admin", FROM_SHEET)
    assert imported["summary"]["updated"] == 1, imported["tabs"]
    other = next(i for i in _customer_ids(runtime) if i != record_id)
    with runtime.db.session() as session:
        unrelated = session.get(Customer, other)
        assert unrelated is not None
        unrelated.city = "Somewhere Else"

    pushed = run_sync(runtime, "admin", TO_SHEET)
    again = run_sync(runtime, "admin", FROM_SHEET)

    assert pushed["summary"]["written_cells"] >= 1
    assert again["summary"]["issues"] == 0, again["tabs"]
    assert again["summary"]["updated"] == 0, again["tabs"]
    with runtime.db.read_session() as session:
        customer = session.get(Customer, record_id)
        assert customer is not None and customer.city == "PORTLAND"
    city = load_workbook(path)["Customers"].cell(2, header["City"])
    assert city.value == '=UPPER("portland")'
