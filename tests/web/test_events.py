"""Server-sent events carry a user's job transitions, and only theirs."""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any

import httpx

from sheetbridge.web.deps import Runtime
from tests.conftest import api_client, bearer
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
