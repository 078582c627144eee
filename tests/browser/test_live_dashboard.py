"""The request's scenarios in a real browser, against the live dashboard.

Each test starts its own server and checks outcomes through the API (job
times, stored values), not only what the page says.
"""

from __future__ import annotations

import itertools
import os
import re
import statistics
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from openpyxl import load_workbook
from playwright.sync_api import Browser, Locator, Page, expect
from sqlalchemy import select

from sheetbridge.config import Settings
from sheetbridge.insurance import sync_jobs
from sheetbridge.insurance.models import Customer, User
from sheetbridge.insurance.sync_jobs import FROM_SHEET, TO_SHEET
from sheetbridge.queue.store import Claimed
from sheetbridge.queue.worker import JobContext
from sheetbridge.sheets.errors import SheetTransientError
from sheetbridge.sheets.xlsx import XlsxBackend
from sheetbridge.web.deps import Runtime
from sheetbridge.web.security import add_user
from tests.conftest import api_client
from tests.insurance.test_id_write_back import busy_writes, refuse_writes
from tests.insurance.test_review import (
    edit_app_city,
    edit_sheet_cell,
    unsynced_city_conflict,
)
from tests.insurance.test_workbook_sync import (
    alices_tab,
    delete_sheet_rows,
    run_sync,
    workbook_path,
)
from tests.support.server import live_server

pytestmark = pytest.mark.browser

EVENTS_URL = "**/api/insurance/sync/events*"
FINAL = ("succeeded", "failed", "cancelled")
# The message for a sync just queued: a worker may have started it already.
QUEUED_OR_RUNNING = re.compile(r"^Sync (queued|running)$")

# Registered before any page script runs: every long task of the dashboard.
LONG_TASKS = """
window.__longTasks = [];
try {
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      window.__longTasks.push({ start: entry.startTime, ms: entry.duration });
    }
  }).observe({ type: "longtask", buffered: true });
} catch (err) {
  window.__longTasks = null;
}
"""


@pytest.fixture
def sheet_latency_ms() -> int:
    """Per workbook call; a first sync to a sheet makes two (read, write)."""
    return 500


@pytest.fixture
def settings(settings: Settings, sheet_latency_ms: int) -> Settings:
    return settings.model_copy(update={"sheet_latency_ms": sheet_latency_ms})


def start_sign_in(
    browser: Browser,
    base_url: str,
    username: str,
    password: str | None = None,
    *,
    setup: Callable[[Page], object] | None = None,
) -> Page:
    """Submit the login form on a fresh browser context; don't wait for the page."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    if setup is not None:
        setup(page)
    page.goto(f"{base_url}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password or f"{username}-demo")
    page.click("button[type=submit]", no_wait_after=True)
    return page


def dashboard_ready(page: Page, *, stream: bool = True) -> Page:
    """Wait for the dashboard (and its live stream, if asked); mark the document."""
    page.wait_for_selector("#main[data-username]")
    if stream:
        expect(page.locator("#live-state")).to_have_attribute("data-mode", "live")
    page.evaluate("window.__sameDocument = 'still here'")
    return page


def open_dashboard(
    browser: Browser,
    base_url: str,
    username: str,
    password: str | None = None,
    *,
    setup: Callable[[Page], object] | None = None,
    stream: bool = True,
) -> Page:
    page = start_sign_in(browser, base_url, username, password, setup=setup)
    return dashboard_ready(page, stream=stream)


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__sameDocument") == "still here"


def watch_status_requests(page: Page, into: list[str]) -> None:
    """Record every request the page makes to the status endpoint."""
    page.on(
        "request",
        lambda request: (
            into.append(request.url)
            if "/api/insurance/sync/status" in request.url
            else None
        ),
    )


def job_ids(page: Page, selector: str = "#jobs li.job") -> list[int]:
    return [
        int(value)
        for value in page.locator(selector).evaluate_all(
            "items => items.map(li => li.dataset.jobId)"
        )
    ]


def final_job(api: httpx.Client, job_id: int, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = api.get(f"/api/insurance/sync/jobs/{job_id}").json()
        if job["state"] in FINAL:
            return job
        assert time.monotonic() < deadline, f"job {job_id} is still {job['state']}"
        time.sleep(0.1)


def when(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def click_sync_three_times(page: Page) -> None:
    """Press "Sync to sheet" three times in quick succession."""
    button = page.locator("#sync-to-sheet")
    for _ in range(3):
        button.click()


def test_three_quick_clicks_queue_three_syncs_that_run_one_after_another(
    browser: Browser, runtime: Runtime, tokens: dict[str, str]
) -> None:
    with live_server(runtime) as url:
        page = open_dashboard(browser, url, "alice")
        click_sync_three_times(page)

        expect(page.locator("#sync-message")).to_have_text("Sync queued (position 3)")
        expect(page.locator("#jobs li.job")).to_have_count(3)
        expect(page.locator("#active-jobs")).to_contain_text(
            "waiting for your earlier sync"
        )
        expect(page.locator("#recent-jobs li[data-state=succeeded]")).to_have_count(
            3, timeout=20_000
        )

        ids = job_ids(page)
        assert len(set(ids)) == 3
        expect(page.locator("#jobs li.job")).to_have_count(3)
        expect(page.locator("#sync-message[data-kind=error]")).to_have_count(0)
        expect(page.locator("#sync-message")).to_have_text("")
        expect(page.locator("#jobs .job-error")).to_have_count(0)
        with api_client(url, tokens["alice"]) as api:
            jobs = [final_job(api, job_id) for job_id in sorted(ids)]
            recent = api.get("/api/insurance/sync/status").json()["recent"]
        assert len(recent) == 3
        assert [job["state"] for job in jobs] == ["succeeded"] * 3
        for earlier, later in itertools.pairwise(jobs):
            assert when(later["started_at"]) >= when(earlier["finished_at"])
        assert_not_reloaded(page)
        page.close()


def test_a_queued_sync_cancelled_by_keyboard_keeps_the_focus_on_its_entry(
    browser: Browser, runtime: Runtime
) -> None:
    with live_server(runtime) as url:
        page = open_dashboard(browser, url, "alice")
        click_sync_three_times(page)
        expect(page.locator("#jobs li.job")).to_have_count(3)
        last = max(job_ids(page))
        entry = page.locator(f"#jobs li[data-job-id='{last}']")

        entry.locator("button.job-cancel").focus()
        page.keyboard.press("Enter")

        expect(entry).to_have_attribute("data-state", "cancelled")
        expect(entry).to_be_focused()
        page.close()


def test_ten_users_click_sync_at_once_and_their_syncs_run_in_parallel(
    browser: Browser, runtime: Runtime, tokens: dict[str, str]
) -> None:
    names = [f"agent{n:02d}" for n in range(10)]
    with runtime.db.session() as session:
        for name in names:
            add_user(session, name, "password-123", role="agent")
    assert runtime.settings.worker_concurrency >= 10
    with live_server(runtime) as url:
        pages = [start_sign_in(browser, url, name, "password-123") for name in names]
        for page in pages:
            dashboard_ready(page)
        # One wall-clock moment for every browser context.
        fire_at = pages[0].evaluate("Date.now()") + 600
        for page in pages:
            page.evaluate(
                """at => setTimeout(
                    () => document.querySelector('#sync-to-sheet').click(),
                    at - Date.now())""",
                fire_at,
            )
        for page in pages:
            expect(page.locator("#sync-message")).to_have_text(QUEUED_OR_RUNNING)
        for page in pages:
            expect(page.locator("#recent-jobs li[data-state=succeeded]")).to_have_count(
                1, timeout=20_000
            )
            expect(page.locator("#jobs li.job")).to_have_count(1)

        ids = [job_ids(page)[0] for page in pages]
        with api_client(url, tokens["admin"]) as api:
            jobs = [final_job(api, job_id) for job_id in ids]
        for page in pages:
            page.close()

    assert len(set(ids)) == 10
    assert len({job["owner_id"] for job in jobs}) == 10
    assert all(job["state"] == "succeeded" for job in jobs)
    starts = [when(job["started_at"]) for job in jobs]
    ends = [when(job["finished_at"]) for job in jobs]
    # Every job was running at one common moment.
    assert max(starts) < min(ends)
    durations = [end - start for start, end in zip(starts, ends, strict=True)]
    span = max(ends) - min(starts)
    assert span < 3 * statistics.median(durations), (span, durations)


@pytest.mark.parametrize("sheet_latency_ms", [1200])
def test_customer_saved_while_own_sync_runs_without_reload_or_long_tasks(
    browser: Browser, runtime: Runtime, tokens: dict[str, str]
) -> None:
    with live_server(runtime) as url:
        page = open_dashboard(
            browser, url, "alice", setup=lambda page: page.add_init_script(LONG_TASKS)
        )
        assert page.evaluate("window.__longTasks") is not None, "no Long Tasks API"
        row = page.locator("#customers-table tr[data-id]").first
        customer_id = int(row.get_attribute("data-id") or 0)

        # From here on: the sync, the edit and both results arriving (the
        # page's first load, before the user does anything, is not timed).
        began = page.evaluate("performance.now()")
        page.click("#sync-to-sheet")
        expect(page.locator("#sync-message")).to_have_text(QUEUED_OR_RUNNING)
        expect(page.locator("#active-jobs li[data-state=running]")).to_have_count(1)
        job_id = job_ids(page, "#active-jobs li.job")[0]

        row.get_by_role("button", name="Edit").click()
        page.fill("#record-form [name=city]", "Edited While Syncing")
        with page.expect_response(
            lambda r: (
                r.url.endswith(f"/api/customers/{customer_id}")
                and r.request.method == "PATCH"
            )
        ) as saved:
            page.click("#save-record")
        saved_at = time.time()
        assert saved.value.status == 200
        expect(
            page.locator(f"#customers-table tr[data-id='{customer_id}']")
        ).to_contain_text("Edited While Syncing")
        expect(
            page.locator(f"#recent-jobs li[data-job-id='{job_id}']")
        ).to_have_attribute("data-state", "succeeded", timeout=20_000)

        with api_client(url, tokens["alice"]) as api:
            job = final_job(api, job_id)
            customer = api.get(f"/api/customers/{customer_id}").json()
        assert job["state"] == "succeeded"
        assert when(job["started_at"]) < saved_at < when(job["finished_at"])
        assert customer["city"] == "Edited While Syncing"
        assert_not_reloaded(page)
        tasks: list[dict[str, float]] = page.evaluate("window.__longTasks")
        during = [task["ms"] for task in tasks if task["start"] + task["ms"] >= began]
        assert max(during, default=0) <= 200, tasks
        page.close()


def test_conflict_is_resolved_in_the_page_by_button_and_by_keyboard(
    browser: Browser, runtime: Runtime, tokens: dict[str, str]
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    record_id = edit_sheet_cell(runtime, 2, "City", "Sheet City")
    edit_sheet_cell(runtime, 2, "Email", "sheet@example.com")
    with live_server(runtime) as url, api_client(url, tokens["alice"]) as api:
        before = api.get(f"/api/customers/{record_id}").json()
        edited = api.patch(
            f"/api/customers/{record_id}",
            json={
                "version": before["version"],
                "city": "App City",
                "email": "app@example.com",
            },
        )
        assert edited.status_code == 200, edited.text

        page = open_dashboard(browser, url, "alice")
        expect(page.locator("#no-conflicts")).to_be_visible()
        page.click("#sync-from-sheet")

        items = page.locator("#conflict-list li.conflict")
        expect(items).to_have_count(2, timeout=20_000)
        expect(page.locator("#conflicts-count")).to_have_text("2")
        expect(page.locator("#conflicts-link")).to_have_text("2 conflicts to resolve")
        city = page.locator("#conflict-list li[data-field=city]")
        expect(city.locator(".is-app dd")).to_have_text("App City")
        expect(city.locator(".is-sheet dd")).to_have_text("Sheet City")
        expect(city.locator(".is-base dd")).to_have_text(before["city"])
        expect(city).to_contain_text(before["name"])

        city.get_by_role("button", name=re.compile("^Keep the sheet's value")).click()
        expect(city).to_have_count(0)
        expect(page.locator("#conflicts-count")).to_have_text("1")
        assert api.get(f"/api/customers/{record_id}").json()["city"] == "Sheet City"
        expect(
            page.locator(f"#customers-table tr[data-id='{record_id}']")
        ).to_contain_text("Sheet City")

        # The email conflict, by keyboard only: an invalid value first.
        email = page.locator("#conflict-list li[data-field=email]")
        email.locator("button.conflict-edit").focus()
        page.keyboard.press("Enter")
        value = email.locator("input[name=value]")
        expect(value).to_be_focused()
        expect(value).to_have_value("app@example.com")
        page.keyboard.press("Control+A")
        page.keyboard.press("Backspace")
        page.keyboard.press("Enter")  # blank: the page asks first
        expect(email.locator(".conflict-editor .field-error")).to_have_text(
            "Left blank, this clears Email: neither value is kept. "
            "Save again to clear it."
        )
        expect(items).to_have_count(1)
        page.keyboard.type("not an email")
        page.keyboard.press("Enter")
        expect(email.locator(".conflict-editor .field-error")).to_contain_text(
            "not a valid email address"
        )
        expect(value).to_have_attribute("aria-invalid", "true")
        expect(value).to_be_focused()
        page.keyboard.press("Control+A")
        page.keyboard.type("fixed@example.com")
        page.keyboard.press("Enter")

        expect(items).to_have_count(0)
        expect(page.locator("#no-conflicts")).to_be_visible()
        expect(page.locator("#conflicts-count")).to_be_hidden()
        after = api.get(f"/api/customers/{record_id}").json()
        assert (after["city"], after["email"]) == ("Sheet City", "fixed@example.com")
        assert api.get("/api/insurance/sync/conflicts").json()["conflicts"] == []
        assert_not_reloaded(page)
        page.close()


def city_conflict(runtime: Runtime) -> int:
    """A conflict over a city of alice's book, edited in her workbook and in
    the app after a sync; the record's ID."""
    run_sync(runtime, "alice", TO_SHEET)
    record_id = edit_sheet_cell(runtime, 2, "City", "Sheet City")
    edit_app_city(runtime, record_id, "App City")
    run_sync(runtime, "alice", FROM_SHEET)
    return record_id


def test_a_conflict_settled_in_another_window_says_what_was_kept_when_chosen_again(
    browser: Browser, runtime: Runtime, tokens: dict[str, str]
) -> None:
    record_id = city_conflict(runtime)
    with live_server(runtime) as url, api_client(url, tokens["alice"]) as api:
        first, second = (open_dashboard(browser, url, "alice") for _ in range(2))
        for page in (first, second):
            expect(page.locator("#conflict-list li.conflict")).to_have_count(1)

        first.get_by_role("button", name=re.compile("^Keep the sheet's value")).click()
        expect(first.locator("#no-conflicts")).to_be_visible()
        second.get_by_role("button", name=re.compile("^Keep the app's value")).click()

        expect(second.locator("#page-status")).to_contain_text(
            "was already resolved: the sheet's value, 'Sheet City', was kept by "
            "alice; your choice was not applied"
        )
        expect(second.locator("#no-conflicts")).to_be_visible()
        assert api.get(f"/api/customers/{record_id}").json()["city"] == "Sheet City"
        assert_not_reloaded(second)
        for page in (first, second):
            page.close()


def test_a_conflict_over_a_required_field_refuses_a_blank_value_at_once(
    browser: Browser, runtime: Runtime, tokens: dict[str, str]
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    record_id = edit_sheet_cell(runtime, 2, "Name", "Sheet Name")
    with live_server(runtime) as url, api_client(url, tokens["alice"]) as api:
        before = api.get(f"/api/customers/{record_id}").json()
        api.patch(
            f"/api/customers/{record_id}",
            json={"version": before["version"], "name": "App Name"},
        ).raise_for_status()
        page = open_dashboard(browser, url, "alice")
        page.click("#sync-from-sheet")
        name = page.locator("#conflict-list li[data-field=name]")
        name.get_by_role("button", name=re.compile("^Type another value")).click()

        name.locator("input[name=value]").fill("  ")
        name.locator("input[name=value]").press("Enter")

        expect(name.locator(".conflict-editor .field-error")).to_have_text(
            "Name may not be empty: type a value, or keep one side's."
        )
        expect(name).to_have_count(1)
        assert api.get(f"/api/customers/{record_id}").json()["name"] == "App Name"
        page.close()


def test_a_conflict_with_no_earlier_sync_of_the_sheet_says_so_instead_of_a_base(
    browser: Browser, runtime: Runtime, tokens: dict[str, str]
) -> None:
    unsynced_city_conflict(runtime)
    with live_server(runtime) as url:
        page = open_dashboard(browser, url, "alice")
        page.click("#sync-from-sheet")

        city = page.locator("#conflict-list li[data-field=city]")
        expect(city).to_have_count(1, timeout=20_000)
        expect(city.locator(".is-app dd")).to_have_text("App City")
        expect(city.locator(".is-sheet dd")).to_have_text("Sheet City")
        expect(city.locator(".is-base dd")).to_have_text(
            "(never synced with this sheet)"
        )
        page.close()


def test_long_conflicting_values_scroll_in_their_boxes_keeping_the_choices_near(
    browser: Browser, runtime: Runtime
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    record_id = edit_sheet_cell(runtime, 2, "Notes", "Sheet note. " * 140)
    with runtime.db.session() as session:
        customer = session.get(Customer, record_id)
        assert customer is not None
        customer.notes = "App note. " * 160
    with live_server(runtime) as url:
        page = open_dashboard(browser, url, "alice")
        page.click("#sync-from-sheet")

        card = page.locator("#conflict-list li[data-field=notes]")
        expect(card).to_have_count(1, timeout=20_000)
        app_value = card.locator(".is-app dd")
        expect(app_value).to_have_text(("App note. " * 160).strip())
        box = card.bounding_box()
        assert box is not None and box["height"] < 450, box
        assert app_value.evaluate("e => e.scrollHeight > e.clientHeight")
        expect(app_value).to_have_attribute("tabindex", "0")  # scrolls by keyboard
        expect(card.locator(".is-base dd")).not_to_have_attribute("tabindex", "0")
        page.close()


def test_an_admin_sees_whose_sheet_each_conflict_is_in(
    browser: Browser, runtime: Runtime
) -> None:
    unsynced_city_conflict(runtime)
    run_sync(runtime, "alice", FROM_SHEET)
    with live_server(runtime) as url:
        mine = open_dashboard(browser, url, "alice")
        admin = open_dashboard(browser, url, "admin")

        for page, told in ((admin, "alice's sheet · City"), (mine, "City")):
            where = page.locator("#conflict-list li[data-field=city] .conflict-where")
            expect(where).to_have_text(re.compile(rf"^{told}"))
        admin.close()
        mine.close()


@pytest.mark.parametrize("choice", ["keep-sheet", "edit"])
def test_a_conflict_whose_app_value_changed_since_is_shown_again_not_overwritten(
    browser: Browser, runtime: Runtime, tokens: dict[str, str], choice: str
) -> None:
    record_id = city_conflict(runtime)
    with live_server(runtime) as url, api_client(url, tokens["alice"]) as api:
        page = open_dashboard(browser, url, "alice")
        city = page.locator("#conflict-list li[data-field=city]")
        expect(city.locator(".is-app dd")).to_have_text("App City")
        if choice == "edit":
            city.get_by_role("button", name=re.compile("^Type another value")).click()
            city.locator("input[name=value]").fill("Typed City")
        before = api.get(f"/api/customers/{record_id}").json()
        api.patch(
            f"/api/customers/{record_id}",
            json={"version": before["version"], "city": "Later City"},
        ).raise_for_status()

        def press() -> None:
            if choice == "edit":
                city.get_by_role("button", name="Save value").click()
            else:
                city.get_by_role("button", name=re.compile("^Keep the sheet's")).click()

        press()

        expect(city.locator(".conflict-error")).to_contain_text(
            "changed after this conflict was found: it is now 'Later City'"
        )
        expect(city.locator(".is-app dd")).to_have_text("Later City")
        if choice == "edit":
            expect(city.locator("input[name=value]")).to_have_value("Typed City")
        assert api.get(f"/api/customers/{record_id}").json()["city"] == "Later City"
        press()
        expect(city).to_have_count(0)
        kept = "Typed City" if choice == "edit" else "Sheet City"
        assert api.get(f"/api/customers/{record_id}").json()["city"] == kept
        assert_not_reloaded(page)
        page.close()


def test_import_is_undone_from_the_history(
    browser: Browser, runtime: Runtime, tokens: dict[str, str]
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    record_id = edit_sheet_cell(runtime, 2, "City", "Imported City")
    with live_server(runtime) as url, api_client(url, tokens["alice"]) as api:
        original = api.get(f"/api/customers/{record_id}").json()["city"]
        page = open_dashboard(browser, url, "alice")
        row = page.locator(f"#customers-table tr[data-id='{record_id}']")
        page.click("#sync-from-sheet")
        expect(row).to_contain_text("Imported City", timeout=20_000)

        job = page.locator("#recent-jobs li[data-kind=from_sheet]").first
        expect(job).to_contain_text("1 record updated")
        job.get_by_role("button", name=re.compile("^Undo import")).click()
        job.get_by_role("button", name=re.compile("^Confirm: undo import")).click()
        expect(job.locator(".undo-report")).to_contain_text("1 record restored")
        expect(job.get_by_role("button", name=re.compile("Undo import"))).to_have_count(
            0
        )
        expect(row).to_contain_text(original)
        assert api.get(f"/api/customers/{record_id}").json()["city"] == original
        assert_not_reloaded(page)

        # Opened again, the page says the import was undone and offers no undo.
        page.reload()
        dashboard_ready(page)
        job = page.locator("#recent-jobs li[data-kind=from_sheet]").first
        expect(job.locator(".job-undone")).to_have_text("This import was undone.")
        expect(job.get_by_role("button", name=re.compile("Undo import"))).to_have_count(
            0
        )
        page.close()


def sync_finding_rows_deleted(page: Page, count: int) -> Locator:
    """Sync to the sheet from the page; the finished sync, which found
    ``count`` rows deleted in the sheet."""
    page.click("#sync-to-sheet")
    flagged = page.locator("#recent-jobs li[data-kind=to_sheet]").first
    expect(flagged).to_contain_text(
        f"{count} rows deleted in the sheet", timeout=20_000
    )
    return flagged


@pytest.mark.parametrize(
    ("listed", "button"),
    [(500, "^Write the 3 rows"), (1, "^Write all rows")],
    ids=["the-rows-listed", "all-when-the-list-is-cut"],
)
def test_rows_deleted_in_the_sheet_are_written_back_from_the_history(
    browser: Browser,
    runtime: Runtime,
    tokens: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    listed: int,
    button: str,
) -> None:
    monkeypatch.setattr(sync_jobs, "MAX_REPORTED_ISSUES", listed)
    run_sync(runtime, "alice", TO_SHEET)
    gone = delete_sheet_rows(runtime, "Customers", 3)
    with live_server(runtime) as url, api_client(url, tokens["alice"]) as api:
        page = open_dashboard(browser, url, "alice")
        flagged = sync_finding_rows_deleted(page, 3)

        flagged.get_by_role("button", name=re.compile(button)).click()
        expect(flagged.locator(".job-write-back")).to_have_count(0)
        expect(page.locator("#recent-jobs li.job")).to_have_count(2, timeout=20_000)
        written = page.locator("#recent-jobs li.job").first
        expect(written).to_contain_text("3 rows appended", timeout=20_000)
        (job_id,) = job_ids(page, "#recent-jobs li.job:first-child")
        assert final_job(api, job_id)["result"]["summary"]["appended"] == 3
        with alices_tab(runtime) as (sheet, _):
            assert set(gone) <= {row[0] for row in sheet.iter_rows(values_only=True)}
        assert_not_reloaded(page)
        page.close()


def test_a_write_back_of_a_record_deleted_in_the_app_since_writes_the_rest_and_says_so(
    browser: Browser, runtime: Runtime, tokens: dict[str, str]
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    gone = delete_sheet_rows(runtime, "Policies", 2)
    with live_server(runtime) as url, api_client(url, tokens["alice"]) as api:
        page = open_dashboard(browser, url, "alice")
        flagged = sync_finding_rows_deleted(page, 2)
        policy = api.get(f"/api/policies/{gone[0]}").json()
        deleted = api.delete(
            f"/api/policies/{gone[0]}", params={"version": policy["version"]}
        )
        assert deleted.status_code == 204

        flagged.get_by_role("button", name=re.compile("^Write the 2 rows")).click()

        expect(page.locator("#recent-jobs li.job")).to_have_count(2, timeout=20_000)
        note = f"policy {gone[0]} is not in your book; the rest will be written back"
        expect(page.locator("#sync-message")).to_contain_text(note)
        written = page.locator("#recent-jobs li.job").first
        expect(written).to_contain_text("1 row appended", timeout=20_000)
        expect(page.locator("#sync-message")).to_have_text(note)
        with alices_tab(runtime, "Policies") as (sheet, _):
            ids = {row[0] for row in sheet.iter_rows(values_only=True)}
        assert gone[1] in ids and gone[0] not in ids
        assert_not_reloaded(page)
        page.close()


@pytest.mark.parametrize(
    ("listed", "toggle_text", "button"),
    [
        (500, "Show 2 row-level issues", "^Write the 2 rows"),
        (1, "Show the first 1 of 2 row-level issues", "^Write all rows"),
    ],
    ids=["all-listed", "list-cut"],
)
def test_a_sync_that_ended_before_the_page_opened_lists_its_issues_on_demand(
    browser: Browser,
    runtime: Runtime,
    tokens: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    listed: int,
    toggle_text: str,
    button: str,
) -> None:
    monkeypatch.setattr(sync_jobs, "MAX_REPORTED_ISSUES", listed)
    run_sync(runtime, "alice", TO_SHEET)
    with alices_tab(runtime) as (sheet, _):
        gone = [sheet.cell(row, 1).value for row in (2, 3)]
        sheet.delete_rows(2, 2)
    run_sync(runtime, "alice", TO_SHEET)
    with live_server(runtime) as url, api_client(url, tokens["alice"]) as api:
        page = open_dashboard(browser, url, "alice")
        flagged = page.locator("#recent-jobs li[data-kind=to_sheet]").first
        toggle = flagged.locator("details.job-issues > summary")
        expect(toggle).to_have_text(toggle_text)

        toggle.focus()
        page.keyboard.press("Enter")

        expect(flagged.locator(".issues-list li")).to_have_count(min(listed, 2))
        # What each issue is, in words (a row deleted in the sheet is a note).
        expect(flagged.locator(".issues-list li .issue-kind").first).to_have_text(
            "Note: "
        )
        for record_id in gone[:listed]:
            expect(flagged.locator(".issues-list")).to_contain_text(
                f"(value: {record_id})"
            )
        rest = flagged.locator("details.job-issues").get_by_text("The rest are not")
        expect(rest).to_have_count(1 if listed < 2 else 0)
        expect(flagged.locator("details.job-issues > summary")).to_be_focused()
        flagged.get_by_role("button", name=re.compile(button)).click()
        written = page.locator("#recent-jobs li.job").first
        expect(written).to_contain_text("2 rows appended", timeout=20_000)
        (job_id,) = job_ids(page, "#recent-jobs li.job:first-child")
        assert final_job(api, job_id)["result"]["summary"]["appended"] == 2
        assert_not_reloaded(page)
        page.close()


@contextmanager
def importing_a_typed_row(
    browser: Browser, runtime: Runtime, name: str, then: Callable[[], None]
) -> Iterator[Locator]:
    """alice's import of a row named ``name`` she typed into her synced sheet,
    pressed in her dashboard once ``then`` has run (which breaks writes, say):
    the import's entry in her list of syncs."""
    run_sync(runtime, "alice", TO_SHEET)
    with alices_tab(runtime) as (sheet, header):
        sheet.cell(sheet.max_row + 1, header["Name"]).value = name
    then()
    with live_server(runtime) as url:
        page = open_dashboard(browser, url, "alice")
        page.click("#sync-from-sheet")
        yield page.locator("li.job[data-kind=from_sheet]").first
        assert_not_reloaded(page)
        page.close()


def test_an_import_that_failed_after_saving_says_so_and_is_undone(
    browser: Browser, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    with importing_a_typed_row(
        browser, runtime, "Saved Before Failing", lambda: refuse_writes(monkeypatch)
    ) as job:
        expect(job.locator(".job-saved")).to_have_text(
            "It failed after its import was saved: 1 record changed, and it stays.",
            timeout=20_000,
        )
        expect(job.locator(".job-error")).to_contain_text("the import itself was saved")
        job.get_by_role("button", name=re.compile("^Undo import")).click()
        job.get_by_role("button", name=re.compile("^Confirm: undo import")).click()
        expect(job.locator(".undo-report > p").first).to_have_text(
            "Import undone: 1 record it created deleted."
        )
        expect(job.locator(".undo-note")).to_contain_text(
            "1 record the import created was deleted; its row stays in the "
            "sheet: delete it there"
        )


def test_an_import_waiting_to_retry_after_saving_says_what_it_saved(
    browser: Browser, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    with importing_a_typed_row(
        browser, runtime, "Saved Before Retry", lambda: busy_writes(monkeypatch)
    ) as job:
        expect(job).to_have_attribute("data-display", "retry", timeout=20_000)
        expect(job.locator(".job-saved")).to_have_text(
            "Its import was saved: 1 record changed, and it stays. "
            "The next try goes on from there.",
        )


def test_a_sync_done_on_its_second_try_says_how_long_from_the_first(
    browser: Browser, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    write = XlsxBackend.write
    tries: list[int] = []

    def busy_once(self: XlsxBackend, *args: Any, **kwargs: Any) -> None:
        tries.append(1)
        if len(tries) == 1:
            raise SheetTransientError("the workbook is busy", location=str(self.path))
        write(self, *args, **kwargs)

    monkeypatch.setattr(XlsxBackend, "write", busy_once)
    with live_server(runtime) as url:
        page = open_dashboard(browser, url, "alice")
        page.click("#sync-to-sheet")

        done = page.locator("#recent-jobs li.job[data-state=succeeded]")
        expect(done).to_have_count(1, timeout=20_000)
        expect(done).to_contain_text(
            re.compile(r"2 attempts, [\d.]+ s from queued to finished")
        )
        expect(done).not_to_contain_text("took")
        page.close()


def break_alices_workbook(runtime: Runtime) -> Path:
    """Put bytes that are no workbook where alice's workbook goes."""
    path = workbook_path(runtime, "alice")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"these bytes are not a workbook")
    return path


def test_failed_sync_shows_the_reason_and_what_to_do(
    browser: Browser, runtime: Runtime, tokens: dict[str, str]
) -> None:
    path = break_alices_workbook(runtime)
    with live_server(runtime) as url, api_client(url, tokens["alice"]) as api:
        queued = api.post("/api/insurance/sync/from-sheet").json()
        job = final_job(api, queued["job_id"])
        assert job["state"] == "failed"
        assert "not a readable .xlsx workbook" in job["error"]
        reason = job["error"].replace(f"{path.parent}/", "")

        page = open_dashboard(browser, url, "alice")
        item = page.locator(f"#recent-jobs li[data-job-id='{job['id']}']")
        expect(item.locator(".job-state")).to_have_text("Failed")
        expect(item.locator(".job-error")).to_have_text(f"Reason: {reason}")
        expect(item.locator(".job-advice")).to_contain_text("not an Excel (.xlsx) file")
        assert str(path.parent) not in item.inner_text()

        # Live: the retried sync fails the same way, and the page says so.
        item.get_by_role("button", name="Try Sync from sheet again").click()
        expect(page.locator("#recent-jobs li[data-state=failed]")).to_have_count(
            2, timeout=20_000
        )
        retried = page.locator("#recent-jobs li.job").first
        expect(retried.locator(".job-error")).to_have_text(f"Reason: {reason}")
        expect(page.locator("#page-status")).to_contain_text("failed")
        page.close()


def test_a_damaged_or_a_missing_tab_gets_the_advice_that_fits(
    browser: Browser, runtime: Runtime, tokens: dict[str, str]
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    path = workbook_path(runtime, "alice")
    good = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        parts = {name: archive.read(name) for name in archive.namelist()}
    part = "xl/worksheets/sheet2.xml"
    parts[part] = parts[part][: len(parts[part]) // 2]
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    os.utime(path, (time.time() - 3600,) * 2)  # no save in progress
    with live_server(runtime) as url, api_client(url, tokens["alice"]) as api:
        damaged = final_job(
            api, api.post("/api/insurance/sync/from-sheet").json()["job_id"]
        )
        path.write_bytes(good)
        book = load_workbook(path)
        book["Policies"].title = "Policies 2026"
        book.save(path)
        missing = final_job(
            api, api.post("/api/insurance/sync/from-sheet").json()["job_id"]
        )
        assert "is damaged" in damaged["error"] and "has no tab" in missing["error"]

        page = open_dashboard(browser, url, "alice")
        for job, advice in (
            (damaged, "The workbook file is damaged"),
            (missing, "run Sync to sheet to write it anew"),
        ):
            item = page.locator(f"#recent-jobs li[data-job-id='{job['id']}']")
            expect(item.locator(".job-advice")).to_contain_text(advice)
        page.close()


def test_an_admin_sees_everyones_syncs_whose_they_are_and_how_they_ended(
    browser: Browser, runtime: Runtime, tokens: dict[str, str]
) -> None:
    break_alices_workbook(runtime)
    with (
        live_server(runtime) as url,
        api_client(url, tokens["alice"]) as alice,
        api_client(url, tokens["bob"]) as bob,
    ):
        failed = final_job(
            alice, alice.post("/api/insurance/sync/from-sheet").json()["job_id"]
        )
        done = final_job(bob, bob.post("/api/insurance/sync/to-sheet").json()["job_id"])
        assert (failed["state"], done["state"]) == ("failed", "succeeded")
        mine = open_dashboard(browser, url, "alice")
        admin = open_dashboard(browser, url, "admin")
        expect(mine.locator("#all-syncs")).to_have_count(0)

        admin.get_by_text("Everyone's syncs").click()

        entries = admin.locator("#all-jobs li.job")
        alices = entries.filter(has_text=f"#{failed['id']}")
        expect(alices.locator(".job-owner")).to_have_text("alice")
        expect(alices.locator(".job-state")).to_have_text("Failed")
        expect(alices).to_contain_text("not a readable .xlsx workbook")
        bobs = entries.filter(has_text=f"#{done['id']}")
        expect(bobs.locator(".job-owner")).to_have_text("bob")
        expect(bobs.locator(".job-state")).to_have_text("Done")
        expect(bobs).to_contain_text("rows appended")
        # A sync queued later shows up while the list is open.
        later = bob.post("/api/insurance/sync/to-sheet").json()["job_id"]
        expect(entries.filter(has_text=f"#{later}")).to_have_count(1, timeout=15_000)
        assert job_ids(admin, "#all-jobs li.job")[0] == later
        assert_not_reloaded(admin)
        admin.close()
        mine.close()


def claim_alices_sync(runtime: Runtime) -> Claimed:
    """Queue a sync to alice's sheet and claim it as a worker would."""
    with runtime.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
    queued = runtime.sync.enqueue(alice, TO_SHEET)
    claimed = runtime.queue.claim("test-worker")
    assert claimed is not None and claimed.id == queued.job_id
    return claimed


def test_older_syncs_are_shown_on_request_below_the_recent_ones(
    browser: Browser, runtime: Runtime
) -> None:
    with runtime.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
    made = []
    for _ in range(23):  # stopped before they ran: finished at once
        made.append(runtime.sync.enqueue(alice, TO_SHEET).job_id)
        runtime.queue.cancel(made[-1])
    with live_server(runtime) as url:
        page = open_dashboard(browser, url, "alice")
        history = page.locator("#recent-jobs li.job")
        expect(history).to_have_count(20)
        older = page.get_by_role("button", name="Show older syncs")

        older.focus()
        page.keyboard.press("Enter")

        expect(history).to_have_count(23)
        expect(older).to_be_hidden()
        expect(
            page.locator(f"#recent-jobs li[data-job-id='{made[2]}']")
        ).to_be_focused()
        assert job_ids(page, "#recent-jobs li.job") == sorted(made, reverse=True)
        # A sync that finishes now goes on top; the older ones stay listed.
        page.click("#sync-to-sheet")
        expect(history).to_have_count(24, timeout=20_000)
        assert_not_reloaded(page)
        page.close()


def test_a_stop_that_came_too_late_is_told_on_the_finished_sync(
    browser: Browser, runtime: Runtime
) -> None:
    claimed = claim_alices_sync(runtime)
    result = runtime.sync.handlers[TO_SHEET](JobContext(claimed, runtime.queue))
    # The stop arrives after the sheet was written, before the job settles.
    runtime.queue.cancel(claimed.id)
    runtime.queue.succeed(claimed.id, claimed.epoch, result)

    with live_server(runtime) as url:
        page = open_dashboard(browser, url, "alice")
        item = page.locator(f"#recent-jobs li[data-job-id='{claimed.id}']")
        expect(item.locator(".job-state")).to_have_text("Done")
        expect(item.locator(".job-late-stop")).to_have_text(
            "Your stop came too late: the sheet was already written."
        )
        page.close()


@pytest.mark.parametrize(
    ("reason", "told"),
    [
        (
            "Google Sheets quota exceeded for book-1: Quota exceeded.",
            "Waiting for quota: Google Sheets asked to slow down. Retry 2 in 4 s.",
        ),
        (
            "Google Sheets error 503 for book-1: The service is unavailable.",
            "The sheet service had a problem: Google Sheets error 503 for book-1: "
            "The service is unavailable. Retry 2 in 4 s.",
        ),
    ],
)
def test_a_sync_retrying_a_sheets_call_shows_why_and_its_retry_count(
    browser: Browser, runtime: Runtime, reason: str, told: str
) -> None:
    claimed = claim_alices_sync(runtime)
    # What a worker reports when the Sheets API answered 429 or 503 twice.
    JobContext(claimed, runtime.queue).progress(
        "retrying", rows_read=70, retries=2, reason=reason, delay_s=4.0
    )

    with live_server(runtime) as url:
        page = open_dashboard(browser, url, "alice")
        item = page.locator(f"#jobs li[data-job-id='{claimed.id}']")
        expect(item.locator(".job-progress > span").first).to_have_text(told)
        expect(item).to_contain_text("70 rows read")
        page.close()


def test_retry_waiting_shows_the_reason_and_next_try_then_succeeds(
    browser: Browser, runtime: Runtime, tokens: dict[str, str]
) -> None:
    # Excel's lock file: writing now would be lost at Excel's next save.
    lock = workbook_path(runtime, "alice").parent / "~$alice.xlsx"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_bytes(b"")
    with live_server(runtime) as url:
        page = open_dashboard(browser, url, "alice")
        page.click("#sync-to-sheet")
        job = page.locator("#jobs li.job")
        expect(job).to_have_attribute("data-display", "retry", timeout=10_000)
        expect(job.locator(".job-state")).to_have_text("Retry waiting")
        # The lock stays while the page looks, so later attempts fail the same way.
        expect(job).to_contain_text(
            re.compile(r"Attempt \d+ did not finish: alice\.xlsx is open")
        )
        expect(job).to_contain_text("Next try at")
        lock.unlink()

        expect(job).to_have_attribute("data-state", "succeeded", timeout=15_000)
        job_id = job_ids(page)[0]
        with api_client(url, tokens["alice"]) as api:
            done = final_job(api, job_id)
        assert done["state"] == "succeeded"
        assert done["attempts"] >= 2
        expect(page.locator("#jobs li.job")).to_have_count(1)
        page.close()


def test_job_changes_arrive_over_the_stream_without_polling(
    browser: Browser, runtime: Runtime
) -> None:
    with live_server(runtime) as url:
        seen: list[str] = []
        page = open_dashboard(
            browser, url, "alice", setup=lambda p: watch_status_requests(p, seen)
        )
        page.click("#sync-to-sheet")
        job = page.locator("#jobs li.job")
        expect(job).to_have_attribute("data-state", "running", timeout=10_000)
        expect(job).to_have_attribute("data-state", "succeeded", timeout=15_000)
        assert seen == []
        assert page.evaluate("window.sheetbridge.transport") == "stream"
        page.close()


def test_polling_covers_a_dropped_stream_until_it_reconnects(
    browser: Browser, runtime: Runtime
) -> None:
    requests: list[str] = []

    def cut_stream(page: Page) -> None:
        watch_status_requests(page, requests)
        page.route(EVENTS_URL, lambda route: route.abort())

    with live_server(runtime) as url:
        page = open_dashboard(browser, url, "alice", setup=cut_stream, stream=False)
        expect(page.locator("#live-state")).to_have_attribute("data-mode", "polling")
        expect(page.locator("#live-state")).to_contain_text("Reconnecting")

        page.click("#sync-to-sheet")
        first = page.locator("#jobs li.job")
        expect(first).to_have_attribute("data-state", "succeeded", timeout=10_000)
        assert requests, "the page did not fall back to polling"

        page.unroute(EVENTS_URL)
        page.evaluate("window.dispatchEvent(new Event('online'))")
        expect(page.locator("#live-state")).to_have_attribute("data-mode", "live")
        polled = len(requests)

        page.click("#sync-to-sheet")
        expect(page.locator("#jobs li.job[data-state=succeeded]")).to_have_count(
            2, timeout=10_000
        )
        ids = job_ids(page)
        assert len(ids) == len(set(ids)) == 2
        assert len(requests) == polled, "still polling while the stream is live"
        page.close()


# Every text the sync message shows, in order, from the page's first script on.
MESSAGE_LOG = """
window.__syncMessages = [];
document.addEventListener("DOMContentLoaded", () => {
  const message = document.querySelector("#sync-message");
  new MutationObserver(() => window.__syncMessages.push(message.textContent))
    .observe(message, { childList: true, characterData: true, subtree: true });
});
"""


@pytest.mark.parametrize("transport", ["stream", "polling"])
def test_the_sync_message_follows_the_job_and_clears_once_it_finished(
    browser: Browser, runtime: Runtime, transport: str
) -> None:
    def setup(page: Page) -> None:
        page.add_init_script(MESSAGE_LOG)
        if transport == "polling":
            page.route(EVENTS_URL, lambda route: route.abort())

    with live_server(runtime) as url:
        page = open_dashboard(
            browser, url, "alice", setup=setup, stream=transport == "stream"
        )
        message = page.locator("#sync-message")
        page.click("#sync-to-sheet")
        expect(message).to_have_text(QUEUED_OR_RUNNING)
        job = page.locator("#jobs li.job")
        expect(job).to_have_attribute("data-state", "succeeded", timeout=15_000)
        expect(page.locator("#no-active-jobs")).to_be_visible()

        expect(message).to_have_text("")
        expect(message).not_to_have_attribute("data-kind", re.compile(".*"))
        shown = page.evaluate("window.__syncMessages")
        assert shown[-1] == ""
        if transport == "stream":  # a poll may miss the running stage
            assert "Sync running" in shown, shown
        page.close()
