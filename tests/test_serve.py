"""``sheetbridge serve`` as a user starts it: demo data, workers in a child."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from openpyxl import load_workbook

from tests.support.server import free_port

DEADLINE_S = 60.0


@dataclass
class Served:
    """A running ``serve`` with alice signed in."""

    client: httpx.Client
    csrf: str
    data_dir: Path
    pid: int

    def enqueue_to_sheet(self) -> dict[str, Any]:
        queued = self.client.post(
            "/api/insurance/sync/to-sheet", headers={"X-CSRF-Token": self.csrf}
        )
        assert queued.status_code == 202, queued.text
        answer: dict[str, Any] = queued.json()
        return answer

    def wait_until_finished(self, status_url: str) -> dict[str, Any]:
        deadline = time.monotonic() + DEADLINE_S
        while (job := self.client.get(status_url).json())["state"] not in (
            "succeeded",
            "failed",
        ):
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        found: dict[str, Any] = job
        return found


@pytest.fixture
def served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Served]:
    port = free_port()
    env = {
        **os.environ,
        "SHEETBRIDGE_DATA_DIR": str(tmp_path / "data"),
        "SHEETBRIDGE_PORT": str(port),
        "SHEETBRIDGE_LOG_LEVEL": "WARNING",
        **getattr(request, "param", {}),
    }
    env.pop("SHEETBRIDGE_TEST_DATABASE_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "sheetbridge", "serve"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        printed = [server.stdout.readline() for _ in range(6)]
        assert f"http://127.0.0.1:{port}/" in printed[0]
        assert any("alice / alice-demo" in line for line in printed)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + DEADLINE_S
        with httpx.Client(base_url=base, timeout=10) as client:
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.1)
            login = client.get("/login")
            csrf = login.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            client.post(
                "/login",
                data={"username": "alice", "password": "alice-demo", "csrf": csrf},
            )
            page = client.get("/")
            token = page.text.split('name="csrf-token" content="', 1)[1].split('"')[0]
            yield Served(client, token, tmp_path / "data", server.pid)
    finally:
        server.terminate()
        server.wait(60)


def test_serve_starts_the_demo_and_its_worker_process_runs_syncs(
    served: Served,
) -> None:
    queued = served.enqueue_to_sheet()
    job = served.wait_until_finished(queued["status_url"])
    assert job["state"] == "succeeded", job
    assert (served.data_dir / "workbooks" / "alice.xlsx").exists()


def test_serve_stopping_ends_open_event_streams_and_exits_at_once(
    served: Served,
) -> None:
    ended = threading.Event()
    opened = threading.Event()

    def listen() -> None:
        with served.client.stream(
            "GET", "/api/insurance/sync/events", timeout=DEADLINE_S
        ) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    opened.set()
        ended.set()  # the server ended the stream

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert opened.wait(DEADLINE_S), "the event stream sent no status"
    stopping = time.monotonic()

    os.kill(served.pid, signal.SIGTERM)

    assert ended.wait(5), "the event stream was left open"
    deadline = stopping + 10
    while _alive(served.pid):
        assert time.monotonic() < deadline, "serve did not exit"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    """Whether the process still runs (a zombie, exited unreaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_serve_pushes_the_worker_process_transitions_as_server_sent_events(
    served: Served,
) -> None:
    frames: list[tuple[str, dict[str, Any]]] = []
    opened = threading.Event()

    def listen() -> None:
        with served.client.stream(
            "GET", "/api/insurance/sync/events", timeout=DEADLINE_S
        ) as stream:
            event = ""
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    frames.append((event, json.loads(line[6:])))
                    opened.set()
                    if event == "job" and frames[-1][1]["state"] == "succeeded":
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert opened.wait(DEADLINE_S), "the event stream sent no status"
    queued = served.enqueue_to_sheet()
    listener.join(DEADLINE_S)

    states = [data["state"] for event, data in frames if event == "job"]
    assert frames[0][0] == "status"
    assert "running" in states, frames
    assert states[-1] == "succeeded", frames
    assert {data["id"] for event, data in frames if event == "job"} == {
        queued["job_id"]
    }


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _worker_of(pid: int, not_pid: int | None = None) -> int:
    deadline = time.monotonic() + DEADLINE_S
    while not (found := [child for child in _children(pid) if child != not_pid]):
        assert time.monotonic() < deadline, "serve started no worker process"
        time.sleep(0.05)
    (worker,) = found
    return worker


def _niceness_settles_at(pid: int, expected: int) -> bool:
    """The worker lowers its priority first thing once Python has started."""
    deadline = time.monotonic() + DEADLINE_S
    while os.getpriority(os.PRIO_PROCESS, pid) != expected:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("served", [{"SHEETBRIDGE_WORKER_NICE": "7"}], indirect=True)
def test_the_worker_process_and_its_restarts_run_below_the_web_process_cpu_priority(
    served: Served,
) -> None:
    web_niceness = os.getpriority(os.PRIO_PROCESS, served.pid)
    worker = _worker_of(served.pid)
    assert _niceness_settles_at(worker, web_niceness + 7)

    os.kill(worker, signal.SIGKILL)
    restarted = _worker_of(served.pid, not_pid=worker)

    assert _niceness_settles_at(restarted, web_niceness + 7)
    assert os.getpriority(os.PRIO_PROCESS, served.pid) == web_niceness
    job = served.wait_until_finished(served.enqueue_to_sheet()["status_url"])
    assert job["state"] == "succeeded", job


def _a_sync_running(served: Served) -> tuple[dict[str, Any], int]:
    """Queue a sync and wait until it runs; the queue's answer and the PID of
    the worker process running it."""
    queued = served.enqueue_to_sheet()
    deadline = time.monotonic() + DEADLINE_S
    while served.client.get(queued["status_url"]).json()["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (worker,) = _children(served.pid)
    return queued, worker


@pytest.mark.parametrize(
    "served",
    [{"SHEETBRIDGE_SHEET_LATENCY_MS": "1500", "SHEETBRIDGE_LEASE_S": "120"}],
    indirect=True,
)
def test_a_job_of_a_killed_worker_process_is_run_again_at_once_not_after_its_lease(
    served: Served,
) -> None:
    queued, worker = _a_sync_running(served)
    os.kill(worker, signal.SIGKILL)
    killed_at = datetime.now(UTC)

    job = served.wait_until_finished(queued["status_url"])

    assert job["state"] == "succeeded", job
    (died,) = job["errors"]
    assert died["error"] == "the worker process died"
    # Handed back as soon as serve saw the death (it looks every half
    # second), far from the 120 s the lease would have taken.
    handed_back = datetime.fromisoformat(died["at"])
    assert (handed_back - killed_at).total_seconds() < 30


@pytest.mark.parametrize(
    "served", [{"SHEETBRIDGE_SHEET_LATENCY_MS": "1500"}], indirect=True
)
def test_serve_stopped_during_a_sync_waits_for_its_worker_to_finish_it(
    served: Served,
) -> None:
    _, worker = _a_sync_running(served)
    deadline = time.monotonic() + DEADLINE_S

    os.kill(served.pid, signal.SIGTERM)

    while _alive(served.pid):
        assert time.monotonic() < deadline, "serve did not exit"
        time.sleep(0.1)
    # No worker left behind, still writing, after serve is gone.
    assert not _alive(worker)


def test_a_worker_woken_through_its_stdin_drains_and_exits_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "SHEETBRIDGE_DATA_DIR": str(tmp_path / "data"),
        "SHEETBRIDGE_DEMO": "false",
    }
    env.pop("SHEETBRIDGE_DATABASE_URL", None)
    events, child_end = os.pipe()  # as serve starts it: events come back here
    command = [sys.executable, "-m", "sheetbridge", "worker", "--wake-on-stdin"]
    worker = subprocess.Popen(
        [*command, "--events-fd", str(child_end)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        pass_fds=(child_end,),
    )
    os.close(child_end)
    try:
        assert worker.stdout is not None and worker.stdin is not None
        assert "running" in worker.stdout.readline()
        worker.stdin.write("\n")  # what serve writes when it queues a job
        worker.stdin.flush()
        time.sleep(0.2)
        worker.send_signal(signal.SIGTERM)
        # Its stdin stays open, as serve keeps it: the reader is still waiting.
        worker.wait(DEADLINE_S)
        assert worker.stderr is not None
        errors = worker.stderr.read()
    finally:
        if worker.poll() is None:
            worker.kill()
        os.close(events)
    assert worker.returncode == 0, errors
    assert "Fatal Python error" not in errors


@pytest.mark.parametrize("command", [["serve"], ["worker"], ["db", "upgrade"]])
def test_a_database_that_cannot_be_reached_is_one_clear_line_not_a_traceback(
    tmp_path: Path, command: list[str]
) -> None:
    nowhere = f"postgresql+psycopg://someone:secret@127.0.0.1:{free_port()}/books"
    ran = _sheetbridge(
        {
            "SHEETBRIDGE_DATA_DIR": str(tmp_path / "data"),
            "SHEETBRIDGE_DATABASE_URL": nowhere,
        },
        *command,
    )
    assert ran.returncode == 1
    (line,) = ran.stderr.strip().splitlines()
    assert line.startswith("cannot use the database postgresql+psycopg://***@127.0.0.1")
    assert "refused" in line and "secret" not in line


@pytest.mark.parametrize(
    ("setting", "told"),
    [
        ("data dir a file", "cannot use the data folder"),
        ("unknown database", "cannot use the database bogus://***@somewhere/x"),
        ("driver not installed", "cannot use the database mysql://***@somewhere/x"),
    ],
)
def test_a_data_folder_or_database_url_that_cannot_be_used_is_one_clear_line(
    tmp_path: Path, setting: str, told: str
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    env = {"SHEETBRIDGE_DATA_DIR": str(tmp_path / "data")}
    if setting == "data dir a file":
        env["SHEETBRIDGE_DATA_DIR"] = str(a_file)
    elif setting == "unknown database":
        env["SHEETBRIDGE_DATABASE_URL"] = "bogus://me:secret@somewhere/x"
    else:
        env["SHEETBRIDGE_DATABASE_URL"] = "mysql://me:secret@somewhere/x"

    ran = _sheetbridge(env, "db", "upgrade")

    assert ran.returncode == 1
    (line,) = ran.stderr.strip().splitlines()
    assert line.startswith(told) and "secret" not in line


def test_a_port_out_of_range_is_refused_before_anything_starts(tmp_path: Path) -> None:
    ran = _sheetbridge(
        {"SHEETBRIDGE_DATA_DIR": str(tmp_path / "data")}, "serve", "--port", "99999"
    )

    assert ran.returncode == 2
    assert "--port" in ran.stderr and "65535" in ran.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("command", [["serve"], ["worker"], ["db", "upgrade"]])
def test_bad_settings_from_the_environment_are_one_line_each_not_a_traceback(
    tmp_path: Path, command: list[str]
) -> None:
    ran = _sheetbridge(
        {
            "SHEETBRIDGE_DATA_DIR": str(tmp_path / "data"),
            "SHEETBRIDGE_PORT": "70000",
            "SHEETBRIDGE_WORKER_NICE": "fifty",
        },
        *command,
    )

    assert ran.returncode == 1
    assert ran.stderr.strip().splitlines() == [
        "SHEETBRIDGE_PORT='70000': should be less than or equal to 65535",
        "SHEETBRIDGE_WORKER_NICE='fifty': should be a valid integer, "
        "unable to parse string as an integer",
    ]
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("host", "told"),
    [
        ("not..a..host", "(SHEETBRIDGE_HOST or --host): not a host name or address"),
        ("999.1.1.1", "(SHEETBRIDGE_HOST or --host): "),
        ("[::1]", "(SHEETBRIDGE_HOST or --host): "),  # named as typed, once
        ("192.0.2.1", "(SHEETBRIDGE_HOST or --host): Cannot assign requested address"),
        ("127.0.0.1", "(SHEETBRIDGE_PORT or --port): Address already in use"),
    ],
)
def test_an_address_serve_cannot_listen_on_is_one_line_naming_the_setting(
    tmp_path: Path, host: str, told: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1] if host == "127.0.0.1" else free_port()
        ran = _sheetbridge(
            {
                "SHEETBRIDGE_DATA_DIR": str(tmp_path / "data"),
                "SHEETBRIDGE_HOST": host,
                "SHEETBRIDGE_PORT": str(port),
            },
            "serve",
        )

    assert ran.returncode == 1
    assert ran.stdout == ""  # not told it is at an address it is not at
    (line,) = ran.stderr.strip().splitlines()
    assert line.startswith(f"cannot listen on {host}:{port} {told}")
    assert not (tmp_path / "data").exists()  # refused before it made a database


def _wrong_sign_in(client: httpx.Client, forwarded_for: str) -> int:
    """A wrong password for bob, sent as if through a proxy for that address."""
    login = client.get("/login")
    csrf = login.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    answer = client.post(
        "/login",
        data={"username": "bob", "password": "guess", "csrf": csrf},
        headers={"X-Forwarded-For": forwarded_for},
    )
    return answer.status_code


@pytest.mark.parametrize(
    ("served", "held_off"),
    [({}, True), ({"SHEETBRIDGE_FORWARDED_ALLOW_IPS": "127.0.0.1"}, False)],
    indirect=["served"],
    ids=["no proxy trusted", "a proxy on this host trusted"],
)
def test_a_forwarded_address_is_believed_only_from_a_proxy_the_settings_trust(
    served: Served, held_off: bool
) -> None:
    # Else anyone could name a new address with each guess.
    for guess in range(5):
        assert _wrong_sign_in(served.client, f"10.0.0.{guess}") == 400

    sixth = _wrong_sign_in(served.client, "10.0.0.9")

    assert sixth == (429 if held_off else 400)


def _sheetbridge(
    settings: dict[str, str], *command: str
) -> subprocess.CompletedProcess[str]:
    """Run a ``sheetbridge`` command with these settings in its environment."""
    return subprocess.run(
        [sys.executable, "-m", "sheetbridge", *command],
        env={**os.environ, **settings},
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )


def _cli(tmp_path: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return _sheetbridge(
        {
            "SHEETBRIDGE_DATA_DIR": str(tmp_path / "data"),
            "SHEETBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'app.db'}",
        },
        *command,
    )


def test_a_sync_from_the_command_line_prints_what_it_did_in_words_or_as_json(
    tmp_path: Path,
) -> None:
    assert _cli(tmp_path, "demo").returncode == 0
    first = _cli(tmp_path, "sync", "alice", "to-sheet")
    path = tmp_path / "data" / "workbooks" / "alice.xlsx"
    book = load_workbook(path)
    customers = book["Customers"]
    zip_column = next(c.column for c in customers[1] if c.value == "ZIP")
    customers.cell(3, zip_column).value = "1.1"
    book.save(path)
    imported = _cli(tmp_path, "sync", "alice", "from-sheet")
    again = _cli(tmp_path, "sync", "alice", "to-sheet", "--json")

    assert first.returncode == 0, first.stderr
    assert re.fullmatch(r"sync #1 succeeded: \d+ rows appended\n", first.stdout)
    assert imported.returncode == 0, imported.stderr
    head, issue = imported.stdout.splitlines()
    assert head.startswith("sync #2 succeeded: ") and "1 error" in head
    assert issue.startswith("  Customers row 3, ZIP: ")
    answer = json.loads(again.stdout)
    assert (answer["id"], answer["state"]) == (3, "succeeded")
    assert answer["result"]["summary"]["appended"] == 0


def test_a_command_line_sync_behind_one_waiting_says_what_it_waits_for(
    tmp_path: Path,
) -> None:
    assert _cli(tmp_path, "demo").returncode == 0
    workbooks = tmp_path / "data" / "workbooks"
    workbooks.mkdir(parents=True, exist_ok=True)
    (workbooks / "~$alice.xlsx").write_text("open in Excel")
    first = _cli(tmp_path, "sync", "alice", "to-sheet")  # tries once, waits

    second = _cli(tmp_path, "sync", "alice", "to-sheet")

    assert first.returncode == 1 and "sync #1 queued" in first.stdout
    assert second.returncode == 1
    assert second.stdout.splitlines()[0] == (
        "sync #2 queued: waiting for your earlier sync #1; the server's workers run it"
    )
