"""New rows typed into the sheet get their records' IDs written back, and a
sync that stops between the import and that write never creates a row's
record twice, nor leaves an ID in the sheet that names no record or another."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook
from sqlalchemy import select

from sheetbridge.insurance.models import Customer, User
from sheetbridge.insurance.review import undo_import
from sheetbridge.insurance.schemas import CustomerCreate
from sheetbridge.insurance.services import Book
from sheetbridge.insurance.sync_jobs import FROM_SHEET, TO_SHEET
from sheetbridge.queue.worker import WorkerPool
from sheetbridge.sheets.errors import SheetInvalidRequest, SheetTransientError
from sheetbridge.sheets.xlsx import XlsxBackend
from sheetbridge.sync.models import PendingId
from sheetbridge.web.app import create_app
from sheetbridge.web.deps import Runtime
from tests.conftest import bearer
from tests.insurance.test_workbook_sync import (
    alices_tab,
    columns,
    run_sync,
    workbook_path,
)

NAMES = ["Typed One", "Typed Two", "Typed Three"]


class WorkerDied(Exception):
    """Stands for the worker process dying at that moment."""


@pytest.fixture
def synced(runtime: Runtime) -> Runtime:
    run_sync(runtime, "alice", TO_SHEET)
    return runtime


def type_new_rows(runtime: Runtime) -> None:
    with alices_tab(runtime) as (customers, header):
        for name in NAMES:
            row = customers.max_row + 1
            customers.cell(row, header["Name"]).value = name
            customers.cell(row, header["City"]).value = "Augusta"


def test_an_import_fills_in_the_app_columns_of_the_rows_it_created(
    synced: Runtime,
) -> None:
    type_new_rows(synced)
    with alices_tab(synced) as (customers, header):
        typed = row_named(customers, NAMES[0])
        customers.cell(typed, header["Agent"]).value = "Someone Typed"

    run_sync(synced, "alice", FROM_SHEET)

    agents = agent_cells(synced)
    assert agents[NAMES[0]] == "Someone Typed", "a person's value is left alone"
    assert {agents[name] for name in NAMES[1:]} == {"alice"}


def agent_cells(runtime: Runtime) -> dict[str, Any]:
    """The Agent cell of each typed name's row."""
    customers = load_workbook(workbook_path(runtime, "alice"))["Customers"]
    header = columns(customers)
    return {
        name: customers.cell(row_named(customers, name), header["Agent"]).value
        for name in NAMES
    }


def test_an_import_with_nothing_to_write_leaves_a_cleared_agent_cell_to_a_to_sheet(
    synced: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sheet may be shared with the app read-only: an import that changes
    # nothing in it must not fail for want of writing the app's own columns.
    with alices_tab(synced) as (customers, header):
        customers.cell(2, header["Agent"]).value = None
    refuse_writes(monkeypatch)

    result = run_sync(synced, "alice", FROM_SHEET)

    assert result["summary"]["updated"] == 0
    assert not result["tabs"]["Customers"]["issues"]
    monkeypatch.undo()
    run_sync(synced, "alice", TO_SHEET)
    customers = load_workbook(workbook_path(synced, "alice"))["Customers"]
    assert customers.cell(2, columns(customers)["Agent"]).value == "alice"


def row_named(customers: Any, name: str) -> int:
    header = columns(customers)
    return next(
        row
        for row in range(2, customers.max_row + 1)
        if customers.cell(row, header["Name"]).value == name
    )


def sheet_ids(runtime: Runtime) -> dict[str, list[Any]]:
    """The IDs in the sheet of each typed name's rows."""
    customers = load_workbook(workbook_path(runtime, "alice"))["Customers"]
    header = columns(customers)
    found: dict[str, list[Any]] = {name: [] for name in NAMES}
    for row in customers.iter_rows(min_row=2, values_only=True):
        name = row[header["Name"] - 1]
        if name in found:
            found[name].append(row[header["ID"] - 1])
    return found


def customers_named(runtime: Runtime) -> dict[str, list[int]]:
    with runtime.db.read_session() as session:
        rows = session.execute(
            select(Customer.name, Customer.id).where(Customer.name.in_(NAMES))
        )
        found: dict[str, list[int]] = {name: [] for name in NAMES}
        for name, record_id in rows:
            found[name].append(record_id)
    return found


def assert_each_row_imported_once(runtime: Runtime) -> None:
    records = customers_named(runtime)
    assert all(len(ids) == 1 for ids in records.values()), records
    assert sheet_ids(runtime) == records


def import_until_it_ends(runtime: Runtime) -> tuple[int, User]:
    """Run a sync from alice's sheet, its retries included, until it ends;
    its job's ID, and alice."""
    with runtime.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
    job_id = runtime.sync.enqueue(alice, FROM_SHEET).job_id
    deadline = time.monotonic() + 30
    while runtime.queue.get(job_id).state in ("queued", "running"):
        assert time.monotonic() < deadline, "the retry never ran"
        WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty()
        time.sleep(0.05)
    return job_id, alice


def failing_sync(runtime: Runtime, kind: str) -> str:
    with runtime.db.read_session() as session:
        user = session.scalars(select(User).where(User.username == "alice")).one()
    queued = runtime.sync.enqueue(user, kind)
    WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty()
    job = runtime.queue.get(queued.job_id)
    assert job.state == "failed"
    return job.error or ""


def import_dies(
    runtime: Runtime, write_fails: Callable[[bool], None], *, after_saving: bool
) -> None:
    """Type new rows and run an import that dies writing their IDs, after or
    before the workbook is saved: their records are pending."""
    type_new_rows(runtime)
    write_fails(after_saving)
    failing_sync(runtime, FROM_SHEET)


@pytest.fixture
def write_fails(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool], None]]:
    """Make the next workbook write die, after (True) or before (False) the
    file is replaced."""
    real = XlsxBackend.write

    def arm(after_saving: bool) -> None:
        def write(self: XlsxBackend, *args: Any, **kwargs: Any) -> None:
            monkeypatch.setattr(XlsxBackend, "write", real)
            if after_saving:
                real(self, *args, **kwargs)
            raise WorkerDied("the worker died")

        monkeypatch.setattr(XlsxBackend, "write", write)

    yield arm
    monkeypatch.setattr(XlsxBackend, "write", real)


def test_an_import_that_dies_after_writing_the_ids_leaves_them_naming_its_records(
    synced: Runtime, write_fails: Callable[[bool], None]
) -> None:
    import_dies(synced, write_fails, after_saving=True)
    run_sync(synced, "alice", FROM_SHEET)

    assert_each_row_imported_once(synced)


def test_an_id_in_the_sheet_is_never_handed_to_another_record(
    synced: Runtime, write_fails: Callable[[bool], None]
) -> None:
    import_dies(synced, write_fails, after_saving=True)

    with synced.db.session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
        made = Book(session, alice).create_customer(CustomerCreate(name="App Made"))
        made_id = made.id

    in_sheet = {i for ids in sheet_ids(synced).values() for i in ids}
    assert made_id not in in_sheet
    run_sync(synced, "alice", FROM_SHEET)
    assert_each_row_imported_once(synced)


@pytest.mark.parametrize("next_sync", [FROM_SHEET, TO_SHEET])
def test_ids_an_import_could_not_write_go_in_with_their_agent_at_the_next_sync_once(
    synced: Runtime, write_fails: Callable[[bool], None], next_sync: str
) -> None:
    import_dies(synced, write_fails, after_saving=False)
    result = run_sync(synced, "alice", next_sync)

    assert_each_row_imported_once(synced)
    assert agent_cells(synced) == dict.fromkeys(NAMES, "alice")
    assert result["summary"].get("created", 0) == 0
    assert result["summary"].get("appended", 0) == 0
    again = run_sync(synced, "alice", FROM_SHEET)["summary"]
    assert again.get("created", 0) == 0 and again["updated"] == 0


def refuse_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: XlsxBackend, *args: Any, **kwargs: Any) -> None:
        raise SheetInvalidRequest("cell A9 is protected", location=str(self.path))

    monkeypatch.setattr(XlsxBackend, "write", refuse)


def busy_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write finds the workbook busy: worth another try, each time."""

    def busy(self: XlsxBackend, *args: Any, **kwargs: Any) -> None:
        raise SheetTransientError("the workbook is busy", location=str(self.path))

    monkeypatch.setattr(XlsxBackend, "write", busy)


def test_an_import_whose_id_write_is_refused_fails_saying_the_import_was_saved(
    synced: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    type_new_rows(synced)
    refuse_writes(monkeypatch)
    error = failing_sync(synced, FROM_SHEET)

    assert error.startswith("cell A9 is protected")
    assert "the import itself was saved" in error
    assert "their IDs go into their rows with the next sync" in error
    again = failing_sync(synced, FROM_SHEET)
    assert "this import changed nothing: the records an earlier import" in again
    monkeypatch.undo()
    run_sync(synced, "alice", TO_SHEET)
    assert_each_row_imported_once(synced)


def test_a_failed_import_that_saved_records_tells_how_many_and_can_be_undone(
    synced: Runtime, monkeypatch: pytest.MonkeyPatch, tokens: dict[str, str]
) -> None:
    type_new_rows(synced)
    refuse_writes(monkeypatch)
    failing_sync(synced, FROM_SHEET)
    with TestClient(create_app(synced, workers=False)) as client:
        client.headers.update(bearer(tokens["alice"]))
        (failed,) = client.get("/api/insurance/sync/status").json()["recent"][:1]
        job = client.get(failed["status_url"]).json()

        assert failed["saved_changes"] == job["saved_changes"] == len(NAMES)
        undone = client.post(f"/api/insurance/sync/jobs/{job['id']}/undo").json()
        assert len(undone["restored"]) == undone["removed"] == len(NAMES)
        assert client.get(failed["status_url"]).json()["saved_changes"] == 0
    assert all(ids == [] for ids in customers_named(synced).values())


def test_an_import_stopped_after_it_saved_tells_how_many_records_it_changed(
    synced: Runtime, monkeypatch: pytest.MonkeyPatch, tokens: dict[str, str]
) -> None:
    type_new_rows(synced)
    with synced.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
    queued = synced.sync.enqueue(alice, FROM_SHEET)

    def stopped(self: XlsxBackend, *args: Any, **kwargs: Any) -> None:
        synced.queue.cancel(queued.job_id)  # Stop pressed, then the write fails
        raise SheetTransientError("the workbook is busy", location=str(self.path))

    monkeypatch.setattr(XlsxBackend, "write", stopped)
    WorkerPool(synced.queue, synced.sync.handlers).run_until_empty()
    with TestClient(create_app(synced, workers=False)) as client:
        client.headers.update(bearer(tokens["alice"]))
        job = client.get(f"/api/insurance/sync/jobs/{queued.job_id}").json()

    assert job["state"] == "cancelled" and job["saved_changes"] == len(NAMES)


def test_an_import_waiting_to_retry_after_it_saved_tells_how_many_records_it_changed(
    synced: Runtime, monkeypatch: pytest.MonkeyPatch, tokens: dict[str, str]
) -> None:
    type_new_rows(synced)
    busy_writes(monkeypatch)
    with synced.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
    queued = synced.sync.enqueue(alice, FROM_SHEET)
    WorkerPool(synced.queue, synced.sync.handlers).run_until_empty()
    with TestClient(create_app(synced, workers=False)) as client:
        client.headers.update(bearer(tokens["alice"]))
        job = client.get(f"/api/insurance/sync/jobs/{queued.job_id}").json()
        (listed,) = client.get("/api/insurance/sync/status").json()["queued"]

    assert (job["state"], job["attempts"]) == ("queued", 1), "waits for its retry"
    assert job["saved_changes"] == listed["saved_changes"] == len(NAMES)


def test_an_import_retried_after_it_saved_reports_what_its_first_attempt_did(
    synced: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    type_new_rows(synced)
    real = XlsxBackend.write

    def busy_once(self: XlsxBackend, *args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(XlsxBackend, "write", real)
        raise SheetTransientError("the workbook is busy", location=str(self.path))

    monkeypatch.setattr(XlsxBackend, "write", busy_once)
    job_id, _ = import_until_it_ends(synced)

    job = synced.queue.get(job_id)
    assert job.state == "succeeded" and job.attempts == 2 and job.result
    created = sorted(i for ids in customers_named(synced).values() for i in ids)
    assert len(created) == len(NAMES)
    assert job.result["summary"]["created"] == len(NAMES)
    assert job.result["tabs"]["Customers"]["counts"]["created"] == len(NAMES)
    assert sorted(job.result["changed"]["customer"]) == created
    assert_each_row_imported_once(synced)
    # Each row counted once: the rows the first attempt created are not
    # "unchanged" as well because the retry found them so.
    counts = job.result["tabs"]["Customers"]["counts"]
    rows = load_workbook(workbook_path(synced, "alice"))["Customers"].max_row - 1
    assert counts["created"] + counts["updated"] + counts["unchanged"] == rows


def test_an_import_that_changed_its_own_new_records_on_a_retry_can_be_undone(
    synced: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    type_new_rows(synced)
    real = XlsxBackend.write

    def busy_while_a_row_is_edited(
        self: XlsxBackend, *args: Any, **kwargs: Any
    ) -> None:
        monkeypatch.setattr(XlsxBackend, "write", real)
        with alices_tab(synced) as (customers, header):
            customers.cell(
                row_named(customers, "Typed Two"), header["City"]
            ).value = "Bangor"
        raise SheetTransientError("the workbook is busy", location=str(self.path))

    monkeypatch.setattr(XlsxBackend, "write", busy_while_a_row_is_edited)
    job_id, alice = import_until_it_ends(synced)
    (two,) = customers_named(synced)["Typed Two"]
    with synced.db.read_session() as session:
        edited = session.get(Customer, two)
        assert edited is not None and (edited.city, edited.version) == ("Bangor", 2)

    with synced.db.session() as session:
        undone = undo_import(session, alice, job_id)

    assert (len(undone.restored), undone.left_alone) == (len(NAMES), [])
    assert customers_named(synced) == {name: [] for name in NAMES}


def test_a_row_edited_before_its_id_was_written_keeps_its_record_and_the_edit(
    synced: Runtime, write_fails: Callable[[bool], None]
) -> None:
    import_dies(synced, write_fails, after_saving=False)
    with alices_tab(synced) as (customers, header):
        customers.cell(
            row_named(customers, "Typed Two"), header["City"]
        ).value = "Bangor"

    run_sync(synced, "alice", FROM_SHEET)

    assert_each_row_imported_once(synced)
    (record_id,) = customers_named(synced)["Typed Two"]
    with synced.db.read_session() as session:
        customer = session.get(Customer, record_id)
        assert customer is not None and customer.city == "Bangor"


def test_a_row_deleted_before_its_id_was_written_is_written_back_not_deleted(
    synced: Runtime, write_fails: Callable[[bool], None]
) -> None:
    import_dies(synced, write_fails, after_saving=False)
    with alices_tab(synced) as (customers, _):
        customers.delete_rows(row_named(customers, "Typed Three"))

    imported = run_sync(synced, "alice", FROM_SHEET)["summary"]
    written = run_sync(synced, "alice", TO_SHEET)["summary"]

    assert imported.get("deleted_in_sheet", 0) == 0
    assert written["appended"] == 1
    assert_each_row_imported_once(synced)


def test_a_book_moved_to_another_sheet_forgets_the_old_sheets_pending_rows(
    synced: Runtime,
    write_fails: Callable[[bool], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A server that may sync with Google (an emulator's token); none is called.
    monkeypatch.setattr(synced.settings, "google_static_token", "emulator-token")
    import_dies(synced, write_fails, after_saving=False)
    with synced.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()

    synced.sync.update_target(alice, backend="google", spreadsheet_id="x" * 20)
    synced.sync.update_target(alice, backend="xlsx")

    with synced.db.read_session() as session:
        assert session.scalars(select(PendingId)).all() == []


def test_a_row_typed_in_place_of_a_deleted_pending_one_becomes_its_own_record(
    synced: Runtime, write_fails: Callable[[bool], None]
) -> None:
    import_dies(synced, write_fails, after_saving=False)
    (three,) = customers_named(synced)["Typed Three"]
    with alices_tab(synced) as (customers, header):
        row = row_named(customers, "Typed Three")
        customers.cell(row, header["Name"]).value = "Someone Else"
        customers.cell(row, header["City"]).value = "Bangor"

    run_sync(synced, "alice", FROM_SHEET)
    run_sync(synced, "alice", TO_SHEET)

    with synced.db.read_session() as session:
        kept = session.get(Customer, three)
        assert kept is not None and kept.name == "Typed Three"
        (other,) = session.scalars(
            select(Customer).where(Customer.name == "Someone Else")
        ).all()
    ids = {name: i for name, ids in sheet_ids(synced).items() for i in ids}
    assert ids["Typed Three"] == three and other.id != three


def test_a_pending_row_edited_past_recognition_never_hands_its_record_to_a_namesake(
    synced: Runtime, write_fails: Callable[[bool], None]
) -> None:
    with alices_tab(synced) as (customers, header):
        row = customers.max_row + 1
        for name, value in (("Name", "Jane Roe"), ("Email", "jane.a@x.com")):
            customers.cell(row, header[name]).value = value
        customers.cell(row, header["City"]).value = "Augusta"
    write_fails(False)
    failing_sync(synced, FROM_SHEET)
    with synced.db.read_session() as session:
        (jane,) = session.scalars(select(Customer).where(Customer.name == "Jane Roe"))
    with alices_tab(synced) as (customers, header):
        row = row_named(customers, "Jane Roe")
        customers.cell(row, header["Name"]).value = "Jane Roe-Smith"
        customers.cell(row, header["Email"]).value = "jane.a2@x.com"
        below = customers.max_row + 1
        customers.cell(below, header["Name"]).value = "Jane Roe"
        customers.cell(below, header["Email"]).value = "jane.b@x.com"
        customers.cell(below, header["City"]).value = "Bangor"

    result = run_sync(synced, "alice", FROM_SHEET)

    with synced.db.read_session() as session:
        kept = session.get(Customer, jane.id)
        assert kept is not None
        assert (kept.name, kept.email, kept.city) == (
            "Jane Roe",
            "jane.a@x.com",
            "Augusta",
        )
        others = session.scalars(
            select(Customer.email).where(
                Customer.name.in_(["Jane Roe", "Jane Roe-Smith"]),
                Customer.id != jane.id,
            )
        ).all()
    assert sorted(others) == ["jane.a2@x.com", "jane.b@x.com"]
    (told,) = [
        issue
        for issue in result["tabs"]["Customers"]["issues"]
        if issue["value"] == str(jane.id)
    ]
    assert told["kind"] == "warning"
    assert "could not be found again" in told["reason"]


def test_rows_of_an_undone_import_are_deleted_by_a_sync_to_the_sheet_in_delete_mode(
    synced: Runtime,
) -> None:
    type_new_rows(synced)
    with synced.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
    queued = synced.sync.enqueue(alice, FROM_SHEET)
    WorkerPool(synced.queue, synced.sync.handlers).run_until_empty()
    with synced.db.session() as session:
        undone = undo_import(session, alice, queued.job_id)
    assert len(undone.restored) == len(NAMES) and not undone.left_alone
    assert undone.note is not None
    assert undone.note.startswith("3 records the import created were deleted")
    synced.sync.update_target(alice, delete_mode="delete")

    result = run_sync(synced, "alice", TO_SHEET)

    assert result["tabs"]["Customers"]["counts"]["deleted"] == len(NAMES)
    assert sheet_ids(synced) == {name: [] for name in NAMES}


def test_while_the_name_header_is_renamed_pending_records_are_left_out_of_a_sync(
    synced: Runtime, write_fails: Callable[[bool], None]
) -> None:
    import_dies(synced, write_fails, after_saving=False)
    with alices_tab(synced) as (customers, header):
        customers.cell(1, header["Name"]).value = "Full name"

    pushed = run_sync(synced, "alice", TO_SHEET)

    issues = pushed["tabs"]["Customers"]["issues"]
    assert not [i for i in issues if i["kind"] == "deleted_in_sheet"], issues
    assert pushed["summary"]["appended"] == 0
    with alices_tab(synced) as (customers, header):
        customers.cell(1, header["Full name"]).value = "Name"
    run_sync(synced, "alice", FROM_SHEET)
    assert_each_row_imported_once(synced)
