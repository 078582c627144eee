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
from sheetbridge.queue.store import Backoff, JobQueue
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
