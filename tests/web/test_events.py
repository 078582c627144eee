"""Server-sent events carry a user's job transitions, and only theirs."""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from sheetbridge.insurance.sync_jobs import TO_SHEET
from sheetbridge.web.deps import Runtime
from tests.conftest import api_client, bearer
from tests.insurance.test_workbook_sync import alices_tab, run_sync
from tests.support.server import live_server


def read_events(
    url: str, token: str, until_state: str, found: list[dict[str, Any]]
) -> None:
    # The server closes a stream that is still open when it shuts down.
    with contextlib.suppress(httpx.RemoteProtocolError):
        _read(url, token, until_state, found)


def _read(url: str, token: str, until_state: str, found: list[dict[str, Any]]) -> None:
    headers = bearer(token)
    with httpx.stream(
        "GET", f"{url}/api/insurance/sync/events", headers=headers, timeout=30
    ) as stream:
        event = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                found.append({"event": event, "data": json.loads(line[6:])})
                data = found[-1]["data"]
                if event == "job" and data["state"] == until_state:
                    return


def test_events_stream_status_then_each_transition_of_the_callers_jobs(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    alices: list[dict[str, Any]] = []
    bobs: list[dict[str, Any]] = []
    # A sync slow enough to be seen running: the stream sends each job as it
    # is when an event about it arrives, so a job done within milliseconds
    # may go from queued straight to succeeded.
    runtime.settings.sheet_latency_ms = 200
    with live_server(runtime) as url:
        with api_client(url, tokens["bob"]) as bob:
            bob.post("/api/insurance/sync/to-sheet")
        reader = threading.Thread(
            target=read_events, args=(url, tokens["alice"], "succeeded", alices)
        )
        reader.start()
        bob_reader = threading.Thread(
            target=read_events, args=(url, tokens["bob"], "never", bobs), daemon=True
        )
        bob_reader.start()
        while not alices:
            threading.Event().wait(0.02)
        with api_client(url, tokens["alice"]) as alice:
            job_id = alice.post("/api/insurance/sync/to-sheet").json()["job_id"]
        reader.join(30)

    assert alices[0]["event"] == "status"
    states = [e["data"]["state"] for e in alices if e["event"] == "job"]
    assert {e["data"]["id"] for e in alices if e["event"] == "job"} == {job_id}
    assert states[-1] == "succeeded" and "running" in states
    assert all(e["data"]["owner_id"] != alices[1]["data"]["owner_id"] for e in bobs[1:])


def test_events_bring_queued_jobs_new_positions_when_an_earlier_job_ends(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    frames: list[dict[str, Any]] = []
    with live_server(runtime, workers=False) as url:
        with api_client(url, tokens["alice"]) as alice:
            ids = [
                alice.post("/api/insurance/sync/to-sheet").json()["job_id"]
                for _ in range(3)
            ]
        reader = threading.Thread(
            target=read_events,
            args=(url, tokens["alice"], "never", frames),
            daemon=True,
        )
        reader.start()
        while not frames:
            threading.Event().wait(0.02)
        claimed = runtime.queue.claim("test-worker")
        assert claimed is not None and claimed.id == ids[0]
        runtime.queue.succeed(claimed.id, claimed.epoch, {})

        def last_position(job_id: int) -> int | None:
            views = [
                f["data"]
                for f in frames
                if f["event"] == "job" and f["data"]["id"] == job_id
            ]
            return views[-1]["position"] if views else None

        deadline = threading.Event()
        for _ in range(200):
            if last_position(ids[2]) == 2:
                break
            deadline.wait(0.025)
    assert frames[0]["event"] == "status"
    assert [j["position"] for j in frames[0]["data"]["queued"]] == [1, 2, 3]
    assert last_position(ids[1]) == 1
    assert last_position(ids[2]) == 2


def test_the_stream_opens_with_recent_results_counted_and_sends_a_jobs_in_full(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    with alices_tab(runtime) as (sheet, _):
        sheet.delete_rows(2, 2)
    run_sync(runtime, "alice", TO_SHEET)
    frames: list[dict[str, Any]] = []
    with live_server(runtime) as url:
        reader = threading.Thread(
            target=read_events, args=(url, tokens["alice"], "succeeded", frames)
        )
        reader.start()
        while not frames:
            threading.Event().wait(0.02)
        with api_client(url, tokens["alice"]) as alice:
            alice.post("/api/insurance/sync/to-sheet")
        reader.join(30)

    opening = frames[0]["data"]["recent"][0]["result"]["tabs"]["Customers"]
    assert "issues" not in opening and opening["issues_listed"] == 2
    final = frames[-1]["data"]["result"]["tabs"]["Customers"]
    assert [issue["kind"] for issue in final["issues"]] == ["deleted_in_sheet"] * 2


def _database_down(*_args: object, **_kwargs: object) -> None:
    raise OperationalError("SELECT ...", {}, Exception("connection refused"))


def test_a_stream_opened_while_the_database_is_down_answers_503_not_a_broken_200(
    runtime: Runtime, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        live_server(runtime, workers=False) as url,
        api_client(url, tokens["alice"]) as alice,
    ):
        assert alice.get("/api/insurance/sync/status").status_code == 200
        monkeypatch.setattr(runtime.queue, "status", _database_down)
        answer = alice.get("/api/insurance/sync/events")
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"


def test_a_stream_whose_database_goes_down_ends_cleanly_for_the_page_to_poll(
    runtime: Runtime, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    frames: list[str] = []
    with (
        live_server(runtime, workers=False) as url,
        httpx.stream(
            "GET",
            f"{url}/api/insurance/sync/events",
            headers=bearer(tokens["alice"]),
            timeout=30,
        ) as stream,
    ):
        lines = stream.iter_lines()
        frames.append(next(line for line in lines if line.startswith("event:")))
        monkeypatch.setattr(runtime.queue, "get", _database_down)
        with api_client(url, tokens["alice"]) as alice:
            assert alice.post("/api/insurance/sync/to-sheet").status_code == 202
        frames += list(lines)  # ends: the server closed the stream cleanly
    assert frames[0] == "event: status"
    assert not any(line.startswith("event: job") for line in frames)
