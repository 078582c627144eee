"""The dashboard in a real browser: sync in the background while editing."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook
from playwright.sync_api import Browser, Page, expect

from sheetbridge.config import Settings
from sheetbridge.insurance import sync_jobs
from sheetbridge.insurance.sync_jobs import TO_SHEET
from sheetbridge.web.deps import Runtime
from tests.browser.conftest import sign_in
from tests.conftest import api_client
from tests.insurance.test_workbook_sync import run_sync, workbook_path
from tests.support.server import live_server

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"sheet_latency_ms": 700})


def mark_page(page: Page) -> None:
    page.evaluate("window.__sameDocument = 'still here'")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__sameDocument") == "still here"


def test_policy_edited_while_sync_runs_and_result_appears_without_reload(
    browser: Browser, runtime: Runtime
) -> None:
    with live_server(runtime) as url:
        page = sign_in(browser, url, "alice")
        mark_page(page)
        page.click("#show-policies")
        row = page.locator("#policies-table tr[data-id]").first
        row.wait_for()
        policy_id = row.get_attribute("data-id")

        page.click("#sync-to-sheet")
        expect(page.locator("#sync-message")).to_have_text(
            re.compile(r"^Sync (queued|running)$")
        )
        expect(page.locator("#jobs [data-state=running]")).to_have_count(1)

        row.get_by_role("button", name="Edit").click()
        page.fill("#record-form [name=carrier]", "Edited During Sync Mutual")
        page.click("#save-record")
        expect(
            page.locator(f"#policies-table tr[data-id='{policy_id}']")
        ).to_contain_text("Edited During Sync Mutual")

        expect(page.locator("#jobs [data-state=succeeded]").first).to_be_visible(
            timeout=30_000
        )
        expect(page.locator("#sync-message")).to_have_text("")
        assert_not_reloaded(page)
        page.close()


@pytest.mark.parametrize(
    "listed", [1_000, 1], ids=["every-record-listed", "the-list-cut-short"]
)
def test_sync_from_sheet_patches_changed_rows_in_place(
    browser: Browser, runtime: Runtime, monkeypatch: pytest.MonkeyPatch, listed: int
) -> None:
    monkeypatch.setattr(sync_jobs, "MAX_REPORTED_CHANGED", listed)
    run_sync(runtime, "alice", TO_SHEET)
    path = workbook_path(runtime, "alice")
    with live_server(runtime) as url:
        page = sign_in(browser, url, "alice")
        mark_page(page)
        shown = page.locator("#customers-table tr[data-id]")
        customer_ids = [int(shown.nth(i).get_attribute("data-id") or 0) for i in (0, 1)]

        count = page.locator("#customers-count")
        expect(count).not_to_have_text("")
        before = int(count.inner_text().replace(",", ""))

        book = load_workbook(path)
        sheet = book["Customers"]
        header = {cell.value: cell.column for cell in sheet[1]}
        for row in range(2, sheet.max_row + 1):
            if sheet.cell(row, 1).value in customer_ids:
                sheet.cell(row, header["City"]).value = "Patched From Sheet"
        sheet.cell(sheet.max_row + 1, header["Name"]).value = "Typed In Sheet"
        book.save(path)

        page.click("#sync-from-sheet")
        for customer_id in customer_ids:
            expect(
                page.locator(f"#customers-table tr[data-id='{customer_id}']")
            ).to_contain_text("Patched From Sheet", timeout=30_000)
        # The record the import created shows at the top, and is counted.
        expect(shown.first).to_contain_text("Typed In Sheet")
        expect(count).to_have_text(f"{before + 1:,}")
        assert_not_reloaded(page)
        page.close()


def test_sheet_settings_point_the_book_at_a_google_spreadsheet(
    browser: Browser,
    runtime: Runtime,
    tokens: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key_file = tmp_path / "service-account.json"
    key_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "client_email": "sync@agency.test",
                "private_key": "-----BEGIN PRIVATE KEY-----\n...",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    # The settings the sync service reads too: it refuses Google without them.
    monkeypatch.setattr(runtime.settings, "google_credentials_file", key_file)
    with live_server(runtime) as url:
        page = sign_in(browser, url, "alice")
        page.click("#sheet-settings summary")
        expect(page.locator("#target-now")).to_contain_text("workbook")
        page.check("#target-form input[value=google]")
        page.fill("#target-spreadsheet", "not valid!")
        page.click("#save-target")
        expect(page.locator("#err-spreadsheet_id")).not_to_be_empty()
        page.fill(  # the address as the browser shows it
            "#target-spreadsheet",
            "https://docs.google.com/spreadsheets/d/1AbCdEfGhIjKlMnOpQrStUvWxYz/edit#gid=0",
        )
        page.select_option("#target-delete-mode", "delete")
        page.click("#save-target")
        expect(page.locator("#target-now")).to_contain_text(
            "1AbCdEfGhIjKlMnOpQrStUvWxYz"
        )
        expect(page.locator("#target-share")).to_contain_text("sync@agency.test")
        with api_client(url, tokens["alice"]) as client:
            target = client.get("/api/insurance/sync/target").json()
        assert (target["backend"], target["delete_mode"]) == ("google", "delete")
        page.close()


def test_google_refused_where_the_server_has_none_is_said_beside_the_choice(
    browser: Browser, runtime: Runtime
) -> None:
    assert runtime.settings.google_credentials_file is None
    with live_server(runtime) as url:
        page = sign_in(browser, url, "alice")
        page.click("#sheet-settings summary")
        choice = page.locator("#target-form input[value=google]")
        # A choice is its own small size, beside its words.
        assert (choice.bounding_box() or {"width": 99})["width"] < 30
        choice.check()
        page.fill("#target-spreadsheet", "1AbCdEfGhIjKlMnOpQrStUvWxYz")
        page.click("#save-target")

        expect(page.locator("#err-backend")).to_contain_text(
            "Google Sheets is not set up on this server"
        )
        expect(page.locator("#target-now")).to_contain_text("workbook")
        page.close()


def test_a_premium_with_a_decimal_comma_is_a_field_error_and_groups_of_three_save(
    browser: Browser, runtime: Runtime, tokens: dict[str, str]
) -> None:
    with live_server(runtime) as url:
        page = sign_in(browser, url, "alice")
        page.click("#show-policies")
        row = page.locator("#policies-table tr[data-id]").first
        row.wait_for()
        policy_id = row.get_attribute("data-id")
        with api_client(url, tokens["alice"]) as client:
            before = client.get(f"/api/policies/{policy_id}").json()["premium"]

        row.get_by_role("button", name="Edit").click()
        page.fill("#record-form [name=premium]", "1,50")
        page.click("#save-record")
        expect(page.locator("#err-premium")).to_contain_text("point for cents")
        with api_client(url, tokens["alice"]) as client:
            assert client.get(f"/api/policies/{policy_id}").json()["premium"] == before

        page.fill("#record-form [name=premium]", "$1,234.50")
        page.click("#save-record")
        expect(
            page.locator(f"#policies-table tr[data-id='{policy_id}']")
        ).to_contain_text("1,234.50")
        with api_client(url, tokens["alice"]) as client:
            saved = client.get(f"/api/policies/{policy_id}").json()["premium"]
        assert saved == "1234.50"
        page.close()


@pytest.mark.parametrize(
    ("tab", "field"), [("customers", "date_of_birth"), ("policies", "effective_date")]
)
def test_a_date_the_browser_cannot_read_is_a_field_error_never_a_cleared_date(
    browser: Browser, runtime: Runtime, tokens: dict[str, str], tab: str, field: str
) -> None:
    with live_server(runtime) as url:
        page = sign_in(browser, url, "alice")
        page.click(f"#show-{tab}")
        row = page.locator(f"#{tab}-table tr[data-id]").first
        row.wait_for()
        record_id = row.get_attribute("data-id")
        with api_client(url, tokens["alice"]) as client:
            before = client.get(f"/api/{tab}/{record_id}").json()
        row.get_by_role("button", name="Edit").click()

        # February 30th, typed into the date picker (mm/dd/yyyy here): the
        # browser holds no value for it.
        date_input = page.locator(f"#record-form [name={field}]")
        date_input.focus()  # its first part, the month
        page.keyboard.type("02301990")
        assert date_input.evaluate("i => i.validity.badInput") is True
        page.click("#save-record")

        expect(page.locator(f"#err-{field}")).to_contain_text("not a real date")
        expect(date_input).to_be_focused()
        expect(page.locator("#editor")).to_be_visible()
        with api_client(url, tokens["alice"]) as client:
            after = client.get(f"/api/{tab}/{record_id}").json()
        assert after[field] == before[field] and after["version"] == before["version"]
        page.close()


def test_a_refused_sign_out_says_so_and_a_second_press_signs_out(
    browser: Browser, runtime: Runtime
) -> None:
    with live_server(runtime) as url:
        page = sign_in(browser, url, "alice")
        # As if the session's token changed since the page was loaded.
        page.locator("form[action='/logout'] [name=csrf]").evaluate(
            "input => { input.value = 'stale'; }"
        )
        page.click("#sign-out")

        notice = page.get_by_role("alert").filter(has_text="still signed in")
        expect(notice).to_be_visible()
        assert page.evaluate("window.location.search") == ""  # not on a reload
        page.click("#sign-out")
        expect(page).to_have_url(f"{url}/login")
        page.close()


def test_unsaved_typing_is_kept_unless_the_user_agrees_to_discard_it(
    browser: Browser, runtime: Runtime
) -> None:
    with live_server(runtime) as url:
        page = sign_in(browser, url, "alice")
        rows = page.locator("#customers-table tr[data-id]")
        rows.first.wait_for()
        asked: list[str] = []
        answer = {"accept": False}

        def on_dialog(dialog: Any) -> None:
            asked.append(dialog.message)
            if answer["accept"]:
                dialog.accept()
            else:
                dialog.dismiss()

        page.on("dialog", on_dialog)
        rows.nth(0).get_by_role("button", name="Edit").click()
        notes = page.locator("#record-form [name=notes]")
        notes.fill("typed, not saved")

        page.keyboard.press("Escape")
        page.click("#cancel-edit")
        rows.nth(1).get_by_role("button", name="Edit").click()

        assert len(asked) == 3 and asked[0].startswith("Discard your unsaved changes")
        expect(page.locator("#editor")).to_be_visible()
        expect(notes).to_have_value("typed, not saved")
        answer["accept"] = True
        page.click("#cancel-edit")
        expect(page.locator("#editor")).to_be_hidden()
        # A form with nothing typed closes without asking.
        rows.nth(1).get_by_role("button", name="Edit").click()
        page.click("#cancel-edit")
        expect(page.locator("#editor")).to_be_hidden()
        assert len(asked) == 4
        page.close()


@pytest.mark.parametrize("username", ["alice", "admin"])
def test_a_row_s_edit_and_delete_stay_in_view_at_laptop_width(
    browser: Browser, runtime: Runtime, username: str
) -> None:
    with live_server(runtime) as url:
        page = sign_in(browser, url, username)
        page.click("#show-policies")
        row = page.locator("#policies-table tr[data-id]").first
        row.wait_for()
        box = page.locator("#policies-panel .table-wrap").bounding_box()
        assert box is not None

        for name in ("Edit", "Delete"):
            button = row.get_by_role("button", name=name).bounding_box()
            assert button is not None
            assert box["x"] <= button["x"]
            assert button["x"] + button["width"] <= box["x"] + box["width"], name
        page.close()


@pytest.mark.parametrize("width", [1280, 375])
def test_the_keyboard_goes_through_the_page_in_the_order_it_is_drawn(
    browser: Browser, runtime: Runtime, width: int
) -> None:
    # The sheet sync panel comes first on screen, beside the records on a
    # laptop and above them on a phone, and first to the keyboard too; a
    # skip link leads past it to the records.
    with live_server(runtime) as url:
        page = sign_in(browser, url, "alice")
        page.set_viewport_size({"width": width, "height": 800})
        panel = page.locator(".sync-panel").bounding_box()
        records = page.locator("#records").bounding_box()
        assert panel is not None and records is not None
        if width > 1100:
            assert panel["x"] + panel["width"] <= records["x"]
        else:
            assert panel["y"] + panel["height"] <= records["y"]
        assert page.evaluate(
            "document.querySelector('.sync-panel').compareDocumentPosition("
            "document.querySelector('#records')) & Node.DOCUMENT_POSITION_FOLLOWING"
        )

        page.evaluate("document.activeElement.blur()")
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        expect(page.locator(":focus")).to_have_text("Skip to records")
        page.keyboard.press("Enter")
        page.keyboard.press("Tab")
        assert page.evaluate("!!document.activeElement.closest('#records')")
        page.close()


def test_a_record_open_for_editing_on_a_laptop_leaves_rows_and_sync_in_sight(
    browser: Browser, runtime: Runtime
) -> None:
    with live_server(runtime) as url:
        page = sign_in(browser, url, "alice")
        row = page.locator("#customers-table tr[data-id]").first
        row.get_by_role("button", name="Edit").click()
        expect(page.locator("#editor")).to_be_visible()

        editor = page.locator("#editor").bounding_box()
        table = page.locator("#customers-panel .table-wrap").bounding_box()
        topbar = page.locator(".topbar").bounding_box()
        assert editor is not None and table is not None and topbar is not None
        assert editor["x"] + editor["width"] <= table["x"]
        assert editor["y"] >= topbar["y"] + topbar["height"] - 1  # Sync in reach
        expect(page.locator("#sync-to-sheet")).to_be_visible()
        page.close()
