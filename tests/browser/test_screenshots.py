"""Screenshots of the dashboard mid-sync with a conflict listed (opt-in).

    SHEETBRIDGE_SCREENSHOT_DIR=/tmp/shots \\
        python -m pytest tests/browser/test_screenshots.py

writes ``dashboard-1280.png`` and ``dashboard-390.png`` there; the README's
``docs/dashboard-mid-sync.png`` is the 1280 one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from sheetbridge.insurance.sync_jobs import TO_SHEET
from sheetbridge.web.deps import Runtime
from tests.browser.test_live_dashboard import final_job, job_ids
from tests.conftest import api_client
from tests.insurance.test_review import edit_sheet_cell
from tests.insurance.test_workbook_sync import run_sync
from tests.support.server import live_server

SHOTS = os.environ.get("SHEETBRIDGE_SCREENSHOT_DIR")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not SHOTS, reason="set SHEETBRIDGE_SCREENSHOT_DIR to take them"),
]


def test_dashboard_mid_sync_with_a_conflict(
    browser: Browser, runtime: Runtime, tokens: dict[str, str]
) -> None:
    out = Path(SHOTS or ".")
    out.mkdir(parents=True, exist_ok=True)
    run_sync(runtime, "alice", TO_SHEET)
    record_id = edit_sheet_cell(runtime, 2, "City", "Portland")
    edit_sheet_cell(runtime, 3, "Phone", "207-555-0100")
    with live_server(runtime) as url, api_client(url, tokens["alice"]) as api:
        record = api.get(f"/api/customers/{record_id}").json()
        api.patch(
            f"/api/customers/{record_id}",
            json={"version": record["version"], "city": "South Portland"},
        )
        queued = api.post("/api/insurance/sync/from-sheet").json()
        assert final_job(api, queued["job_id"])["state"] == "succeeded"
        # From here on, every sheet call is slow: the screenshots catch syncs mid-way.
        runtime.sync.settings.sheet_latency_ms = 4000

        pages = {}
        for width, height in ((1280, 860), (390, 844)):
            page = browser.new_page(
                viewport={"width": width, "height": height},
                device_scale_factor=1 if width > 600 else 2,
            )
            page.goto(f"{url}/login")
            page.fill("input[name=username]", "alice")
            page.fill("input[name=password]", "alice-demo")
            page.click("button[type=submit]")
            expect(page.locator("#live-state")).to_have_attribute("data-mode", "live")
            expect(page.locator("#conflict-list li")).to_have_count(1)
            pages[width] = page
        pages[1280].click("#sync-to-sheet")
        pages[1280].click("#sync-from-sheet")
        for width, page in pages.items():
            running = page.locator("#active-jobs li[data-state=running]")
            expect(running.locator(".job-progress")).to_contain_text("Step")
            expect(page.locator("#active-jobs li.job")).to_have_count(2)
            page.mouse.move(5, 5)
            page.screenshot(
                path=str(out / f"dashboard-{width}.png"), full_page=width < 600
            )
        for job_id in job_ids(pages[1280], "#active-jobs li.job"):
            api.post(f"/api/insurance/sync/jobs/{job_id}/cancel")
        for page in pages.values():
            page.close()
