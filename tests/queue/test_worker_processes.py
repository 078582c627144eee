"""Worker processes on PostgreSQL: stress, kill -9, a paused worker, SIGTERM.

Each test starts real ``tests.queue.worker_process`` processes. Their handlers
record every run (pid, start and end times, outcome) in ``queue_test_runs``,
and the assertions are made on those records, not on the queue's own view.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from sheetbridge.db import Database
from sheetbridge.queue.models import Job
from sheetbridge.queue.store import JobQueue
from tests.queue.worker_process import RUNS_TABLE

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
# The issue asks for 10,000 jobs over 200 keys, and CI runs that many (about
# a minute on a 2-core machine, where the test process enqueues while 16
# workers compete for the same cores). Elsewhere the suite runs 2,000 jobs over
# the same 200 keys and resources, the same contention per key and resource
# for a fifth of the time; SHEETBRIDGE_STRESS_JOBS sets any other number.
STRESS_JOBS = int(
    os.environ.get("SHEETBRIDGE_STRESS_JOBS")
    or (10_000 if os.environ.get("CI") == "true" else 2_000)
)
STRESS_KEYS = 200
STRESS_RESOURCES = 150
# Generous bounds: a hang fails the test, a slow machine does not.
STRESS_TIMEOUT_S = 60 + STRESS_JOBS * 0.05


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[Database]:
    database = Database(pg_url)
    with database.engine.begin() as connection:
        connection.execute(text("TRUNCATE jobs RESTART IDENTITY"))
        connection.execute(text("DROP TABLE IF EXISTS queue_test_runs"))
        connection.execute(text(RUNS_TABLE))
    yield database
    database.dispose()


@pytest.fixture
def spawn(pg_url: str) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start worker processes; every one still alive is killed at the end."""
    processes: list[subprocess.Popen[str]] = []

    def start(*, lease_s: float, concurrency: int = 1, drain_s: float = 10.0) -> Any:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.queue.worker_process",
                pg_url,
                f"--lease-s={lease_s}",
                f"--concurrency={concurrency}",
                f"--drain-timeout-s={drain_s}",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready", "worker did not start"
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait(10)


def runs(db: Database) -> list[dict[str, Any]]:
    with db.engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM queue_test_runs ORDER BY id"))
        return [dict(row._mapping) for row in rows]


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def job_states(db: Database) -> dict[str, int]:
    with db.engine.connect() as connection:
        rows = connection.execute(text("SELECT state, count(*) FROM jobs GROUP BY 1"))
        return {state: count for state, count in rows}


@pytest.mark.timeout(2 * STRESS_TIMEOUT_S)
def test_four_worker_processes_keep_every_key_exclusive_fifo_and_exactly_once(
    pg_db: Database, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    workers = [spawn(lease_s=10, concurrency=4) for _ in range(4)]
    queue = JobQueue(pg_db)
    rng = random.Random(7)
    expected_attempts: dict[int, int] = {}
    for n in range(STRESS_JOBS):
        fail_attempts = rng.choices([0, 1, 2], weights=[92, 6, 2])[0]
        queued = queue.enqueue(
            "stress",
            queue_key=f"user:{rng.randrange(STRESS_KEYS)}",
            resource_key=f"sheet:{rng.randrange(STRESS_RESOURCES)}",
            payload={"max_ms": 4, "fail_attempts": fail_attempts, "n": n},
            max_attempts=5,
        )
        expected_attempts[queued.job_id] = fail_attempts + 1
    wait_until(
        lambda: job_states(pg_db) == {"succeeded": STRESS_JOBS},
        STRESS_TIMEOUT_S,
        f"{STRESS_JOBS} jobs to succeed",
    )
    for worker in workers:
        worker.terminate()

    records = runs(pg_db)
    ok = [run["job_id"] for run in records if run["outcome"] == "ok"]
    assert sorted(ok) == sorted(expected_attempts), "a job ran to success twice"
    attempts: dict[int, int] = defaultdict(int)
    for run in records:
        attempts[run["job_id"]] += 1
    assert attempts == expected_attempts
    assert len({run["pid"] for run in records}) == 4, "not every process worked"
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_resource: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in sorted(records, key=lambda run: run["started_ns"]):
        by_key[run["queue_key"]].append(run)
        by_resource[run["resource_key"]].append(run)
    for key, key_runs in by_key.items():
        ids = [run["job_id"] for run in key_runs]
        assert ids == sorted(ids), f"{key} ran out of order"
    for key, group in itertools.chain(by_key.items(), by_resource.items()):
        for before, after in itertools.pairwise(group):
            assert before["ended_ns"] <= after["started_ns"], f"overlap on {key}"


def test_job_of_a_killed_worker_completes_once_after_its_lease_expires(
    pg_db: Database, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    doomed = spawn(lease_s=1)
    queue = JobQueue(pg_db)
    slow = queue.enqueue("slow", queue_key="user:1").job_id
    behind = queue.enqueue("stress", queue_key="user:1", payload={"max_ms": 1}).job_id
    wait_until(lambda: len(runs(pg_db)) == 1, 20, "the first attempt to start")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    killed_at = time.monotonic()

    rescuer = spawn(lease_s=1)
    wait_until(lambda: queue.get(behind).state == "succeeded", 20, "the rerun")
    assert time.monotonic() - killed_at < 10
    job = queue.get(slow)
    assert (job.state, job.attempts, job.epoch) == ("succeeded", 2, 2)
    assert job.result == {"pid": rescuer.pid}
    assert "stopped responding" in job.errors[0]["error"]
    outcomes = [(run["job_id"], run["pid"], run["outcome"]) for run in runs(pg_db)]
    assert outcomes == [
        (slow, doomed.pid, "start"),
        (slow, rescuer.pid, "ok"),
        (behind, rescuer.pid, "ok"),
    ]


def test_paused_worker_that_resumes_after_a_takeover_has_its_writes_refused(
    pg_db: Database, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    paused = spawn(lease_s=1)
    queue = JobQueue(pg_db)
    job_id = queue.enqueue("fence", queue_key="user:1").job_id
    wait_until(lambda: len(runs(pg_db)) == 1, 20, "the first attempt to start")
    paused.send_signal(signal.SIGSTOP)

    taker = spawn(lease_s=1)
    wait_until(lambda: queue.get(job_id).state == "succeeded", 20, "the takeover")
    paused.send_signal(signal.SIGCONT)
    wait_until(lambda: len(runs(pg_db)) == 5, 20, "the paused worker to resume")

    job = queue.get(job_id)
    assert (job.state, job.epoch, job.result) == ("succeeded", 2, {"pid": taker.pid})
    outcomes = [(run["pid"], run["epoch"], run["outcome"]) for run in runs(pg_db)]
    assert outcomes == [
        (paused.pid, 1, "start"),
        (taker.pid, 2, "ok"),
        (paused.pid, 1, "progress_refused"),
        (paused.pid, 1, "heartbeat_refused"),
        (paused.pid, 1, "finish_refused"),
    ]


def test_sigterm_drains_and_hands_an_unfinished_job_back_at_once(
    pg_db: Database, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    worker = spawn(lease_s=30, drain_s=0.5)
    queue = JobQueue(pg_db)
    job_id = queue.enqueue("slow", queue_key="user:1").job_id
    wait_until(lambda: len(runs(pg_db)) == 1, 20, "the job to start")
    worker.terminate()
    assert worker.wait(10) == 0

    job = queue.get(job_id)
    assert (job.state, job.attempts, job.lease_owner) == ("queued", 0, None)
    assert queue.waiting_for(job) == "a free worker"
    assert "stopped" in job.errors[-1]["error"]
    assert isinstance(job, Job)
