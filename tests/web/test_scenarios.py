"""The original request's three scenarios, against a real server and workers."""

from __future__ import annotations

import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest
from openpyxl import load_workbook

from sheetbridge.config import Settings
from sheetbridge.web.deps import Runtime
from sheetbridge.web.security import add_user, issue_token
from tests.conftest import api_client
from tests.support.server import live_server


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Every workbook call takes 300 ms, like a remote spreadsheet API would,
    # so overlapping or serial execution shows in the recorded times.
    return settings.model_copy(update={"sheet_latency_ms": 300})


def wait_for_jobs(
    client: httpx.Client, job_ids: list[int], timeout_s: float = 60
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = [client.get(f"/api/insurance/sync/jobs/{i}").json() for i in job_ids]
        if all(job["state"] in ("succeeded", "failed", "cancelled") for job in jobs):
            return jobs
        time.sleep(0.05)
    raise AssertionError(f"jobs {job_ids} did not finish in {timeout_s} s")


def interval(job: dict[str, Any]) -> tuple[datetime, datetime]:
    return (
        datetime.fromisoformat(job["started_at"]),
        datetime.fromisoformat(job["finished_at"]),
    )


def test_one_user_syncing_three_times_quickly_gets_three_jobs_run_in_order(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    with live_server(runtime) as url, api_client(url, tokens["alice"]) as alice:
        answers = [alice.post("/api/insurance/sync/to-sheet") for _ in range(3)]
        assert [answer.status_code for answer in answers] == [202, 202, 202]
        ids = [answer.json()["job_id"] for answer in answers]
        jobs = wait_for_jobs(alice, ids)

    assert [job["state"] for job in jobs] == ["succeeded"] * 3
    spans = [interval(job) for job in jobs]
    for (_, earlier_end), (later_start, _) in itertools.pairwise(spans):
        assert earlier_end <= later_start, "jobs of one user overlapped"


def test_ten_users_syncing_at_once_are_all_queued_and_run_in_parallel(
    runtime: Runtime,
) -> None:
    with runtime.db.session() as session:
        users = [
            add_user(session, f"agent{n}", "password-123", role="agent")
            for n in range(10)
        ]
        tokens = [issue_token(session, user) for user in users]

    def click(base_url: str, token: str) -> tuple[int, dict[str, Any], float]:
        with api_client(base_url, token) as client:
            started = time.perf_counter()
            answer = client.post("/api/insurance/sync/to-sheet")
            return answer.status_code, answer.json(), time.perf_counter() - started

    with live_server(runtime) as url:
        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(lambda token: click(url, token), tokens))
        jobs = [
            wait_for_jobs(api_client(url, token), [body["job_id"]])[0]
            for token, (_, body, _) in zip(tokens, answers, strict=True)
        ]

    assert [status for status, _, _ in answers] == [202] * 10
    assert all(body["queued"] and body["position"] == 1 for _, body, _ in answers)
    latencies_ms = sorted(seconds * 1000 for _, _, seconds in answers)
    print(
        f"\n10-user enqueue latency ms: p50={latencies_ms[4]:.1f} "
        f"max={latencies_ms[-1]:.1f}"
    )
    assert [job["state"] for job in jobs] == ["succeeded"] * 10
    spans = [interval(job) for job in jobs]
    latest_start = max(start for start, _ in spans)
    earliest_end = min(end for _, end in spans)
    assert latest_start < earliest_end, "the ten users' syncs did not all overlap"


def test_customer_edited_while_that_users_sync_runs_keeps_both_changes(
    runtime: Runtime, tokens: dict[str, str], settings: Settings
) -> None:
    with live_server(runtime) as url, api_client(url, tokens["alice"]) as alice:
        customer = alice.get("/api/customers", params={"limit": 1}).json()["items"][0]
        job_id = alice.post("/api/insurance/sync/to-sheet").json()["job_id"]
        deadline = time.monotonic() + 30
        while (
            alice.get(f"/api/insurance/sync/jobs/{job_id}").json()["state"] != "running"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.01)

        edit = alice.patch(
            f"/api/customers/{customer['id']}",
            json={"version": customer["version"], "city": "Edited While Syncing"},
        )
        assert edit.status_code == 200
        assert wait_for_jobs(alice, [job_id])[0]["state"] == "succeeded"
        assert alice.get(f"/api/customers/{customer['id']}").json()["city"] == (
            "Edited While Syncing"
        )
        second = alice.post("/api/insurance/sync/to-sheet").json()["job_id"]
        assert wait_for_jobs(alice, [second])[0]["state"] == "succeeded"

    sheet = load_workbook(settings.workbook_dir / "alice.xlsx")["Customers"]
    header = [cell.value for cell in sheet[1]]
    rows = {row[0]: row for row in sheet.iter_rows(min_row=2, values_only=True)}
    assert rows[customer["id"]][header.index("City")] == "Edited While Syncing"
