"""A user's book synced with a Google spreadsheet, on the local API emulator."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from sheetbridge import clock
from sheetbridge.config import Settings
from sheetbridge.insurance.models import Customer, User
from sheetbridge.insurance.sync_jobs import FROM_SHEET, TO_SHEET
from sheetbridge.queue.models import Job
from sheetbridge.queue.store import Backoff
from sheetbridge.queue.worker import WorkerPool
from sheetbridge.sheets.base import TabChanges, TabData
from sheetbridge.sheets.google import GoogleSheetsBackend, SheetsClient
from sheetbridge.testing.cells import Rich
from sheetbridge.testing.emulator import EmulatorServer
from sheetbridge.testing.harness import GoogleHarness
from sheetbridge.web.app import create_app
from sheetbridge.web.deps import Runtime
from tests.conftest import bearer
from tests.insurance.test_workbook_sync import failed_import, run_sync
from tests.support.server import free_port


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(port=free_port()) as server:
        yield server


@pytest.fixture
def settings(settings: Settings, emulator: EmulatorServer) -> Settings:
    return settings.model_copy(
        update={
            "google_sheets_base_url": emulator.base_url,
            "google_backoff_base_s": 0.01,
            "google_backoff_max_s": 0.05,
            # Off: this module's syncs would wait a minute for the quota.
            "sheets_reads_per_minute_user": 0,
            "sheets_writes_per_minute_user": 0,
        }
    )


@pytest.fixture
def spreadsheet_id(
    runtime: Runtime, tokens: dict[str, str], emulator: EmulatorServer
) -> str:
    book = GoogleHarness(emulator).spreadsheet("Alice's book")
    with TestClient(create_app(runtime, workers=False)) as client:
        answer = client.patch(
            "/api/insurance/sync/target",
            json={"backend": "google", "spreadsheet_id": book.spreadsheet_id},
            headers=bearer(tokens["alice"]),
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["backend"] == "google"
    return book.spreadsheet_id


def customer_added(runtime: Runtime, name: str) -> User:
    """A customer ``name`` added to alice's book in the app: alice."""
    with runtime.db.session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
        session.add(Customer(name=name, agent_id=alice.id))
    return alice


def customers_tab(
    emulator: EmulatorServer, spreadsheet_id: str
) -> tuple[GoogleSheetsBackend, TabData, list[str]]:
    """The backend of alice's spreadsheet, its Customers tab and its header."""
    backend = GoogleHarness(emulator).backend(spreadsheet_id)
    tab = backend.read_tabs(["Customers"])["Customers"]
    assert tab is not None
    return backend, tab, [str(cell) for cell in tab.rows[0]]


def test_to_sheet_writes_the_book_and_an_unchanged_resync_only_reads(
    runtime: Runtime, spreadsheet_id: str, emulator: EmulatorServer
) -> None:
    first = run_sync(runtime, "alice", TO_SHEET)
    assert first["summary"]["appended"] > 0
    before = len(emulator.state.log)

    again = run_sync(runtime, "alice", TO_SHEET)

    calls = emulator.state.log[before:]
    assert again["summary"]["written_cells"] == 0
    assert all(entry.method == "GET" for entry in calls), [
        (c.method, c.path) for c in calls
    ]
    assert len(calls) <= 2


def test_a_sync_to_a_spreadsheet_whose_tabs_were_both_renamed_writes_both_anew(
    runtime: Runtime, spreadsheet_id: str, emulator: EmulatorServer
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    for sheet in emulator.state.spreadsheets[spreadsheet_id].sheets:
        sheet.title = f"Old {sheet.title}"

    result = run_sync(runtime, "alice", TO_SHEET)

    read = GoogleHarness(emulator).backend(spreadsheet_id).read_tabs
    tabs = read(["Customers", "Policies", "Old Customers", "Old Policies"])
    for name in ("Customers", "Policies"):
        written, renamed = tabs[name], tabs[f"Old {name}"]
        assert written is not None and renamed is not None
        assert written.rows == renamed.rows
        (warning,) = result["tabs"][name]["issues"]
        assert "was synced before but was not in the sheet" in warning["reason"]


def test_a_sync_cut_short_after_adding_a_tab_writes_that_tab_whole_on_its_retry(
    runtime: Runtime, spreadsheet_id: str, emulator: EmulatorServer
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    book = emulator.state.spreadsheets[spreadsheet_id]
    book.sheets = [sheet for sheet in book.sheets if sheet.title != "Policies"]
    # The tab is added, and the call writing the book is cut short.
    emulator.state.inject(503, method="POST", path_contains=":batchUpdate", skip=1)
    with runtime.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
    job_id = runtime.sync.enqueue(alice, TO_SHEET).job_id

    pool = WorkerPool(runtime.queue, runtime.sync.handlers)
    deadline = time.monotonic() + 30
    while (job := runtime.queue.get(job_id)).finished_at is None:
        assert time.monotonic() < deadline, "the sync never finished"
        pool.run_until_empty()  # and its retry, once its time comes
        time.sleep(0.05)

    assert (job.state, job.attempts) == ("succeeded", 2), job.error
    assert job.result is not None
    read = GoogleHarness(emulator).backend(spreadsheet_id).read_tabs
    policies = read(["Policies"])["Policies"]
    assert policies is not None
    assert len(policies.rows) - 1 == job.result["summary"]["appended"] > 0
    assert job.result["tabs"]["Policies"]["counts"]["deleted_in_sheet"] == 0


def test_an_import_from_a_spreadsheet_never_synced_says_to_write_it_first(
    runtime: Runtime, spreadsheet_id: str
) -> None:
    error = failed_import(runtime).error or ""

    assert "has no tabs 'Customers' and 'Policies' yet: this book was never " in (error)
    assert "Run Sync to sheet first" in error and "renamed" not in error


def test_sheet_edits_import_and_text_stays_text(
    runtime: Runtime, spreadsheet_id: str, emulator: EmulatorServer
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    backend, tab, header = customers_tab(emulator, spreadsheet_id)
    record_id = int(tab.rows[1][0])  # type: ignore[arg-type]
    backend.write(
        {
            "Customers": TabChanges(
                cells={
                    (2, header.index("ZIP") + 1): "04001",
                    (2, header.index("Notes") + 1): "=1+1",
                }
            )
        }
    )

    result = run_sync(runtime, "alice", FROM_SHEET)

    assert result["summary"]["updated"] == 1
    with runtime.db.read_session() as session:
        customer = session.get(Customer, record_id)
    assert customer is not None
    assert (customer.zip_code, customer.notes) == ("04001", "=1+1")


def test_a_503_on_read_is_retried_and_the_job_succeeds(
    runtime: Runtime, spreadsheet_id: str, emulator: EmulatorServer
) -> None:
    emulator.state.inject(503, count=2, method="GET")
    result = run_sync(runtime, "alice", TO_SHEET)
    assert result["summary"]["appended"] > 0


def test_a_sync_stopped_while_it_waits_to_retry_stops_without_calling_again(
    runtime: Runtime, spreadsheet_id: str, emulator: EmulatorServer
) -> None:
    # The wait is told a second at a time, each a point where a stop is seen.
    runtime.sync.settings = runtime.settings.model_copy(
        update={"google_backoff_base_s": 60.0, "google_backoff_max_s": 60.0}
    )
    emulator.state.inject(503, count=1, method="GET")
    with runtime.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
    pool = WorkerPool(runtime.queue, runtime.sync.handlers, concurrency=1)
    pool.start()
    try:
        queued = runtime.sync.enqueue(alice, TO_SHEET)
        job = _wait_for(runtime, queued.job_id, lambda job: _phase(job) == "retrying")
        assert (job.progress or {})["delay_s"] >= 30
        runtime.queue.cancel(queued.job_id)
        job = _wait_for(runtime, queued.job_id, lambda job: job.state != "running")
    finally:
        pool.stop()

    assert job.state == "cancelled"
    assert emulator.state.calls("GET") == 1, "no call after the stop"


def _phase(job: Job) -> object:
    return (job.progress or {}).get("phase")


def _wait_for(runtime: Runtime, job_id: int, seen: Callable[[Job], bool]) -> Job:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = runtime.queue.get(job_id)
        if seen(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never got there: {job.state} {job.progress}")


def test_a_spreadsheet_id_alone_moves_a_google_book_and_is_refused_for_a_workbook(
    runtime: Runtime, tokens: dict[str, str], spreadsheet_id: str
) -> None:
    alice = bearer(tokens["alice"])
    with TestClient(create_app(runtime, workers=False)) as client:
        moved = client.patch(
            "/api/insurance/sync/target",
            json={"spreadsheet_id": "other-book"},
            headers=alice,
        )
        client.patch(
            "/api/insurance/sync/target", json={"backend": "xlsx"}, headers=alice
        )
        refused = [
            client.patch("/api/insurance/sync/target", json=body, headers=alice)
            for body in (
                {"spreadsheet_id": spreadsheet_id},
                {"backend": "xlsx", "spreadsheet_id": spreadsheet_id},
            )
        ]
        now = client.get("/api/insurance/sync/target", headers=alice).json()

    assert moved.status_code == 200, moved.text
    assert (moved.json()["backend"], moved.json()["location"]) == (
        "google",
        "other-book",
    )
    assert [answer.status_code for answer in refused] == [422, 422]
    assert refused[0].json()["detail"][0]["field"] == "spreadsheet_id"
    assert now["backend"] == "xlsx"


def test_a_missing_spreadsheet_fails_the_job_naming_it(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    with TestClient(create_app(runtime, workers=False)) as client:
        client.patch(
            "/api/insurance/sync/target",
            json={"backend": "google", "spreadsheet_id": "no-such-spreadsheet-id"},
            headers=bearer(tokens["alice"]),
        )
        bad = client.patch(
            "/api/insurance/sync/target",
            json={"backend": "google", "spreadsheet_id": "x y"},
            headers=bearer(tokens["alice"]),
        )
    assert bad.status_code == 422
    with pytest.raises(AssertionError, match="no-such-spreadsheet-id"):
        run_sync(runtime, "alice", TO_SHEET)


def test_a_note_longer_than_the_app_keeps_is_an_error_in_to_sheet_not_pending(
    runtime: Runtime, spreadsheet_id: str, emulator: EmulatorServer
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    backend, _, header = customers_tab(emulator, spreadsheet_id)
    notes = header.index("Notes") + 1
    backend.write(
        {
            "Customers": TabChanges(
                cells={(2, notes): "n" * 40_000, (3, notes): "a short note"}
            )
        }
    )

    pushed = run_sync(runtime, "alice", TO_SHEET)

    told = {(i["row"], i["column"]): i for i in pushed["tabs"]["Customers"]["issues"]}
    assert told[(2, "Notes")]["kind"] == "error"
    assert "at most 32,765 characters" in told[(2, "Notes")]["reason"]
    assert told[(3, "Notes")]["kind"] == "pending_import"


def test_a_row_error_shows_an_over_long_value_cut_as_for_a_workbook(
    runtime: Runtime, spreadsheet_id: str, emulator: EmulatorServer
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    backend, tab, header = customers_tab(emulator, spreadsheet_id)
    notes = header.index("Notes") + 1
    new_row = len(tab.rows) + 1
    backend.write(
        {
            "Customers": TabChanges(
                cells={
                    (2, notes): "n" * 40_000,
                    (new_row, header.index("Name") + 1): "Typed With A Long Note",
                    (new_row, notes): "t" * 40_000,
                }
            )
        }
    )

    pushed = run_sync(runtime, "alice", TO_SHEET)
    imported = run_sync(runtime, "alice", FROM_SHEET)

    for result in (pushed, imported):
        errors = [
            i for i in result["tabs"]["Customers"]["issues"] if i["kind"] == "error"
        ]
        shown = {(i["row"], i["column"]): i["value"] for i in errors}
        assert shown == {
            (2, "Notes"): "n" * 79 + "…",
            (new_row, "Notes"): "t" * 79 + "…",
        }
    _, tab, _ = customers_tab(emulator, spreadsheet_id)
    assert tab.rows[1][notes - 1] == "n" * 40_000
    assert tab.rows[new_row - 1][notes - 1] == "t" * 40_000


def test_an_import_dying_after_writing_new_ids_to_google_leaves_them_naming_its_records(
    runtime: Runtime,
    spreadsheet_id: str,
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    backend, tab, header = customers_tab(emulator, spreadsheet_id)
    names = ["Typed On Google", "Typed Again"]
    row = len(tab.rows) + 1
    cells = {
        (row + offset, header.index("Name") + 1): name
        for offset, name in enumerate(names)
    }
    backend.write({"Customers": TabChanges(cells=cells)})
    real = GoogleSheetsBackend.write

    def write_then_die(self: GoogleSheetsBackend, *args: object, **kw: object) -> None:
        monkeypatch.setattr(GoogleSheetsBackend, "write", real)
        real(self, *args, **kw)  # type: ignore[arg-type]
        raise RuntimeError("the worker died")

    monkeypatch.setattr(GoogleSheetsBackend, "write", write_then_die)
    with pytest.raises(AssertionError):
        run_sync(runtime, "alice", FROM_SHEET)  # the job fails
    run_sync(runtime, "alice", FROM_SHEET)

    _, tab, header = customers_tab(emulator, spreadsheet_id)
    in_sheet = {
        cells[header.index("Name")]: int(cells[header.index("ID")])
        for cells in tab.rows[1:]
        if cells[header.index("Name")] in names
    }
    with runtime.db.read_session() as session:
        for name in names:
            (customer,) = session.query(Customer).filter_by(name=name).all()
            assert in_sheet[name] == customer.id


def test_a_write_cut_short_then_a_sort_puts_every_value_in_its_own_records_row(
    runtime: Runtime, spreadsheet_id: str, emulator: EmulatorServer
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    with runtime.db.session() as session:
        alice = select(User.id).where(User.username == "alice").scalar_subquery()
        customers = session.scalars(
            select(Customer).where(Customer.agent_id == alice).order_by(Customer.id)
        ).all()[:5]
        for customer in customers:
            customer.city = f"Moved {customer.id}"
    emulator.state.inject(503, method="POST", path_contains=":batchUpdate")
    with runtime.db.read_session() as session:
        user = session.scalars(select(User).where(User.username == "alice")).one()
    queued = runtime.sync.enqueue(user, TO_SHEET)
    pool = WorkerPool(runtime.queue, runtime.sync.handlers)
    pool.run_until_empty()
    cut = runtime.queue.get(queued.job_id)
    # A person sorts the tab before the sync tries again.
    sheet = customers_sheet(emulator)
    sheet.rows[1:] = sheet.rows[:0:-1]
    runtime.queue.now = lambda: clock.now() + timedelta(minutes=5)  # retry due
    pool.run_until_empty()

    assert cut.state == "queued" and "cut short" in (cut.error or "")
    assert runtime.queue.get(queued.job_id).state == "succeeded"
    _, tab, header = customers_tab(emulator, spreadsheet_id)
    city = header.index("City")
    cities = {row[0]: row[city] for row in tab.rows[1:]}
    assert all(cities[c.id] == f"Moved {c.id}" for c in customers)
    assert sum(str(v).startswith("Moved") for v in cities.values()) == len(customers)


def test_a_to_sheets_changed_cells_and_new_rows_land_together_in_one_call(
    runtime: Runtime, spreadsheet_id: str, emulator: EmulatorServer
) -> None:
    # One call lands whole or not at all: a write cut short leaves nothing of
    # itself for its retry to count as already in the sheet.
    run_sync(runtime, "alice", TO_SHEET)
    with runtime.db.session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
        changed = session.scalars(
            select(Customer).where(Customer.agent_id == alice.id).order_by(Customer.id)
        ).first()
        assert changed is not None
        changed.city = "Changed City"
        changed.date_of_birth = date(1971, 3, 9)
        session.add(Customer(name="Newest Customer", agent_id=alice.id))
    before = len(emulator.state.log)

    result = run_sync(runtime, "alice", TO_SHEET)

    writes = [e.path for e in emulator.state.log[before:] if e.method == "POST"]
    assert len(writes) == 1 and writes[0].endswith(":batchUpdate"), writes
    assert "/values" not in writes[0]
    assert result["summary"]["appended"] == 1
    assert result["tabs"]["Customers"]["counts"]["updated_rows"] == 1
    assert result["tabs"]["Customers"]["counts"]["written_cells"] == 2
    _, tab, header = customers_tab(emulator, spreadsheet_id)
    rows = {str(row[header.index("Name")]): row for row in tab.rows[1:]}
    assert rows[changed.name][header.index("City")] == "Changed City"
    assert "Newest Customer" in rows


def test_a_write_refused_for_quota_is_sent_again_where_no_row_moved_meanwhile(
    runtime: Runtime, spreadsheet_id: str, emulator: EmulatorServer
) -> None:
    # A 429 means the call was not applied: the sync waits, as for a read,
    # and sends it again once the sheet shows that no row moved, within its
    # attempt, instead of spending the job's attempts on a busy quota.
    run_sync(runtime, "alice", TO_SHEET)
    alice = customer_added(runtime, "Throttled Customer")
    emulator.state.inject(429, count=5, method="POST", path_contains=":batchUpdate")
    job_id = runtime.sync.enqueue(alice, TO_SHEET).job_id

    WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty()

    job = runtime.queue.get(job_id)
    assert (job.state, job.attempts) == ("succeeded", 1), job.error
    assert job.result is not None and job.result["summary"]["appended"] == 1
    _, tab, header = customers_tab(emulator, spreadsheet_id)
    names = [row[header.index("Name")] for row in tab.rows[1:]]
    assert names.count("Throttled Customer") == 1


def run_with_a_late_write(
    runtime: Runtime,
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    meanwhile: Callable[[], None] = lambda: None,
) -> Job:
    """A sync of alice's whose first write gets no answer in time (a second)
    and lands half a second later, ``meanwhile`` done before it lands: the
    job, run to its end, its retry included."""
    runtime.settings.google_timeout_s = 1.0
    runtime.queue.backoff = Backoff(base_s=0.01, cap_s=0.05)
    knobs = emulator.state.knobs

    def slow_write(rows: Rows) -> None:
        knobs.latency_ms = 1500  # this call only
        threading.Timer(0.3, setattr, (knobs, "latency_ms", 0)).start()
        threading.Timer(0.6, meanwhile).start()

    before_the_first_write(monkeypatch, customers_sheet(emulator).rows, slow_write)
    with runtime.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
    job_id = runtime.sync.enqueue(alice, kind).job_id
    pool = WorkerPool(runtime.queue, runtime.sync.handlers)
    deadline = time.monotonic() + 30
    while (job := runtime.queue.get(job_id)).finished_at is None:
        assert time.monotonic() < deadline, "the sync never finished"
        pool.run_until_empty()
        time.sleep(0.05)
    return job


def test_a_write_that_timed_out_but_landed_later_is_not_written_twice(
    runtime: Runtime,
    spreadsheet_id: str,
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A timeout says nothing of whether the call was carried out: the sync
    # reads the sheet again only once the write has had as long again.
    run_sync(runtime, "alice", TO_SHEET)
    customer_added(runtime, "Late Customer")
    started = clock.now()

    job = run_with_a_late_write(runtime, emulator, monkeypatch, TO_SHEET)

    assert job.state == "succeeded" and job.attempts == 2, job.error
    (timed_out,) = job.errors
    assert "did not answer in time" in timed_out["error"]
    # A second for the answer that never came, and as long again.
    assert datetime.fromisoformat(timed_out["at"]) - started >= timedelta(seconds=2)
    _, tab, header = customers_tab(emulator, spreadsheet_id)
    names = [row[header.index("Name")] for row in tab.rows[1:]]
    assert names.count("Late Customer") == 1


def test_a_write_that_timed_out_and_landed_in_moved_rows_is_put_back(
    runtime: Runtime,
    spreadsheet_id: str,
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    sheet = customers_sheet(emulator)
    city = [str(cell) for cell in sheet.rows[0]].index("City")
    before = {row[0]: row[city] for row in sheet.rows[1:]}
    with runtime.db.session() as session:
        alice = select(User.id).where(User.username == "alice").scalar_subquery()
        changed = session.scalars(
            select(Customer).where(Customer.agent_id == alice).order_by(Customer.id)
        ).all()[:3]
        for customer in changed:
            customer.city = f"Moved {customer.id}"

    def sort() -> None:
        sheet.rows[1:] = sheet.rows[:0:-1]

    job = run_with_a_late_write(runtime, emulator, monkeypatch, TO_SHEET, sort)
    imported = run_sync(runtime, "alice", FROM_SHEET)

    assert job.state == "succeeded" and job.attempts == 2, job.error
    assert "were put back" in job.errors[0]["error"]
    moved = {c.id for c in changed}
    assert cities_now(emulator, spreadsheet_id) == {
        record_id: f"Moved {record_id}" if record_id in moved else was
        for record_id, was in before.items()
    }
    assert imported["summary"]["updated"] == 0


def test_a_sync_that_stopped_while_waiting_to_retry_its_write_says_it_was_writing(
    runtime: Runtime, spreadsheet_id: str, emulator: EmulatorServer
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    runtime.settings.google_max_retries = 1
    alice = customer_added(runtime, "Waiting Customer")
    emulator.state.inject(429, count=2, method="POST", path_contains=":batchUpdate")
    job_id = runtime.sync.enqueue(alice, TO_SHEET).job_id

    WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty()

    job = runtime.queue.get(job_id)
    assert job.state == "queued" and "quota" in (job.error or "")
    assert job.progress is not None and job.progress["stopped_in"] == "writing"
    assert job.progress["rows_to_append"] == 1


def test_a_write_refused_for_quota_while_rows_moved_reads_the_sheet_again(
    runtime: Runtime,
    spreadsheet_id: str,
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    sheet = customers_sheet(emulator)
    with runtime.db.session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
        first = session.scalars(
            select(Customer).where(Customer.agent_id == alice.id).order_by(Customer.id)
        ).first()
        assert first is not None
        first.city = "After The Sort"
    emulator.state.inject(429, method="POST", path_contains=":batchUpdate")
    real_wait = SheetsClient.wait_to_retry

    def sort_while_waiting(self: SheetsClient, *args: Any) -> None:
        sheet.rows[1:] = sheet.rows[:0:-1]
        real_wait(self, *args)

    monkeypatch.setattr(SheetsClient, "wait_to_retry", sort_while_waiting)
    job_id = runtime.sync.enqueue(alice, TO_SHEET).job_id
    pool = WorkerPool(runtime.queue, runtime.sync.handlers)
    pool.run_until_empty()
    runtime.queue.now = lambda: clock.now() + timedelta(minutes=5)  # retry due
    pool.run_until_empty()

    job = runtime.queue.get(job_id)
    assert (job.state, job.attempts) == ("succeeded", 2), job.error
    _, tab, header = customers_tab(emulator, spreadsheet_id)
    cities = {row[0]: row[header.index("City")] for row in tab.rows[1:]}
    assert cities[first.id] == "After The Sort"
    assert list(cities.values()).count("After The Sort") == 1


def test_dates_and_premiums_a_sync_writes_show_as_dates_and_amounts_in_google(
    runtime: Runtime, spreadsheet_id: str, emulator: EmulatorServer
) -> None:
    with runtime.db.session() as session:
        alice = select(User.id).where(User.username == "alice").scalar_subquery()
        customer = session.scalars(
            select(Customer).where(Customer.agent_id == alice).order_by(Customer.id)
        ).first()
        assert customer is not None
        record_id, customer.date_of_birth = customer.id, None
    run_sync(runtime, "alice", TO_SHEET)
    with runtime.db.session() as session:
        customer = session.get(Customer, record_id)
        assert customer is not None
        customer.date_of_birth = date(1980, 7, 4)

    run_sync(runtime, "alice", TO_SHEET)

    shown = httpx.get(
        f"{emulator.base_url}/v4/spreadsheets/{spreadsheet_id}/values/Policies",
        params={"valueRenderOption": "FORMATTED_VALUE"},
    ).json()["values"]
    premium, effective = shown[0].index("Premium"), shown[0].index("Effective Date")
    assert all(re.fullmatch(r"[\d,]+\.\d\d", row[premium]) for row in shown[1:])
    assert all(re.fullmatch(r"\d+/\d+/\d{4}", row[effective]) for row in shown[1:])
    customers = httpx.get(
        f"{emulator.base_url}/v4/spreadsheets/{spreadsheet_id}/values/Customers",
        params={"valueRenderOption": "FORMATTED_VALUE"},
    ).json()["values"]
    born = customers[0].index("Date of Birth")
    (row,) = [row for row in customers[1:] if row[0] == str(record_id)]
    # Blank when its row was written, the cell now shows the date as a date.
    assert row[born] == "7/4/1980"


def test_a_write_cut_short_at_its_formats_writes_and_counts_every_row_on_its_retry(
    runtime: Runtime, spreadsheet_id: str, emulator: EmulatorServer
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    with runtime.db.session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
        for n in (1, 2):
            born = date(1980, 7, n)
            session.add(
                Customer(name=f"New {n}", agent_id=alice.id, date_of_birth=born)
            )
    # The call that formats the new rows' dates fails: it goes first, so
    # nothing of the write has landed and the retry writes and counts it all.
    emulator.state.inject(
        503, count=1, method="POST", path_contains=f"{spreadsheet_id}:batchUpdate"
    )
    job_id = runtime.sync.enqueue(alice, TO_SHEET).job_id
    pool = WorkerPool(runtime.queue, runtime.sync.handlers)
    pool.run_until_empty()
    runtime.queue.now = lambda: clock.now() + timedelta(minutes=5)  # retry due
    pool.run_until_empty()

    job = runtime.queue.get(job_id)
    assert (job.state, job.attempts) == ("succeeded", 2), job.error
    assert job.result is not None and job.result["summary"]["appended"] == 2
    customers = httpx.get(
        f"{emulator.base_url}/v4/spreadsheets/{spreadsheet_id}/values/Customers",
        params={"valueRenderOption": "FORMATTED_VALUE"},
    ).json()["values"]
    name, born = customers[0].index("Name"), customers[0].index("Date of Birth")
    shown = {row[name]: row[born] for row in customers[1:] if row[name][:4] == "New "}
    assert shown == {"New 1": "7/1/1980", "New 2": "7/2/1980"}


Rows = list[list[Any]]


def before_the_first_write(
    monkeypatch: pytest.MonkeyPatch, rows: Rows, change: Callable[[Rows], None]
) -> None:
    """A person changes ``rows`` (a tab's, in the emulator) as the sync's
    first write of any kind is sent, after its last read."""
    changed: list[bool] = []

    def person_changes_rows_first(write: Callable[..., Any]) -> Callable[..., Any]:
        def first_the_change(self: SheetsClient, *args: Any, **kw: Any) -> Any:
            if not changed:
                change(rows)
                changed.append(True)
            return write(self, *args, **kw)

        return first_the_change

    for name in ("batch_update", "batch_update_values"):
        write = getattr(SheetsClient, name)
        monkeypatch.setattr(SheetsClient, name, person_changes_rows_first(write))


def customers_sheet(emulator: EmulatorServer) -> Any:
    """The Customers tab of the one spreadsheet in the emulator."""
    (book,) = emulator.state.spreadsheets.values()
    return next(tab for tab in book.sheets if tab.title == "Customers")


def sync_as_rows_change(
    runtime: Runtime,
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[Rows], None],
) -> tuple[Job, dict[int, str], set[int]]:
    """A to-sheet of four changed cities during whose write a person changes
    the Customers rows (below the header) as the write is sent: the job, run
    to its end, the cities read before, and the customers changed."""
    sheet = customers_sheet(emulator)
    header = [str(cell) for cell in sheet.rows[0]]
    city = header.index("City")
    cities_before = {row[0]: row[city] for row in sheet.rows[1:]}
    with runtime.db.session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
        moved = session.scalars(
            select(Customer).where(Customer.agent_id == alice.id).order_by(Customer.id)
        ).all()[:4]
        for customer in moved:
            customer.city = f"Moved {customer.id}"
    before_the_first_write(monkeypatch, sheet.rows, change)
    job_id = runtime.sync.enqueue(alice, TO_SHEET).job_id
    pool = WorkerPool(runtime.queue, runtime.sync.handlers)
    pool.run_until_empty()
    runtime.queue.now = lambda: clock.now() + timedelta(minutes=5)  # retry due
    pool.run_until_empty()
    return runtime.queue.get(job_id), cities_before, {c.id for c in moved}


def cities_now(emulator: EmulatorServer, spreadsheet_id: str) -> dict[int, str]:
    _, tab, header = customers_tab(emulator, spreadsheet_id)
    city = header.index("City")
    synced = [row for row in tab.rows[1:] if row and row[0] not in ("", None)]
    return {int(row[0]): str(row[city]) for row in synced}


def inserted_above(rows: Rows, *inserted: list[Any]) -> None:
    rows[1:1] = list(inserted)


@pytest.mark.parametrize(
    "change",
    [
        lambda rows: inserted_above(rows, [], []),
        lambda rows: rows.__setitem__(slice(1, None), rows[:0:-1]),  # a sort
    ],
    ids=["two blank rows inserted above", "the rows sorted the other way"],
)
def test_rows_moved_as_a_sync_writes_get_back_their_values_and_no_import_takes_ours(
    runtime: Runtime,
    spreadsheet_id: str,
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[Rows], None],
) -> None:
    run_sync(runtime, "alice", TO_SHEET)

    job, before, moved = sync_as_rows_change(runtime, emulator, monkeypatch, change)
    imported = run_sync(runtime, "alice", FROM_SHEET)

    assert (job.state, job.attempts) == ("succeeded", 2), job.error
    assert "moved while the sync wrote" in job.errors[0]["error"]
    assert cities_now(emulator, spreadsheet_id) == {
        record_id: f"Moved {record_id}" if record_id in moved else was
        for record_id, was in before.items()
    }
    assert imported["summary"]["updated"] == 0


@pytest.mark.parametrize("refused", [429, 503])
def test_values_put_back_after_a_refusal_are_put_back_on_a_fresh_read(
    runtime: Runtime,
    spreadsheet_id: str,
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    refused: int,
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    emulator.state.inject(refused, method="POST", path_contains="values:batchUpdate")

    def sort(rows: Rows) -> None:
        rows[1:] = rows[:0:-1]

    job, before, moved = sync_as_rows_change(runtime, emulator, monkeypatch, sort)
    imported = run_sync(runtime, "alice", FROM_SHEET)

    assert (job.state, job.attempts) == ("succeeded", 2), job.error
    assert cities_now(emulator, spreadsheet_id) == {
        record_id: f"Moved {record_id}" if record_id in moved else was
        for record_id, was in before.items()
    }
    assert imported["summary"]["updated"] == 0


def test_values_that_cannot_be_put_back_fail_the_sync_for_a_person_to_check(
    runtime: Runtime,
    spreadsheet_id: str,
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A retry's read would take them for edits of the rows they landed in.
    run_sync(runtime, "alice", TO_SHEET)
    runtime.settings.google_max_retries = 1
    emulator.state.inject(503, count=5, method="POST", path_contains="values:")

    def sort(rows: Rows) -> None:
        rows[1:] = rows[:0:-1]

    job, _, _ = sync_as_rows_change(runtime, emulator, monkeypatch, sort)

    assert (job.state, job.attempts) == ("failed", 1), job.error
    assert "could not be put back" in (job.error or "")
    assert "Customers!" in (job.error or "") and "check them" in (job.error or "")


def test_values_a_write_put_into_a_row_without_an_id_fail_it_naming_the_cells(
    runtime: Runtime,
    spreadsheet_id: str,
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_sync(runtime, "alice", TO_SHEET)

    def typed_above(rows: Rows) -> None:
        inserted_above(rows, ["", "Typed Person"])

    job, before, _ = sync_as_rows_change(runtime, emulator, monkeypatch, typed_above)

    assert (job.state, job.attempts) == ("failed", 1)
    assert "landed in rows it never read" in (job.error or "")
    assert "Customers!" in (job.error or "") and "check them" in (job.error or "")
    # What the typed row held there cannot be told: the value meant for
    # another record is taken out, so that no import takes it for this one's.
    _, tab, header = customers_tab(emulator, spreadsheet_id)
    (typed,) = [row for row in tab.rows[1:] if row[0] in ("", None)]
    assert [*typed, *[None] * len(header)][header.index("City")] in ("", None)
    assert cities_now(emulator, spreadsheet_id) == before


def import_and_its_retry(runtime: Runtime) -> Job:
    """An import of alice's, run with its retry, if any: the job."""
    with runtime.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
    job_id = runtime.sync.enqueue(alice, FROM_SHEET).job_id
    pool = WorkerPool(runtime.queue, runtime.sync.handlers)
    pool.run_until_empty()
    runtime.queue.now = lambda: clock.now() + timedelta(minutes=5)  # retry due
    pool.run_until_empty()
    return runtime.queue.get(job_id)


def test_rows_sorted_as_an_import_writes_new_ids_keep_their_own_ids(
    runtime: Runtime,
    spreadsheet_id: str,
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    sheet = customers_sheet(emulator)
    header = [str(cell) for cell in sheet.rows[0]]
    name = header.index("Name")
    ids_before = {row[name]: row[0] for row in sheet.rows[1:]}
    for typed in ("Aaron Typed", "Aaron Typed Two"):
        line: list[Any] = [""] * len(header)
        line[name] = typed
        sheet.rows.append(line)

    def sort_by_name(rows: Rows) -> None:
        rows[1:] = sorted(rows[1:], key=lambda row: str(row[name]))

    before_the_first_write(monkeypatch, sheet.rows, sort_by_name)
    job = import_and_its_retry(runtime)
    again = run_sync(runtime, "alice", FROM_SHEET)

    assert job.state == "succeeded", job.error
    assert "moved while the sync wrote" in job.errors[0]["error"]
    _, tab, _ = customers_tab(emulator, spreadsheet_id)
    ids_now = {row[name]: row[0] for row in tab.rows[1:]}
    assert {k: v for k, v in ids_now.items() if k in ids_before} == ids_before
    assert ids_now["Aaron Typed"] and ids_now["Aaron Typed Two"]
    assert again["summary"]["updated"] == again["summary"]["created"] == 0


def typed_rows(sheet: Any, people: list[tuple[str, str, str]]) -> dict[str, int]:
    """Rows typed below the last, without IDs: each person's name, email and
    city. The header's columns by name."""
    header = {str(cell): i for i, cell in enumerate(sheet.rows[0])}
    for name, email, city in people:
        line: list[Any] = [""] * len(header)
        line[header["Name"]] = name
        line[header["Email"]] = email
        line[header["City"]] = city
        sheet.rows.append(line)
    return header


@pytest.mark.parametrize(
    "change",
    [
        "edited in place",
        "edited and swapped",
        "another person's row put in above the last",
        "another person's row put in above both",
    ],
)
def test_a_row_being_given_its_id_that_changed_meanwhile_keeps_it_only_in_place(
    runtime: Runtime,
    spreadsheet_id: str,
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    change: str,
) -> None:
    # A row being given its ID is known by its cells. One a person typed into
    # is still the row read where its neighbours stayed; else it may be any
    # row: the ID is taken back out and the import fails naming the cells.
    # Either way no import gives one record another row's values.
    run_sync(runtime, "alice", TO_SHEET)
    sheet = customers_sheet(emulator)
    people = [
        ("Zed Typed", "zed@example.com", "Boston"),
        ("Zoe Typed", "zoe@example.com", "Boston"),
    ]
    header = typed_rows(sheet, people)
    rita = [""] * len(header)
    rita[header["Name"]], rita[header["City"]] = "Rita Other", "Boston"

    def person(rows: Rows) -> None:
        if change == "another person's row put in above the last":
            rows.insert(len(rows) - 1, rita)
        elif change == "another person's row put in above both":
            rows.insert(len(rows) - 2, rita)
        else:
            rows[-1][header["Name"]] = "Zoe Fixed"
            rows[-1][header["Email"]] = "zoe.fixed@example.com"
            if change == "edited and swapped":
                rows[-2], rows[-1] = rows[-1], rows[-2]

    before_the_first_write(monkeypatch, sheet.rows, person)
    job = import_and_its_retry(runtime)
    after = import_and_its_retry(runtime)

    if change == "edited in place":
        assert (job.state, job.attempts, job.errors) == ("succeeded", 1, [])
        assert after.result is not None
        assert after.result["summary"]["created"] == 0
    else:
        assert job.state == "failed" and "were blanked" in (job.error or "")
    assert after.state == "succeeded", after.error
    _, tab, _ = customers_tab(emulator, spreadsheet_id)
    with runtime.db.read_session() as session:
        for row in tab.rows[1:]:
            customer = session.get(Customer, int(row[header["ID"]]))
            assert customer is not None
            assert customer.name == row[header["Name"]]
            assert (customer.email or "") == (row[header["Email"]] or "")


@pytest.mark.parametrize(
    ("change", "typed"),
    [
        (lambda rows: inserted_above(rows, [], []), []),
        (lambda rows: rows.append(["", "Typed Person"]), ["Typed Person"]),
        (lambda rows: rows.__setitem__(slice(1, None), rows[:0:-1]), []),  # a sort
    ],
    ids=["rows inserted above", "a row typed below the last", "a sort"],
)
def test_rows_appended_as_rows_move_go_in_as_new_rows_over_none(
    runtime: Runtime,
    spreadsheet_id: str,
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[Rows], None],
    typed: list[str],
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    sheet = customers_sheet(emulator)
    name = [str(cell) for cell in sheet.rows[0]].index("Name")
    names = sorted(str(row[name]) for row in sheet.rows[1:])
    alice = customer_added(runtime, "New Customer")
    before_the_first_write(monkeypatch, sheet.rows, change)
    job_id = runtime.sync.enqueue(alice, TO_SHEET).job_id
    WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty()
    imported = run_sync(runtime, "alice", FROM_SHEET)

    job = runtime.queue.get(job_id)
    assert (job.state, job.attempts) == ("succeeded", 1), job.error
    assert job.result is not None and job.result["summary"]["appended"] == 1
    _, tab, _ = customers_tab(emulator, spreadsheet_id)
    now = sorted(str(row[name]) for row in tab.rows[1:] if len(row) > name)
    assert now == sorted([*names, "New Customer", *typed])
    assert imported["summary"]["updated"] == 0


def test_a_formula_on_the_id_in_a_typed_row_does_not_fail_the_import_writing_it(
    runtime: Runtime, spreadsheet_id: str, emulator: EmulatorServer
) -> None:
    # Writing the new ID changes what the formula shows: the row is still
    # the one read, known by the cells the sync reads.
    run_sync(runtime, "alice", TO_SHEET)
    sheet = customers_sheet(emulator)
    header = [str(cell) for cell in sheet.rows[0]]
    sheet.rows[0] = [*sheet.rows[0], "Ref"]
    typed: list[Any] = [None] * len(header)
    typed[header.index("Name")] = "Formula Row Person"
    sheet.rows.append(typed)
    number = len(sheet.rows)
    sheet.rows[-1] = [*typed, Rich(0, formula=f'=CONCATENATE("C-",A{number})')]

    imported = run_sync(runtime, "alice", FROM_SHEET)

    assert imported["summary"]["created"] == 1
    _, tab, _ = customers_tab(emulator, spreadsheet_id)
    assert tab.rows[number - 1][-1] == f"C-{tab.rows[number - 1][0]}"
