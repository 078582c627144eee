"""Syncing a user's book to and from their workbook, through the job queue."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from openpyxl import Workbook, load_workbook
from openpyxl.utils import get_column_letter
from sqlalchemy import select
from sqlalchemy.orm.exc import StaleDataError

from sheetbridge.insurance import sync_jobs
from sheetbridge.insurance.models import Customer, Policy, User
from sheetbridge.insurance.schemas import CustomerCreate
from sheetbridge.insurance.services import Book
from sheetbridge.insurance.sync_jobs import FROM_SHEET, TO_SHEET
from sheetbridge.queue.models import Job
from sheetbridge.queue.worker import WorkerPool
from sheetbridge.sync.models import SyncConflict, SyncSnapshot, SyncTarget
from sheetbridge.web.deps import Runtime


def run_sync(runtime: Runtime, username: str, kind: str) -> dict[str, Any]:
    with runtime.db.read_session() as session:
        user = session.scalars(select(User).where(User.username == username)).one()
    queued = runtime.sync.enqueue(user, kind)
    WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty()
    job = runtime.queue.get(queued.job_id)
    assert job.state == "succeeded", job.error
    assert job.result is not None
    return job.result


def workbook_path(runtime: Runtime, username: str) -> Path:
    return runtime.settings.workbook_dir / f"{username}.xlsx"


def columns(sheet: Any) -> dict[str, int]:
    return {cell.value: cell.column for cell in sheet[1] if cell.value}


def row_of(sheet: Any, record_id: int) -> int:
    for row in range(2, sheet.max_row + 1):
        if sheet.cell(row, 1).value == record_id:
            return row
    raise AssertionError(f"record {record_id} is not in the sheet")


def edit_both_sides(
    runtime: Runtime, sheet: dict[str, object], app: dict[str, object]
) -> tuple[int, dict[str, int]]:
    """Edit the first customer row of alice's workbook and, separately, that
    customer in the app; returns its ID and the sheet's header columns."""
    path = workbook_path(runtime, "alice")
    book = load_workbook(path)
    customers = book["Customers"]
    header = columns(customers)
    record_id = int(customers.cell(2, 1).value)
    for name, value in sheet.items():
        customers.cell(2, header[name]).value = value
    book.save(path)
    with runtime.db.session() as session:
        customer = session.get(Customer, record_id)
        assert customer is not None
        for field, value in app.items():
            setattr(customer, field, value)
    return record_id, header


@pytest.fixture
def synced(runtime: Runtime) -> Runtime:
    run_sync(runtime, "alice", TO_SHEET)
    return runtime


def test_to_sheet_writes_each_book_with_header_and_id_columns(synced: Runtime) -> None:
    book = load_workbook(workbook_path(synced, "alice"))
    assert book.sheetnames == ["Customers", "Policies"]
    with synced.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
        policy_ids = set(
            session.scalars(select(Policy.id).where(Policy.agent_id == alice.id))
        )
    policies = book["Policies"]
    assert [c.value for c in policies[1]][:3] == ["ID", "Policy Number", "Customer ID"]
    assert {row[0] for row in policies.iter_rows(min_row=2, values_only=True)} == (
        policy_ids
    )


def test_unchanged_book_resyncs_with_nothing_to_write_or_import(
    synced: Runtime,
) -> None:
    again = run_sync(synced, "alice", TO_SHEET)["summary"]
    assert again["written_cells"] == 0 and again["appended"] == 0
    assert again["issues"] == 0
    imported = run_sync(synced, "alice", FROM_SHEET)["summary"]
    assert imported["updated"] == 0 and imported.get("created", 0) == 0


def test_from_sheet_imports_edits_and_creates_typed_rows_with_ids_written_back(
    synced: Runtime,
) -> None:
    path = workbook_path(synced, "alice")
    book = load_workbook(path)
    customers = book["Customers"]
    header = columns(customers)
    first_id = customers.cell(2, 1).value
    customers.cell(2, header["City"]).value = "Bar Harbor"
    customers.cell(2, header["ZIP"]).value = "04609"
    new_row = customers.max_row + 1
    customers.cell(new_row, header["Name"]).value = "Typed In Sheet"
    customers.cell(new_row, header["Notes"]).value = "=1+1"
    customers.cell(new_row, header["Notes"]).data_type = "s"
    customers.cell(1, customers.max_column + 1).value = "My own column"
    customers.cell(2, customers.max_column).value = "keep me"
    book.save(path)

    result = run_sync(synced, "alice", FROM_SHEET)

    assert result["tabs"]["Customers"]["counts"]["created"] == 1
    with synced.db.read_session() as session:
        edited = session.get(Customer, first_id)
        typed = session.scalars(
            select(Customer).where(Customer.name == "Typed In Sheet")
        ).one()
    assert edited is not None
    assert (edited.city, edited.zip_code) == ("Bar Harbor", "04609")
    assert typed.notes == "=1+1"
    assert typed.agent.username == "alice"
    sheet = load_workbook(path)["Customers"]
    assert sheet.cell(new_row, 1).value == typed.id
    assert sheet.cell(2, columns(sheet)["My own column"]).value == "keep me"
    assert result["changed"]["customer"] == [first_id, typed.id]
    assert result["created"] == {"customer": [typed.id], "policy": []}
    again = run_sync(synced, "alice", FROM_SHEET)["summary"]
    assert again.get("created", 0) == 0 and again["updated"] == 0


def test_a_row_typed_at_the_bottom_of_the_tab_imports_across_a_million_empty_rows(
    synced: Runtime,
) -> None:
    last = 1_048_576  # the last row a workbook has
    with alices_tab(synced) as (sheet, header):
        sheet.cell(last, header["Name"]).value = "Typed At The Bottom"

    imported = run_sync(synced, "alice", FROM_SHEET)
    written = run_sync(synced, "alice", TO_SHEET)

    (created,) = imported["created"]["customer"]
    assert imported["summary"]["errors"] == 0
    assert customer_field(synced, created, "name") == "Typed At The Bottom"
    with alices_tab(synced) as (sheet, header):
        assert sheet.cell(last, 1).value == created
    assert written["summary"]["appended"] == 0
    # No row is left below: a record added now waits, told, and the sync goes on.
    with synced.db.session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
        waiting = Book(session, alice).create_customer(CustomerCreate(name="No Room"))
    no_room = run_sync(synced, "alice", TO_SHEET)
    (issue,) = no_room["tabs"]["Customers"]["issues"]
    assert issue["value"] == str(waiting.id) and "no row left" in issue["reason"]


def test_invalid_rows_are_reported_by_tab_row_and_column_and_valid_rows_import(
    synced: Runtime,
) -> None:
    path = workbook_path(synced, "alice")
    book = load_workbook(path)
    policies = book["Policies"]
    header = columns(policies)
    good_id = policies.cell(2, 1).value
    policies.cell(2, header["Carrier"]).value = "Granite State Mutual"
    policies.cell(3, header["Premium"]).value = "lots"
    policies.cell(4, header["Status"]).value = "sleeping"
    book.save(path)

    result = run_sync(synced, "alice", FROM_SHEET)

    issues = result["tabs"]["Policies"]["issues"]
    assert {(i["row"], i["column"]) for i in issues if i["kind"] == "error"} == {
        (3, "Premium"),
        (4, "Status"),
    }
    assert all(i["tab"] == "Policies" and i["reason"] for i in issues)
    with synced.db.read_session() as session:
        policy = session.get(Policy, good_id)
    assert policy is not None and policy.carrier == "Granite State Mutual"


def test_text_stays_text_through_a_round_trip(synced: Runtime) -> None:
    with synced.db.session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
        policy = session.scalars(
            select(Policy).where(Policy.agent_id == alice.id).limit(1)
        ).one()
        policy.policy_number = "00123"
        customer = policy.customer
        customer.notes = '=HYPERLINK("http://x","prize")'
        customer.phone = "+15551234"
        policy_id, customer_id = policy.id, customer.id
    run_sync(synced, "alice", TO_SHEET)

    book = load_workbook(workbook_path(synced, "alice"))
    policies, customers = book["Policies"], book["Customers"]
    number = policies.cell(
        row_of(policies, policy_id), columns(policies)["Policy Number"]
    )
    note = customers.cell(row_of(customers, customer_id), columns(customers)["Notes"])
    assert (number.value, number.data_type) == ("00123", "s")
    assert (note.value, note.data_type) == ('=HYPERLINK("http://x","prize")', "s")
    imported = run_sync(synced, "alice", FROM_SHEET)["summary"]
    assert imported["updated"] == 0


def test_neither_direction_overwrites_a_change_from_the_other_side(
    synced: Runtime,
) -> None:
    path = workbook_path(synced, "alice")
    record_id, header = edit_both_sides(
        synced, sheet={"City": "Sheet City"}, app={"city": "App City"}
    )

    pushed = run_sync(synced, "alice", TO_SHEET)
    pulled = run_sync(synced, "alice", FROM_SHEET)

    assert pushed["summary"]["conflicts"] == 1
    assert pulled["summary"]["conflicts"] == 1
    sheet = load_workbook(path)["Customers"]
    assert sheet.cell(2, header["City"]).value == "Sheet City"
    with synced.db.read_session() as session:
        customer = session.get(Customer, record_id)
    assert customer is not None and customer.city == "App City"


def test_agents_sync_to_their_own_workbooks(synced: Runtime) -> None:
    run_sync(synced, "bob", TO_SHEET)
    alice_ids = {
        row[0]
        for row in load_workbook(workbook_path(synced, "alice"))["Customers"].iter_rows(
            min_row=2, values_only=True
        )
    }
    bob_ids = {
        row[0]
        for row in load_workbook(workbook_path(synced, "bob"))["Customers"].iter_rows(
            min_row=2, values_only=True
        )
    }
    assert alice_ids and bob_ids and not alice_ids & bob_ids


def test_app_edit_survives_an_import_of_another_field_of_the_same_row(
    synced: Runtime,
) -> None:
    path = workbook_path(synced, "alice")
    record_id, header = edit_both_sides(
        synced, sheet={"Address": "1 Sheet Street"}, app={"phone": "207-555-1111"}
    )

    run_sync(synced, "alice", FROM_SHEET)
    pushed = run_sync(synced, "alice", TO_SHEET)
    run_sync(synced, "alice", FROM_SHEET)

    assert pushed["summary"]["written_cells"] == 1
    with synced.db.read_session() as session:
        customer = session.get(Customer, record_id)
    assert customer is not None
    assert (customer.phone, customer.address) == ("207-555-1111", "1 Sheet Street")
    sheet = load_workbook(path)["Customers"]
    assert sheet.cell(2, header["Phone"]).value == "207-555-1111"


def test_a_conflict_stays_a_conflict_until_resolved(synced: Runtime) -> None:
    path = workbook_path(synced, "alice")
    record_id, header = edit_both_sides(
        synced,
        sheet={"City": "Sheet City", "Address": "2 Sheet Street"},
        app={"city": "App City"},
    )

    results = [
        run_sync(synced, "alice", direction)
        for direction in (FROM_SHEET, TO_SHEET, FROM_SHEET, TO_SHEET)
    ]

    assert [r["summary"]["conflicts"] for r in results] == [1, 1, 1, 1]
    with synced.db.read_session() as session:
        customer = session.get(Customer, record_id)
    assert customer is not None
    assert (customer.city, customer.address) == ("App City", "2 Sheet Street")
    assert load_workbook(path)["Customers"].cell(2, header["City"]).value == (
        "Sheet City"
    )


def test_an_app_save_arriving_during_an_imports_transaction_waits_for_it(
    synced: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Once the import has read the records it updates, a save of one of them
    # (another web process, on PostgreSQL) waits until the import is done:
    # the import never finds a record changed under it at its own write.
    record_id, _ = edit_both_sides(synced, sheet={"Address": "2 Sheet Street"}, app={})
    real_load = sync_jobs._Importer._load
    saver: list[threading.Thread] = []

    def save_phone() -> None:
        with contextlib.suppress(StaleDataError), synced.db.session() as session:
            customer = session.get(Customer, record_id)
            assert customer is not None
            customer.phone = "207-555-0142"

    def load_then_someone_saves(self: Any, record_ids: Any) -> list[Any]:
        loaded = real_load(self, record_ids)
        if not saver and self.mapping is sync_jobs.CUSTOMERS:
            saver.append(threading.Thread(target=save_phone))
            saver[0].start()
            time.sleep(0.3)  # the save runs now, or waits
        return loaded

    monkeypatch.setattr(sync_jobs._Importer, "_load", load_then_someone_saves)
    result = run_sync(synced, "alice", FROM_SHEET)
    saver[0].join(10)

    reasons = [issue["reason"] for issue in result["tabs"]["Customers"]["issues"]]
    assert not any("while this sync ran" in reason for reason in reasons), reasons
    assert customer_field(synced, record_id, "address") == "2 Sheet Street"


def test_a_row_whose_one_difference_is_a_conflict_is_not_counted_unchanged_too(
    synced: Runtime,
) -> None:
    edit_both_sides(synced, sheet={"City": "Sheet City"}, app={"city": "App City"})
    rows = len(list(load_workbook(workbook_path(synced, "alice"))["Customers"])) - 1

    counts = run_sync(synced, "alice", FROM_SHEET)["tabs"]["Customers"]["counts"]

    assert (counts["conflicts"], counts["updated"]) == (1, 0)
    assert counts["unchanged"] == rows - 1


def test_an_app_edit_landing_while_an_import_runs_is_merged_field_by_field_at_once(
    synced: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The import compared the book as it was before the edit. The field both
    # sides changed is an open conflict at once, not one left for the next
    # sync; the field only the sheet changed imports; the app's edit stays.
    record_id, _ = edit_both_sides(
        synced, sheet={"City": "Sheet City", "Address": "2 Sheet Street"}, app={}
    )
    real_import = sync_jobs.SyncService._import

    def edited_meanwhile(self: sync_jobs.SyncService, *args: Any) -> Any:
        with synced.db.session() as session:
            customer = session.get(Customer, record_id)
            assert customer is not None
            customer.city, customer.phone = "App City", "207-555-0199"
        return real_import(self, *args)

    monkeypatch.setattr(sync_jobs.SyncService, "_import", edited_meanwhile)
    result = run_sync(synced, "alice", FROM_SHEET)
    monkeypatch.undo()

    assert (
        customer_field(synced, record_id, "city"),
        customer_field(synced, record_id, "address"),
        customer_field(synced, record_id, "phone"),
    ) == ("App City", "2 Sheet Street", "207-555-0199")
    tab = result["tabs"]["Customers"]
    assert [(c["record_id"], c["field"]) for c in tab["conflicts"]] == [
        (record_id, "city")
    ]
    assert [i["column"] for i in tab["issues"] if i["kind"] == "conflict"] == ["City"]
    assert (result["summary"]["updated"], result["summary"]["conflicts"]) == (1, 1)
    with synced.db.read_session() as session:
        (stored,) = session.scalars(select(SyncConflict)).all()
    assert (stored.app_value, stored.sheet_value) == ("App City", "Sheet City")
    # The next import finds the same conflict, and nothing else to do.
    again = run_sync(synced, "alice", FROM_SHEET)["summary"]
    assert (again["updated"], again["conflicts"]) == (0, 1)


@contextmanager
def alices_tab(
    runtime: Runtime, tab: str = "Customers"
) -> Iterator[tuple[Any, dict[str, int]]]:
    """A tab of alice's workbook and its columns by header; saved on leaving."""
    path = workbook_path(runtime, "alice")
    book = load_workbook(path)
    sheet = book[tab]
    yield sheet, columns(sheet)
    book.save(path)


def customer_field(runtime: Runtime, record_id: int, name: str) -> Any:
    with runtime.db.read_session() as session:
        customer = session.get(Customer, record_id)
        assert customer is not None
        return getattr(customer, name)


def sheet_cell(runtime: Runtime, row: int, column: int) -> Any:
    return (
        load_workbook(workbook_path(runtime, "alice"))["Customers"]
        .cell(row, column)
        .value
    )


def errors_of(result: dict[str, Any], tab: str = "Customers") -> list[dict[str, Any]]:
    return [i for i in result["tabs"][tab]["issues"] if i["kind"] == "error"]


def failed_import(runtime: Runtime) -> Job:
    """Run an import of alice's book that must fail; the failed job."""
    with runtime.db.read_session() as session:
        user = session.scalars(select(User).where(User.username == "alice")).one()
    queued = runtime.sync.enqueue(user, FROM_SHEET)
    WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty()
    job = runtime.queue.get(queued.job_id)
    assert job.state == "failed" and job.error is not None
    return job


def test_a_workbook_linked_from_the_data_folder_is_followed_anew_at_each_sync(
    runtime: Runtime,
) -> None:
    # The link is there before the book's first sync, and is pointed
    # elsewhere later: the book keeps the link's path, not its first target.
    path = workbook_path(runtime, "alice")
    shared = path.parent.parent / "shared"
    shared.mkdir(parents=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(shared / "old.xlsx")
    run_sync(runtime, "alice", TO_SHEET)
    (shared / "new.xlsx").write_bytes((shared / "old.xlsx").read_bytes())
    path.unlink()
    path.symlink_to(shared / "new.xlsx")
    record_id = int(load_workbook(shared / "new.xlsx")["Customers"].cell(2, 1).value)
    with runtime.db.session() as session:
        customer = session.get(Customer, record_id)
        assert customer is not None
        customer.notes = "written through the new link"

    result = run_sync(runtime, "alice", TO_SHEET)

    assert result["workbook"] == str(path)
    assert path.is_symlink()
    assert "written through the new link" in _texts_of(shared / "new.xlsx")
    assert "written through the new link" not in _texts_of(shared / "old.xlsx")


def test_the_same_workbook_named_another_way_is_no_new_sheet_to_forget_the_last_sync(
    synced: Runtime,
) -> None:
    # A book whose stored path reaches its workbook through a linked folder
    # (as one resolved by an older version may): choosing the workbook again
    # keeps what the last sync agreed on.
    path = workbook_path(synced, "alice")
    alias = path.parent.parent / "alias"
    alias.symlink_to(path.parent)
    with synced.db.session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
        target = session.scalars(
            select(SyncTarget).where(SyncTarget.user_id == alice.id)
        ).one()
        target.location = str(alias / path.name)
        snapshots = len(
            session.scalars(
                select(SyncSnapshot).where(SyncSnapshot.target_id == target.id)
            ).all()
        )
    assert snapshots > 0

    updated = synced.sync.update_target(alice, backend="xlsx")

    assert updated.location == str(path)
    with synced.db.read_session() as session:
        kept = session.scalars(
            select(SyncSnapshot).where(SyncSnapshot.target_id == updated.id)
        ).all()
    assert len(kept) == snapshots


def _texts_of(path: Path) -> set[Any]:
    return {cell for row in load_workbook(path)["Customers"].values for cell in row}


def test_a_workbook_link_that_leads_round_in_a_loop_fails_at_once_saying_so(
    synced: Runtime,
) -> None:
    path = workbook_path(synced, "alice")
    path.unlink()
    path.symlink_to(path.with_name("loop.xlsx"))
    path.with_name("loop.xlsx").symlink_to(path)

    job = failed_import(synced)

    assert job.attempts == 1
    assert job.error is not None and "links lead round in a loop" in job.error


def test_text_cut_at_the_workbook_cell_limit_is_never_imported(
    synced: Runtime,
) -> None:
    with alices_tab(synced) as (customers, header):
        record_id = customers.cell(2, 1).value
        customers.cell(2, header["Notes"]).value = "n" * 50_001
    notes_before = customer_field(synced, record_id, "notes")

    errors = errors_of(run_sync(synced, "alice", FROM_SHEET))

    assert [(i["row"], i["column"]) for i in errors] == [(2, "Notes")]
    assert "32,767" in errors[0]["reason"]
    assert customer_field(synced, record_id, "notes") == notes_before


def test_a_row_error_shows_an_over_long_value_cut_whichever_check_refused_it(
    synced: Runtime,
) -> None:
    with alices_tab(synced) as (customers, header):
        customers.cell(2, header["Notes"]).value = "n" * 40_000  # over a cell's
        customers.cell(3, header["City"]).value = "c" * 5_000  # over the column's
        customers.cell(4, header["Email"]).value = "e" * 250  # no email address
        customers.cell(5, header["Name"]).value = "\u200b" * 150  # nothing visible

    errors = errors_of(run_sync(synced, "alice", FROM_SHEET))

    shown = {(i["row"], i["column"]): i["value"] for i in errors}
    assert shown == {
        (2, "Notes"): "n" * 79 + "…",
        (3, "City"): "c" * 79 + "…",
        (4, "Email"): "e" * 79 + "…",
        (5, "Name"): "\u200b" * 79 + "…",
    }
    with alices_tab(synced) as (customers, header):
        assert customers.cell(3, header["City"]).value == "c" * 5_000
        assert customers.cell(4, header["Email"]).value == "e" * 250


def test_a_conflicts_long_values_are_cut_in_the_job_result_and_kept_whole_to_resolve(
    synced: Runtime,
) -> None:
    edit_both_sides(synced, sheet={"Notes": "s" * 5_000}, app={"notes": "a" * 5_000})

    results = [run_sync(synced, "alice", kind) for kind in (FROM_SHEET, TO_SHEET)]

    for result in results:
        (conflict,) = result["tabs"]["Customers"]["conflicts"]
        assert (conflict["app"], conflict["sheet"]) == ("a" * 79 + "…", "s" * 79 + "…")
    with synced.db.read_session() as session:
        (stored,) = session.scalars(select(SyncConflict)).all()
        assert (stored.app_value, stored.sheet_value) == ("a" * 5_000, "s" * 5_000)


def test_a_results_lists_of_conflicts_and_changed_records_are_cut_counts_not(
    synced: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync_jobs, "MAX_REPORTED_ISSUES", 1)
    monkeypatch.setattr(sync_jobs, "MAX_REPORTED_CHANGED", 2)
    with alices_tab(synced) as (customers, header):
        ids = [customers.cell(row, 1).value for row in (2, 3, 4)]
        for row in (2, 3, 4):
            customers.cell(row, header["City"]).value = f"Sheet {row}"
    with synced.db.session() as session:
        for customer in session.scalars(select(Customer).where(Customer.id.in_(ids))):
            customer.city = f"App {customer.id}"
    conflicted = run_sync(synced, "alice", FROM_SHEET)
    with alices_tab(synced) as (customers, header):
        for row in range(5, 8):
            customers.cell(row, header["Notes"]).value = f"note {row}"

    imported = run_sync(synced, "alice", FROM_SHEET)

    tab = conflicted["tabs"]["Customers"]
    assert tab["counts"]["conflicts"] == 3 and len(tab["conflicts"]) == 1
    assert imported["summary"]["updated"] == 3
    assert len(imported["changed"]["customer"]) == 2 and imported["changed_cut"]


def test_a_cut_list_of_issues_keeps_errors_before_notices_and_says_it_is_cut(
    synced: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync_jobs, "MAX_REPORTED_ISSUES", 2)
    with alices_tab(synced) as (customers, header):
        customers.delete_rows(2, 3)  # three notices: rows deleted in the sheet
        bad = customers.max_row
        customers.cell(bad, header["ZIP"]).value = "1.1"

    result = run_sync(synced, "alice", FROM_SHEET)

    tab = result["tabs"]["Customers"]
    assert tab["counts"]["errors"] == 1 and tab["counts"]["deleted_in_sheet"] == 3
    first, second = tab["issues"]
    assert (first["row"], first["column"], first["kind"]) == (bad, "ZIP", "error")
    assert second["kind"] == "deleted_in_sheet"
    assert tab["issues_cut"] is True and tab["conflicts_cut"] is False
    assert result["tabs"]["Policies"]["issues_cut"] is False


def test_a_date_of_birth_in_the_future_is_a_row_error_and_never_imported(
    synced: Runtime,
) -> None:
    tomorrow = (datetime.now(UTC) + timedelta(days=2)).date()  # wherever you are
    with alices_tab(synced) as (customers, header):
        record_id = customers.cell(2, 1).value
        customers.cell(2, header["Date of Birth"]).value = tomorrow
        new_row = customers.max_row + 1
        customers.cell(new_row, header["Name"]).value = "Born Later"
        customers.cell(new_row, header["Date of Birth"]).value = "2099-12-31"
    born_before = customer_field(synced, record_id, "date_of_birth")

    results = [run_sync(synced, "alice", kind) for kind in (TO_SHEET, FROM_SHEET)]

    for result in results:
        told = {(i["row"], i["column"]): i for i in errors_of(result)}
        assert sorted(told) == [(2, "Date of Birth"), (new_row, "Date of Birth")]
        assert told[(2, "Date of Birth")]["value"] == tomorrow.isoformat()
        assert told[(new_row, "Date of Birth")]["value"] == "2099-12-31"
        for issue in told.values():
            assert "must not be in the future" in issue["reason"]
    assert customer_field(synced, record_id, "date_of_birth") == born_before
    with synced.db.read_session() as session:
        assert (
            session.scalars(select(Customer).where(Customer.name == "Born Later")).all()
            == []
        )


def test_a_formula_without_a_saved_result_is_reported_and_never_imported(
    synced: Runtime,
) -> None:
    # openpyxl (and so any script, or a save by the app itself) stores formulas
    # without their results; reading one as empty would clear the app's value.
    with alices_tab(synced) as (customers, header):
        record_id = customers.cell(3, 1).value
        customers.cell(3, header["City"]).value = '=UPPER("boston")'
        customers.cell(4, header["Notes"]).value = "typed notes"
    city_before = customer_field(synced, record_id, "city")

    result = run_sync(synced, "alice", FROM_SHEET)

    errors = errors_of(result)
    assert [(i["row"], i["column"]) for i in errors] == [(3, "City")]
    assert "formula" in errors[0]["reason"]
    assert result["tabs"]["Customers"]["counts"]["updated"] >= 1
    assert customer_field(synced, record_id, "city") == city_before
    run_sync(synced, "alice", TO_SHEET)
    assert sheet_cell(synced, 3, header["City"]) == '=UPPER("boston")'


def test_a_cell_showing_a_spreadsheet_error_is_reported_and_never_imported(
    synced: Runtime,
) -> None:
    # A lookup that failed leaves #N/A in the cell: the value is missing, and
    # importing the error's text would overwrite the app's real one.
    with alices_tab(synced) as (customers, header):
        record_id = customers.cell(2, 1).value
        city = customers.cell(2, header["City"])
        city.value, city.data_type = "#N/A", "e"
        notes = customers.cell(3, header["Notes"])
        notes.value, notes.data_type = "#REF!", "e"
        customers.cell(4, header["Notes"]).value = "typed notes"
    city_before = customer_field(synced, record_id, "city")

    result = run_sync(synced, "alice", FROM_SHEET)

    errors = errors_of(result)
    assert [(i["row"], i["column"]) for i in errors] == [(2, "City"), (3, "Notes")]
    assert "#N/A" in errors[0]["reason"] and "#REF!" in errors[1]["reason"]
    assert result["tabs"]["Customers"]["counts"]["updated"] == 1
    assert customer_field(synced, record_id, "city") == city_before
    with synced.db.read_session() as session:
        notes_found = session.scalars(select(Customer.notes)).all()
    assert "#REF!" not in notes_found and "typed notes" in notes_found
    # The sheet keeps the error for its owner to fix; nothing overwrites it.
    run_sync(synced, "alice", TO_SHEET)
    assert sheet_cell(synced, 2, header["City"]) == "#N/A"


@pytest.mark.parametrize("error_cell_elsewhere", [False, True])
def test_text_that_reads_like_a_spreadsheet_error_round_trips_as_text(
    synced: Runtime, error_cell_elsewhere: bool
) -> None:
    # Only a real error cell is an error: a note the app wrote stays a note,
    # whichever reader the workbook needs.
    with alices_tab(synced) as (customers, header):
        record_id = customers.cell(2, 1).value
        if error_cell_elsewhere:
            city = customers.cell(3, header["City"])
            city.value, city.data_type = "#N/A", "e"
    with synced.db.session() as session:
        customer = session.get(Customer, record_id)
        assert customer is not None
        customer.notes = "#N/A"

    pushed = run_sync(synced, "alice", TO_SHEET)
    pulled = run_sync(synced, "alice", FROM_SHEET)

    assert sheet_cell(synced, 2, header["Notes"]) == "#N/A"
    assert [i for i in errors_of(pushed) if i["row"] == 2] == []
    assert [i for i in errors_of(pulled) if i["row"] == 2] == []
    assert customer_field(synced, record_id, "notes") == "#N/A"


def test_a_sheet_edit_the_import_would_refuse_is_told_as_an_error_by_to_sheet(
    synced: Runtime,
) -> None:
    with alices_tab(synced) as (customers, header):
        customers.cell(2, header["ZIP"]).value = "ABCDE"
        customers.cell(3, header["City"]).value = "Newtown"
        customers.cell(4, header["ZIP"]).value = 4001  # a number: imported as 04001

    pushed = run_sync(synced, "alice", TO_SHEET)
    pulled = run_sync(synced, "alice", FROM_SHEET)

    told = {(i["row"], i["column"]): i for i in pushed["tabs"]["Customers"]["issues"]}
    assert told[(2, "ZIP")]["kind"] == "error"
    assert "fix it in the sheet" in told[(2, "ZIP")]["reason"]
    assert told[(3, "City")]["kind"] == "pending_import"
    assert told[(4, "ZIP")]["kind"] == "pending_import"
    assert [(i["row"], i["column"]) for i in errors_of(pulled)] == [(2, "ZIP")]
    assert pushed["tabs"]["Customers"]["counts"]["errors"] == 1


def test_an_edit_in_a_row_with_an_error_is_told_to_wait_for_the_row_to_be_fixed(
    synced: Runtime,
) -> None:
    with alices_tab(synced) as (customers, header):
        customers.cell(2, header["State"]).value = "12"
        customers.cell(2, header["City"]).value = "Newtown"
        customers.cell(3, header["City"]).value = "Oldtown"

    pushed = run_sync(synced, "alice", TO_SHEET)
    pulled = run_sync(synced, "alice", FROM_SHEET)

    told = {(i["row"], i["column"]): i for i in pushed["tabs"]["Customers"]["issues"]}
    assert told[(2, "City")]["kind"] == "pending_import"
    assert "errors in this row" in told[(2, "City")]["reason"]
    assert "errors in this row" not in told[(3, "City")]["reason"]
    (error,) = errors_of(pulled)
    assert (error["row"], error["column"]) == (2, "State")
    assert "nothing of this row was imported" in error["reason"]


def test_a_code_typed_as_a_number_is_imported_padded_and_written_back_as_text(
    synced: Runtime,
) -> None:
    with alices_tab(synced) as (customers, header):
        record_id = customers.cell(2, 1).value
        customers.cell(2, header["ZIP"]).value = 4001  # the program dropped the 0

    run_sync(synced, "alice", FROM_SHEET)
    pushed = run_sync(synced, "alice", TO_SHEET)
    again = run_sync(synced, "alice", TO_SHEET)

    assert customer_field(synced, record_id, "zip_code") == "04001"
    assert sheet_cell(synced, 2, header["ZIP"]) == "04001"
    assert pushed["summary"]["written_cells"] == 1
    assert again["summary"]["written_cells"] == 0


def test_a_new_sheet_row_the_import_would_refuse_is_told_as_an_error_by_to_sheet(
    synced: Runtime,
) -> None:
    with alices_tab(synced) as (customers, header):
        last = customers.max_row
        customers.cell(last + 1, header["Name"]).value = "Ann Lee"
        customers.cell(last + 1, header["ZIP"]).value = "ABCDE"
        customers.cell(last + 2, header["Name"]).value = "Bo Chan"
        customers.cell(last + 2, header["State"]).value = "me"

    pushed = run_sync(synced, "alice", TO_SHEET)
    pulled = run_sync(synced, "alice", FROM_SHEET)

    told = {(i["row"], i["column"]): i for i in pushed["tabs"]["Customers"]["issues"]}
    assert told[(last + 1, "ZIP")]["kind"] == "error"
    assert "fix it in the sheet" in told[(last + 1, "ZIP")]["reason"]
    assert told[(last + 2, None)]["kind"] == "pending_import"
    assert pushed["tabs"]["Customers"]["counts"]["pending_import"] == 1
    refused = [i for i in pulled["tabs"]["Customers"]["issues"] if i["kind"] == "error"]
    assert [(i["row"], i["column"]) for i in refused] == [(last + 1, "ZIP")]
    assert pulled["tabs"]["Customers"]["counts"]["created"] == 1


def test_edits_the_record_as_a_whole_would_refuse_are_told_as_errors_by_to_sheet(
    synced: Runtime,
) -> None:
    with alices_tab(synced, "Policies") as (policies, header):
        policies.cell(2, header["Expiration Date"]).value = date(1990, 1, 1)
        policies.cell(3, header["Customer ID"]).value = 999999
        policies.cell(4, header["Carrier"]).value = "Harbor Mutual"

    pushed = run_sync(synced, "alice", TO_SHEET)
    pulled = run_sync(synced, "alice", FROM_SHEET)

    told = {(i["row"], i["column"]): i for i in pushed["tabs"]["Policies"]["issues"]}
    assert told[(2, "Expiration Date")]["kind"] == "error"
    # The dates as read, both: the one refused may not be the one edited.
    assert (
        "1990-01-01 is before the effective date, 20"
        in (told[(2, "Expiration Date")]["reason"])
    )
    assert told[(3, "Customer ID")]["kind"] == "error"
    assert "no customer 999999 in your book" in told[(3, "Customer ID")]["reason"]
    assert told[(4, "Carrier")]["kind"] == "pending_import"
    refused = [i for i in pulled["tabs"]["Policies"]["issues"] if i["kind"] == "error"]
    assert sorted(i["row"] for i in refused) == [2, 3]


def test_a_policy_number_used_twice_in_the_book_is_told_as_an_error_by_to_sheet(
    synced: Runtime,
) -> None:
    with alices_tab(synced, "Policies") as (policies, header):
        taken = policies.cell(2, header["Policy Number"]).value
        policies.cell(3, header["Policy Number"]).value = taken
        policies.cell(4, header["Policy Number"]).value = "NEW-0001"
        last = policies.max_row
        for column in ("Customer ID", "Line of Business", "Carrier", "Premium"):
            policies.cell(last + 1, header[column]).value = policies.cell(
                2, header[column]
            ).value
        policies.cell(last + 1, header["Status"]).value = "active"
        policies.cell(last + 1, header["Effective Date"]).value = date(2026, 1, 1)
        policies.cell(last + 1, header["Expiration Date"]).value = date(2027, 1, 1)
        policies.cell(last + 1, header["Policy Number"]).value = "NEW-0001"

    pushed = run_sync(synced, "alice", TO_SHEET)
    pulled = run_sync(synced, "alice", FROM_SHEET)

    issues = pushed["tabs"]["Policies"]["issues"]
    told = {(i["row"], i["column"]): i for i in issues}
    assert told[(3, "Policy Number")]["kind"] == "error"
    assert "row 2" in told[(3, "Policy Number")]["reason"]
    assert told[(4, "Policy Number")]["kind"] == "error"
    assert f"row {last + 1}" in told[(4, "Policy Number")]["reason"]
    assert told[(last + 1, "Policy Number")]["kind"] == "error"
    assert "row 4" in told[(last + 1, "Policy Number")]["reason"]
    pulled_errors = {
        i["row"] for i in pulled["tabs"]["Policies"]["issues"] if i["kind"] == "error"
    }
    assert {3, last + 1} <= pulled_errors


def test_a_policy_number_of_another_agents_book_is_told_as_an_error_by_to_sheet(
    synced: Runtime,
) -> None:
    with synced.db.read_session() as session:
        bob = session.scalars(select(User).where(User.username == "bob")).one()
        theirs = session.scalars(
            select(Policy.policy_number).where(Policy.agent_id == bob.id).limit(2)
        ).all()
    with alices_tab(synced, "Policies") as (policies, header):
        policies.cell(3, header["Policy Number"]).value = theirs[0]
        last = policies.max_row
        for column in header:
            if column != "ID":
                policies.cell(last + 1, header[column]).value = policies.cell(
                    2, header[column]
                ).value
        policies.cell(last + 1, header["Policy Number"]).value = theirs[1]

    pushed = run_sync(synced, "alice", TO_SHEET)

    told = {(i["row"], i["column"]): i for i in pushed["tabs"]["Policies"]["issues"]}
    for row, number in ((3, theirs[0]), (last + 1, theirs[1])):
        assert told[(row, "Policy Number")]["kind"] == "error"
        assert f"{number} is already used" in told[(row, "Policy Number")]["reason"]
        assert "bob" not in told[(row, "Policy Number")]["reason"]
    assert pushed["tabs"]["Policies"]["counts"]["pending_import"] == 0


def test_a_customer_id_that_is_no_record_id_is_told_in_plain_words_both_ways(
    synced: Runtime,
) -> None:
    with alices_tab(synced, "Policies") as (policies, header):
        policies.cell(2, header["Customer ID"]).value = -1
        policies.cell(3, header["Customer ID"]).value = 2**31

    pushed = run_sync(synced, "alice", TO_SHEET)
    pulled = run_sync(synced, "alice", FROM_SHEET)

    for result in (pushed, pulled):
        told = {
            (i["row"], i["column"]): i["reason"] for i in errors_of(result, "Policies")
        }
        assert sorted(told) == [(2, "Customer ID"), (3, "Customer ID")]
        for reason in told.values():
            assert "must be a record ID, a whole number from 1" in reason
            assert "Input should" not in reason


def test_rows_an_import_would_give_one_new_policy_number_are_all_refused(
    synced: Runtime,
) -> None:
    with alices_tab(synced, "Policies") as (policies, header):
        last = policies.max_row
        for new in (last + 1, last + 2):
            for column in header:
                if column != "ID":
                    policies.cell(new, header[column]).value = policies.cell(
                        2, header[column]
                    ).value
            policies.cell(new, header["Policy Number"]).value = "TWICE-0001"
        policies.cell(3, header["Policy Number"]).value = "TWICE-0002"
        policies.cell(4, header["Policy Number"]).value = "TWICE-0002"
        policies.cell(4, header["Carrier"]).value = "Other Carrier"

    pulled = run_sync(synced, "alice", FROM_SHEET)

    told = {(i["row"], i["column"]): i for i in errors_of(pulled, "Policies")}
    assert "row " + str(last + 2) in told[(last + 1, "Policy Number")]["reason"]
    assert "row " + str(last + 1) in told[(last + 2, "Policy Number")]["reason"]
    assert "row 4" in told[(3, "Policy Number")]["reason"]
    assert "row 3" in told[(4, "Policy Number")]["reason"]
    with synced.db.read_session() as session:
        taken = session.scalars(
            select(Policy.policy_number).where(Policy.policy_number.like("TWICE-%"))
        ).all()
    assert taken == []
    assert pulled["tabs"]["Policies"]["counts"]["created"] == 0


def test_a_new_policy_row_for_a_customer_not_in_the_book_is_an_error_in_to_sheet(
    synced: Runtime,
) -> None:
    with alices_tab(synced, "Policies") as (policies, header):
        last = policies.max_row
        for column in header:
            if column != "ID":
                policies.cell(last + 1, header[column]).value = policies.cell(
                    2, header[column]
                ).value
        policies.cell(last + 1, header["Policy Number"]).value = "NEW-0002"
        policies.cell(last + 1, header["Customer ID"]).value = 999999

    pushed = run_sync(synced, "alice", TO_SHEET)

    told = {(i["row"], i["column"]): i for i in pushed["tabs"]["Policies"]["issues"]}
    assert told[(last + 1, "Customer ID")]["kind"] == "error"
    assert "customer 999999" in told[(last + 1, "Customer ID")]["reason"]
    assert pushed["tabs"]["Policies"]["counts"]["pending_import"] == 0


def test_a_renamed_header_never_blanks_that_field_in_the_app(synced: Runtime) -> None:
    cities = _cities(synced)
    with alices_tab(synced) as (customers, header):
        customers.cell(1, header["City"]).value = "Town"

    pushed = run_sync(synced, "alice", TO_SHEET)
    pulled = run_sync(synced, "alice", FROM_SHEET)

    counts = pushed["tabs"]["Customers"]["counts"]
    assert counts["pending_import"] == 0, pushed["tabs"]["Customers"]["issues"][:3]
    warned = [
        i for i in pushed["tabs"]["Customers"]["issues"] if i["kind"] == "warning"
    ]
    assert ["'Town'" in i["reason"] for i in warned] == [True]
    assert pulled["tabs"]["Customers"]["counts"]["updated"] == 0
    assert _cities(synced) == cities


def test_edits_made_while_a_header_was_renamed_sync_once_its_name_is_back(
    synced: Runtime,
) -> None:
    with alices_tab(synced) as (customers, header):
        customers.cell(1, header["City"]).value = "Town"
        cleared_in_app = int(customers.cell(2, 1).value)
        edited_in_sheet = int(customers.cell(3, 1).value)
        customers.cell(3, header["City"]).value = "Edited While Renamed"
    run_sync(synced, "alice", FROM_SHEET)
    with synced.db.session() as session:
        customer = session.get(Customer, cleared_in_app)
        assert customer is not None
        customer.city = ""
    with alices_tab(synced) as (customers, header):
        customers.cell(1, header["Town"]).value = "City"

    pulled = run_sync(synced, "alice", FROM_SHEET)
    pushed = run_sync(synced, "alice", TO_SHEET)

    assert pulled["tabs"]["Customers"]["counts"]["conflicts"] == 0
    assert customer_field(synced, cleared_in_app, "city") == ""
    assert customer_field(synced, edited_in_sheet, "city") == "Edited While Renamed"
    assert pushed["tabs"]["Customers"]["counts"]["conflicts"] == 0
    with alices_tab(synced) as (customers, header):
        assert customers.cell(2, header["City"]).value is None


def _cities(runtime: Runtime) -> dict[int, str]:
    with runtime.db.read_session() as session:
        rows = session.execute(select(Customer.id, Customer.city))
        return {record_id: city for record_id, city in rows}


def _ids_in(sheet: Any) -> set[int]:
    return {row[0] for row in sheet.iter_rows(min_row=2, values_only=True)}


def _alices_ids(runtime: Runtime) -> tuple[set[int], set[int]]:
    with runtime.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
        customers = session.scalars(
            select(Customer.id).where(Customer.agent_id == alice.id)
        )
        policies = session.scalars(select(Policy.id).where(Policy.agent_id == alice.id))
        return set(customers), set(policies)


def test_an_import_before_any_sync_to_the_sheet_says_to_write_the_workbook_first(
    runtime: Runtime,
) -> None:
    with runtime.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
    queued = runtime.sync.enqueue(alice, FROM_SHEET)
    WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty()

    job = runtime.queue.get(queued.job_id)
    assert job.state == "failed" and job.error is not None
    assert "does not exist yet: this book was never synced to it" in job.error
    assert "Run Sync to sheet first" in job.error and "moved" not in job.error


def test_an_import_from_a_deleted_workbook_fails_saying_the_file_is_gone(
    synced: Runtime,
) -> None:
    path = workbook_path(synced, "alice")
    path.unlink()

    error = failed_import(synced).error or ""

    assert f"{path.name} does not exist" in error
    assert "Sync to sheet" in error and "no tab" not in error


def test_a_sync_to_a_deleted_workbook_writes_the_whole_book_again(
    synced: Runtime,
) -> None:
    workbook_path(synced, "alice").unlink()

    result = run_sync(synced, "alice", TO_SHEET)

    customers, policies = _alices_ids(synced)
    book = load_workbook(workbook_path(synced, "alice"))
    assert _ids_in(book["Customers"]) == customers
    assert _ids_in(book["Policies"]) == policies
    assert result["summary"]["appended"] == len(customers) + len(policies)
    assert result["summary"]["issues"] == 0


def test_a_sync_to_a_renamed_tab_writes_it_again_whole_and_leaves_the_renamed_one(
    synced: Runtime,
) -> None:
    with alices_tab(synced) as (customers, _):
        customers.title = "Jon's Data"

    result = run_sync(synced, "alice", TO_SHEET)

    customers_ids, policies = _alices_ids(synced)
    book = load_workbook(workbook_path(synced, "alice"))
    assert _ids_in(book["Customers"]) == customers_ids == _ids_in(book["Jon's Data"])
    assert _ids_in(book["Policies"]) == policies
    assert result["tabs"]["Customers"]["counts"]["deleted_in_sheet"] == 0
    assert result["summary"]["appended"] == len(customers_ids)
    # Edits made in the renamed tab are never imported from there: said.
    (warning,) = result["tabs"]["Customers"]["issues"]
    assert warning["kind"] == "warning"
    assert warning["reason"].startswith(
        "tab 'Customers' was synced before but was not in the sheet: it was "
        "written anew. If it was renamed, edits made in it since the last sync "
        "are not imported from there"
    )
    assert result["tabs"]["Policies"]["issues"] == []
    again = run_sync(synced, "alice", TO_SHEET)
    assert again["tabs"]["Customers"]["issues"] == []


@pytest.mark.parametrize("left", ["a new blank workbook", "both tabs renamed"])
def test_a_sync_to_a_workbook_without_either_tab_writes_both_anew(
    synced: Runtime, left: str
) -> None:
    path = workbook_path(synced, "alice")
    if left == "a new blank workbook":
        Workbook().save(path)
    else:
        with alices_tab(synced) as (customers, _):
            customers.title = "Old Customers"
            customers.parent["Policies"].title = "Old Policies"

    result = run_sync(synced, "alice", TO_SHEET)

    customers_ids, policies = _alices_ids(synced)
    book = load_workbook(path)
    assert _ids_in(book["Customers"]) == customers_ids
    assert _ids_in(book["Policies"]) == policies
    for tab in ("Customers", "Policies"):
        (warning,) = result["tabs"][tab]["issues"]
        assert warning["reason"].startswith(
            f"tab '{tab}' was synced before but was not in the sheet: it was "
            "written anew"
        )
    assert run_sync(synced, "alice", TO_SHEET)["summary"]["issues"] == 0


def test_tabs_renamed_only_in_letter_case_are_still_the_books_tabs(
    synced: Runtime,
) -> None:
    with alices_tab(synced) as (customers, header):
        policies = customers.parent["Policies"]
        # openpyxl renames a tab to its own name in other case by adding a 1
        # (Excel does not): through another name first.
        for tab, name in ((customers, "customers"), (policies, "POLICIES")):
            tab.title = "renamed"
            tab.title = name
        customers.cell(2, header["City"]).value = "Lowercase Tab City"

    imported = run_sync(synced, "alice", FROM_SHEET)
    written = run_sync(synced, "alice", TO_SHEET)

    assert imported["summary"]["updated"] == 1
    assert written["summary"]["issues"] == written["summary"]["appended"] == 0
    book = load_workbook(workbook_path(synced, "alice"))
    assert book.sheetnames == ["customers", "POLICIES"]


def test_an_import_with_both_tabs_renamed_names_both_in_plain_words(
    synced: Runtime,
) -> None:
    with alices_tab(synced) as (customers, _):
        customers.title = "Old Customers"
        customers.parent["Policies"].title = "Old Policies"

    error = failed_import(synced).error or ""

    assert (
        "has no tabs 'Customers' and 'Policies': were they renamed or deleted? "
        "Rename them back, or run Sync to sheet to write them anew"
    ) in error


def test_a_renamed_tab_fails_the_import_naming_the_workbook_and_tab(
    synced: Runtime,
) -> None:
    with alices_tab(synced) as (customers, header):
        customers.parent["Policies"].title = "Policies 2026"
        customers.cell(2, header["City"]).value = "Renamedville"

    error = failed_import(synced).error or ""

    assert "'Policies'" in error and workbook_path(synced, "alice").name in error
    with synced.db.read_session() as session:
        cities = session.scalars(select(Customer.city)).all()
    assert "Renamedville" not in cities


def test_after_a_column_is_added_right_of_stray_values_only_those_values_are_warned(
    synced: Runtime,
) -> None:
    with alices_tab(synced) as (customers, header):
        customers.delete_cols(header["Notes"])
        assert customers.max_column == 10  # A..J
        for ref, value in (("K2", "k"), ("M5", "m5"), ("M7", "m7"), ("Z3", "z")):
            customers[ref] = value

    to = run_sync(synced, "alice", TO_SHEET)["tabs"]["Customers"]["issues"]
    frm = run_sync(synced, "alice", FROM_SHEET)["tabs"]["Customers"]["issues"]

    sheet = load_workbook(workbook_path(synced, "alice"))["Customers"]
    assert columns(sheet)["Notes"] == 27  # AA, right of every stray value
    for issues in (to, frm):
        warned = [(i["column"], i["row"], i["value"]) for i in issues]
        assert warned == [("K", 2, "k"), ("M", 5, "m5"), ("Z", 3, "z")]


def test_merged_cells_are_reported_and_never_clear_a_field_either_way(
    synced: Runtime,
) -> None:
    with alices_tab(synced) as (customers, header):
        name, email = header["Name"], header["Email"]
        assert (name, email) == (2, 3)
        row = next(r for r in range(2, 40) if customers.cell(r, email).value)
        record_id = customers.cell(row, 1).value
        customers.merge_cells(f"B{row}:C{row}")
    email_before = customer_field(synced, record_id, "email")
    assert email_before

    imported = run_sync(synced, "alice", FROM_SHEET)

    (error,) = errors_of(imported)
    assert (error["row"], error["column"]) == (row, "Email")
    assert f"cells B{row}:C{row} are merged" in error["reason"]
    assert customer_field(synced, record_id, "email") == email_before
    with synced.db.session() as session:
        customer = session.get(Customer, record_id)
        assert customer is not None
        customer.email = "changed@example.com"
        customer.city = "Augusta"

    written = run_sync(synced, "alice", TO_SHEET)

    (error,) = errors_of(written)
    assert f"cells B{row}:C{row} are merged" in error["reason"]
    assert sheet_cell(synced, row, header["City"]) == "Augusta"
    assert sheet_cell(synced, row, email) is None
    assert customer_field(synced, record_id, "email") == "changed@example.com"


def test_a_value_typed_where_a_merge_was_is_imported_and_the_other_refilled(
    synced: Runtime,
) -> None:
    with alices_tab(synced) as (customers, header):
        email, city = header["Email"], header["City"]
        row = next(
            r
            for r in range(2, 40)
            if customers.cell(r, email).value and customers.cell(r, city).value
        )
        record_id = customers.cell(row, 1).value
        old_city = customers.cell(row, city).value
        merge = f"{get_column_letter(email - 1)}{row}:{get_column_letter(city)}{row}"
        customers.merge_cells(merge)  # Name over Email … City: both emptied
    assert errors_of(run_sync(synced, "alice", FROM_SHEET))
    with alices_tab(synced) as (customers, _):
        customers.unmerge_cells(merge)
        customers.cell(row, email).value = "typed@example.com"

    imported = run_sync(synced, "alice", FROM_SHEET)
    written = run_sync(synced, "alice", TO_SHEET)

    assert imported["tabs"]["Customers"]["counts"]["conflicts"] == 0
    assert customer_field(synced, record_id, "email") == "typed@example.com"
    assert customer_field(synced, record_id, "city") == old_city
    assert written["summary"]["issues"] == 0
    assert sheet_cell(synced, row, city) == old_city


def test_an_id_cell_a_merge_emptied_gets_its_id_back_never_a_second_record(
    synced: Runtime,
) -> None:
    with alices_tab(synced) as (customers, _):
        first = customers.cell(5, 1).value
        record_id = customers.cell(6, 1).value
        customers.merge_cells("A5:A6")  # row 6's ID hidden, then emptied
    assert errors_of(run_sync(synced, "alice", FROM_SHEET))
    with alices_tab(synced) as (customers, _):
        customers.unmerge_cells("A5:A6")
        assert customers.cell(6, 1).value is None
    before = customer_count(synced)

    imported = run_sync(synced, "alice", FROM_SHEET)
    written = run_sync(synced, "alice", TO_SHEET)

    assert imported["tabs"]["Customers"]["counts"]["created"] == 0
    assert customer_count(synced) == before
    (told,) = [
        i for i in imported["tabs"]["Customers"]["issues"] if i["kind"] == "warning"
    ]
    assert (told["row"], told["column"]) == (6, "ID")
    assert f"holds record {record_id}'s values" in told["reason"]
    assert sheet_cell(synced, 6, 1) == record_id
    assert sheet_cell(synced, 5, 1) == first
    assert written["summary"]["issues"] == 0


def customer_count(runtime: Runtime) -> int:
    with runtime.db.read_session() as session:
        return len(session.scalars(select(Customer.id)).all())


def test_a_record_deleted_in_the_app_before_its_write_back_is_told_not_written(
    synced: Runtime,
) -> None:
    gone, kept = delete_sheet_rows(synced, "Customers", 2)
    with synced.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
    queued, _ = synced.sync.write_back(alice, {"Customers": [gone, kept]})
    with synced.db.session() as session:
        for policy in session.scalars(select(Policy).where(Policy.customer_id == gone)):
            session.delete(policy)
        session.flush()
        session.delete(session.get(Customer, gone))

    WorkerPool(synced.queue, synced.sync.handlers).run_until_empty()

    result = synced.queue.get(queued.job_id).result
    assert result is not None and result["summary"]["appended"] == 1
    told = result["tabs"]["Customers"]["issues"][0]  # first: the answer to the ask
    assert told["value"] == str(gone) and told["kind"] == "deleted_in_app"
    assert "before it could be written back" in told["reason"]


def test_a_result_names_at_most_500_rows_to_write_back_a_tab_and_says_so(
    synced: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync_jobs, "MAX_REPORTED_ISSUES", 2)
    gone = delete_sheet_rows(synced, "Customers", 3)

    tab = run_sync(synced, "alice", TO_SHEET)["tabs"]["Customers"]

    assert tab["write_back"] == sorted(gone)[:2] and tab["write_back_cut"]
    assert tab["counts"]["deleted_in_sheet"] == 3


def test_writing_back_all_brings_back_every_deleted_row_of_both_tabs(
    synced: Runtime,
) -> None:
    gone = {
        "Customers": set(delete_sheet_rows(synced, "Customers", 3)),
        "Policies": set(delete_sheet_rows(synced, "Policies", 4)),
    }
    with synced.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()

    queued, _ = synced.sync.write_back(alice, {}, every=True)
    WorkerPool(synced.queue, synced.sync.handlers).run_until_empty()

    result = synced.queue.get(queued.job_id).result
    assert result is not None and result["summary"]["appended"] == 7
    for tab, ids in gone.items():
        with alices_tab(synced, tab) as (sheet, _):
            assert ids <= _ids_in(sheet)
    assert run_sync(synced, "alice", TO_SHEET)["summary"]["issues"] == 0


def test_a_customer_moved_to_another_agent_is_told_as_such_and_joins_their_sheet(
    synced: Runtime,
) -> None:
    run_sync(synced, "bob", TO_SHEET)
    with synced.db.session() as session:
        bob = session.scalars(select(User).where(User.username == "bob")).one()
        alice = session.scalars(select(User).where(User.username == "alice")).one()
        moved = session.scalars(
            select(Customer).where(Customer.agent_id == alice.id).order_by(Customer.id)
        ).first()
        assert moved is not None
        moved.agent_id, moved_id = bob.id, moved.id

    alices = run_sync(synced, "alice", TO_SHEET)
    bobs = run_sync(synced, "bob", TO_SHEET)

    (left,) = [i for i in alices["tabs"]["Customers"]["issues"] if i["value"]]
    assert left["kind"] == "deleted_in_app" and left["value"] == str(moved_id)
    assert "moved to another agent's book" in left["reason"]
    assert bobs["tabs"]["Customers"]["counts"]["appended"] == 1
    book = load_workbook(workbook_path(synced, "bob"))
    assert moved_id in _ids_in(book["Customers"])


def test_a_merged_box_below_the_table_keeps_new_rows_out_and_the_rest_syncs(
    synced: Runtime,
) -> None:
    with alices_tab(synced) as (customers, header):
        below = customers.max_row + 1
        customers.merge_cells(f"A{below}:E{below + 3}")  # a notes box
    assert errors_of(run_sync(synced, "alice", FROM_SHEET)) == []
    with synced.db.session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
        session.add(Customer(name="Nell Newrow", agent_id=alice.id))
        first = session.scalars(
            select(Customer).where(Customer.agent_id == alice.id).order_by(Customer.id)
        ).first()
        assert first is not None
        first.city, first_id = "Bangor", first.id

    written = run_sync(synced, "alice", TO_SHEET)

    (error,) = errors_of(written)
    assert (
        error["row"] == below
        and f"cells A{below}:E{below + 3} are merged" in (error["reason"])
    )
    with alices_tab(synced) as (customers, header):
        assert customers.cell(row_of(customers, first_id), header["City"]).value == (
            "Bangor"
        )
        assert "Nell Newrow" not in {cell.value for cell in customers["B"]}


def delete_sheet_rows(runtime: Runtime, tab: str, count: int) -> list[int]:
    """Delete the first ``count`` data rows of alice's tab; their IDs."""
    with alices_tab(runtime, tab) as (sheet, _):
        ids = [sheet.cell(row, 1).value for row in range(2, 2 + count)]
        sheet.delete_rows(2, count)
    return ids


def test_rows_deleted_in_the_sheet_come_back_when_written_back(
    synced: Runtime,
) -> None:
    gone_customers = delete_sheet_rows(synced, "Customers", 2)
    (gone_policy,) = delete_sheet_rows(synced, "Policies", 1)
    flagged = run_sync(synced, "alice", TO_SHEET)
    assert flagged["tabs"]["Customers"]["counts"]["deleted_in_sheet"] == 2
    assert flagged["tabs"]["Customers"]["write_back"] == sorted(gone_customers)
    assert flagged["tabs"]["Policies"]["write_back"] == [gone_policy]
    assert not flagged["tabs"]["Customers"]["write_back_cut"]
    with synced.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
    city = customer_field(synced, gone_customers[0], "city")

    queued, _ = synced.sync.write_back(
        alice, {"Customers": [gone_customers[0]], "Policies": [gone_policy]}
    )
    WorkerPool(synced.queue, synced.sync.handlers).run_until_empty()

    result = synced.queue.get(queued.job_id).result
    assert result is not None and result["summary"]["appended"] == 2
    with alices_tab(synced) as (sheet, header):
        row = row_of(sheet, gone_customers[0])
        assert sheet.cell(row, header["City"]).value == city
        assert gone_customers[1] not in _ids_in(sheet)  # not asked for: still gone
    with alices_tab(synced, "Policies") as (sheet, _):
        assert gone_policy in _ids_in(sheet)
    again = run_sync(synced, "alice", TO_SHEET)
    assert again["summary"]["appended"] == 0
    assert again["tabs"]["Customers"]["counts"]["deleted_in_sheet"] == 1


def test_a_state_typed_in_lower_case_imports_once_and_then_settles(
    synced: Runtime,
) -> None:
    with alices_tab(synced) as (sheet, header):
        record_id = sheet.cell(2, 1).value
        sheet.cell(2, header["State"]).value = "ny"
        sheet.cell(3, header["State"]).value = "zz"

    imported = run_sync(synced, "alice", FROM_SHEET)

    assert customer_field(synced, record_id, "state") == "NY"
    ((error),) = errors_of(imported)
    assert (error["row"], error["column"], error["value"]) == (3, "State", "zz")
    assert error["reason"].startswith("must be a US postal code like ME")
    with alices_tab(synced) as (sheet, header):
        sheet.cell(3, header["State"]).value = "ME"
    run_sync(synced, "alice", FROM_SHEET)
    again = run_sync(synced, "alice", FROM_SHEET)["summary"]
    assert again["updated"] == 0
    assert run_sync(synced, "alice", TO_SHEET)["summary"]["pending_import"] == 0
    with synced.db.session() as session:
        customer = session.get(Customer, record_id)
        assert customer is not None
        customer.state = "CA"
    written = run_sync(synced, "alice", TO_SHEET)["summary"]
    assert written["conflicts"] == 0
    with alices_tab(synced) as (sheet, header):
        assert sheet.cell(2, header["State"]).value == "CA"


def test_a_syncs_retries_are_counted_across_its_calls_not_from_one_for_each() -> None:
    class Notes:
        def __init__(self) -> None:
            self.seen: list[dict[str, Any]] = []

        def note(self, phase: str, **details: Any) -> None:
            self.seen.append({"phase": phase, **details})

    notes = Notes()
    report = sync_jobs._retry_reporter(notes)  # type: ignore[arg-type]
    assert report is not None

    report(1, 1.0, RuntimeError("reading: 503"))  # the read's first retry
    report(1, 2.0, RuntimeError("writing: 503"))  # then the write's first

    assert [note["retries"] for note in notes.seen] == [1, 2]
    assert notes.seen[1]["reason"] == "writing: 503"
