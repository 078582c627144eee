"""What a sync job reports while it runs, as the status endpoint shows it."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook
from sqlalchemy import select

from sheetbridge.insurance.models import Customer, User
from sheetbridge.queue.worker import WorkerPool
from sheetbridge.sheets.base import SheetBackend, TabChanges, TabData
from sheetbridge.web.deps import Runtime
from tests.insurance.test_workbook_sync import columns, run_sync, workbook_path

WAIT_S = 30


class HeldWrites:
    """A backend whose write waits until the test lets it go."""

    def __init__(self, inner: SheetBackend) -> None:
        self.inner = inner
        self.location = inner.location
        self.cell_limit = inner.cell_limit
        self.writing = threading.Event()
        self.release = threading.Event()

    def read_tabs(self, tabs: Sequence[str]) -> dict[str, TabData | None]:
        return self.inner.read_tabs(tabs)

    def write(
        self, changes: Mapping[str, TabChanges], *, expected_version: str | None = None
    ) -> None:
        self.writing.set()
        assert self.release.wait(WAIT_S), "the test never let the write go"
        self.inner.write(changes, expected_version=expected_version)


def data_rows(runtime: Runtime) -> int:
    book = load_workbook(workbook_path(runtime, "alice"))
    return sum(book[tab].max_row - 1 for tab in ("Customers", "Policies"))


def alices_tab(runtime: Runtime) -> list[int]:
    with runtime.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
        return sorted(
            session.scalars(select(Customer.id).where(Customer.agent_id == alice.id))
        )


def test_status_shows_what_a_sync_to_the_sheet_read_compared_and_writes(
    alice: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_sync(runtime, "alice", "to_sheet")
    rows = data_rows(runtime)
    with runtime.db.session() as session:
        for record_id in alices_tab(runtime)[:2]:
            customer = session.get(Customer, record_id)
            assert customer is not None
            customer.city = "Bar Harbor"
        session.add(Customer(name="New Client", agent_id=_alice(runtime).id))
    real = runtime.sync.backend_for
    held = HeldWrites(real(runtime.sync.target_for(_alice(runtime))))
    monkeypatch.setattr(runtime.sync, "backend_for", lambda target, progress=None: held)
    job = alice.post("/api/insurance/sync/to-sheet").json()
    worker = threading.Thread(
        target=WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty
    )
    worker.start()
    try:
        assert held.writing.wait(WAIT_S)
        progress = alice.get(job["status_url"]).json()["progress"]
    finally:
        held.release.set()
        worker.join(WAIT_S)

    assert progress["phase"] == "writing"
    assert (progress["rows_read"], progress["rows_compared"]) == (rows, rows)
    assert (progress["cells_to_write"], progress["rows_to_append"]) == (2, 1)
    assert progress["rows_to_delete"] == 0
    assert (progress["done"], progress["total"]) == (0, 3)
    assert "cells_written" not in progress
    finished = alice.get(job["status_url"]).json()
    assert finished["state"] == "succeeded"
    progress = finished["progress"]
    assert (progress["done"], progress["total"]) == (3, 3)
    assert (progress["cells_written"], progress["rows_appended"]) == (2, 1)
    assert (progress["rows_deleted"], progress["rows_read"]) == (0, rows)


def test_status_shows_rows_imported_skipped_and_with_errors_from_the_sheet(
    alice: TestClient, runtime: Runtime
) -> None:
    run_sync(runtime, "alice", "to_sheet")
    rows = data_rows(runtime)
    path = workbook_path(runtime, "alice")
    book = load_workbook(path)
    sheet = book["Customers"]
    header = columns(sheet)
    sheet.cell(2, header["City"]).value = "Bar Harbor"
    sheet.cell(3, header["City"]).value = "Camden"
    sheet.cell(4, header["Email"]).value = "not an email"
    sheet.cell(sheet.max_row + 1, header["Name"]).value = "Typed In Sheet"
    book.save(path)

    job = alice.post("/api/insurance/sync/from-sheet").json()
    WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty()
    finished = alice.get(job["status_url"]).json()

    assert finished["state"] == "succeeded"
    progress = finished["progress"]
    assert progress["phase"] == "importing"
    assert (progress["rows_read"], progress["rows_compared"]) == (rows + 1, rows + 1)
    assert (progress["rows_to_import"], progress["rows_imported"]) == (3, 3)
    assert progress["rows_with_errors"] == 1
    assert progress["rows_skipped"] == rows + 1 - 3 - 1
    # The new record's ID and its Agent cell, written back into its row.
    assert progress["cells_written"] == 2
    assert (progress["done"], progress["total"]) == (3, 3)


def _alice(runtime: Runtime) -> User:
    with runtime.db.read_session() as session:
        return session.scalars(select(User).where(User.username == "alice")).one()
