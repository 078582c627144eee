"""Queue guarantees under real concurrency on PostgreSQL (always PostgreSQL)."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import defaultdict

import pytest

from sheetbridge.db import Database
from sheetbridge.queue.errors import RetryableJobError
from sheetbridge.queue.store import Backoff, Claimed, JobQueue
from sheetbridge.queue.worker import JobContext, WorkerPool
from tests.conftest import truncate_all

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_queue(pg_url: str) -> JobQueue:
    database = Database(pg_url)
    truncate_all(database)
    return JobQueue(database, lease_s=10, backoff=Backoff(base_s=0.01, cap_s=0.02))


def test_competing_pools_never_overlap_within_a_key_or_resource_and_keep_fifo(
    pg_queue: JobQueue,
) -> None:
    spans: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    resources: dict[str, list[tuple[float, float]]] = defaultdict(list)
    lock = threading.Lock()
    rng = random.Random(3)

    def work(context: JobContext) -> dict[str, int]:
        start = time.monotonic()
        time.sleep(rng.uniform(0, 0.01))
        if context.job.attempts == 1 and context.job.id % 7 == 0:
            raise RetryableJobError("throttled")
        end = time.monotonic()
        with lock:
            spans[context.job.queue_key].append((context.job.id, start, end))
            resources[context.job.resource_key or ""].append((start, end))
        return {}

    ids = [
        pg_queue.enqueue(
            "work", queue_key=f"user:{n % 20}", resource_key=f"sheet:{n % 15}"
        ).job_id
        for n in range(400)
    ]
    # Two pools with their own connections stand in for two worker machines.
    other = JobQueue(Database(pg_queue.db.url), lease_s=10, backoff=pg_queue.backoff)
    pools = [
        WorkerPool(queue, {"work": work}, concurrency=6, poll_interval_s=0.02)
        for queue in (pg_queue, other)
    ]
    for pool in pools:
        pool.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if sum(len(v) for v in spans.values()) == len(ids):
                break
            time.sleep(0.05)
    finally:
        for pool in pools:
            pool.stop()

    assert sum(len(v) for v in spans.values()) == len(ids)
    for key, runs in spans.items():
        assert [job_id for job_id, _, _ in runs] == sorted(
            job_id for job_id, _, _ in runs
        ), f"{key} ran out of order"
        for (_, _, end), (_, start, _) in itertools.pairwise(runs):
            assert end <= start, f"two jobs of {key} overlapped"
    for key, resource_runs in resources.items():
        ordered = sorted(resource_runs)
        for (_, end), (start, _) in itertools.pairwise(ordered):
            assert end <= start, f"two jobs on {key} overlapped"


def test_events_cross_processes_and_wake_their_workers_at_once(
    pg_queue: JobQueue,
) -> None:
    # A second Database and JobQueue stand in for a worker process: it only
    # hears of the web process's jobs through LISTEN/NOTIFY.
    worker_side = JobQueue(Database(pg_queue.db.url), lease_s=10)
    heard: list[tuple[str, int]] = []
    started = threading.Event()

    def work(context: JobContext) -> dict[str, int]:
        started.set()
        return {}

    unsubscribe = worker_side.subscribe(
        lambda event, job: heard.append((event, job.id))
    )
    pool = WorkerPool(worker_side, {"work": work}, concurrency=2, poll_interval_s=30)
    pool.start()
    try:
        time.sleep(0.3)  # let the pool's first (empty) claims pass
        sent = time.monotonic()
        job_id = pg_queue.enqueue("work", queue_key="user:1").job_id
        assert started.wait(5)
        assert time.monotonic() - sent < 2, "the worker waited for its poll"
        deadline = time.monotonic() + 5
        while pg_queue.get(job_id).state != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        pool.stop()
        unsubscribe()
        worker_side.close()
    assert ("queued", job_id) in heard
    assert ("started", job_id) in heard and ("succeeded", job_id) in heard


class CountingQueue(JobQueue):
    """A queue that counts its claims, standing in for one worker process."""

    claims = 0

    def claim(self, worker_id: str) -> Claimed | None:
        self.claims += 1
        return super().claim(worker_id)


def test_a_worker_that_finishes_a_job_claims_the_next_without_waking_others(
    pg_queue: JobQueue,
) -> None:
    done = threading.Event()
    ran: list[int] = []

    def work(context: JobContext) -> dict[str, int]:
        ran.append(context.job.id)
        if len(ran) == 20:
            done.set()
        return {}

    for _ in range(20):
        pg_queue.enqueue("work", queue_key="user:1")
    processes = [CountingQueue(Database(pg_queue.db.url), lease_s=10) for _ in "ab"]
    pools = [
        WorkerPool(queue, {"work": work}, concurrency=1, poll_interval_s=30)
        for queue in processes
    ]
    for pool in pools:
        pool.start()
    try:
        assert done.wait(20)
    finally:
        for pool in pools:
            pool.stop()
        for queue in processes:
            queue.close()
    # Each job is claimed once; beyond that, each process looks once when it
    # starts and once more when it runs out of work.
    assert sum(queue.claims for queue in processes) <= 20 + 4


def test_work_a_busy_process_cannot_take_starts_at_once_on_an_idle_one(
    pg_queue: JobQueue,
) -> None:
    release = threading.Event()
    started: dict[str, float] = {}

    def work(context: JobContext) -> dict[str, int]:
        started[context.payload["name"]] = time.monotonic()
        if context.payload["name"] == "first":
            assert release.wait(10)
        return {}

    busy = JobQueue(Database(pg_queue.db.url), lease_s=10)
    idle = JobQueue(Database(pg_queue.db.url), lease_s=10)
    pools = [
        WorkerPool(queue, {"work": work}, concurrency=1, poll_interval_s=30)
        for queue in (busy, idle)
    ]
    pools[0].start()
    try:
        pg_queue.enqueue(
            "work",
            queue_key="user:1",
            resource_key="sheet:a",
            payload={"name": "first"},
        )
        deadline = time.monotonic() + 10
        while "first" not in started:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # Both wait for the first job: one for its key, one for its sheet.
        for key, sheet, name in (
            ("user:1", None, "same key"),
            ("user:2", "a", "sheet"),
        ):
            resource = f"sheet:{sheet}" if sheet else None
            pg_queue.enqueue(
                "work", queue_key=key, resource_key=resource, payload={"name": name}
            )
        pools[1].start()
        time.sleep(0.3)  # the idle process looked, found nothing, and waits
        finished = time.monotonic()
        release.set()
        deadline = time.monotonic() + 10
        while len(started) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        for pool in pools:
            pool.stop()
        busy.close()
        idle.close()
    assert max(started.values()) - finished < 2, "the idle process waited for a poll"
