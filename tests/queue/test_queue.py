"""Semantics of the keyed job queue, on whichever database the suite runs."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from sheetbridge import clock
from sheetbridge.db import Database
from sheetbridge.queue.errors import LeaseLost, RetryableJobError
from sheetbridge.queue.models import Job
from sheetbridge.queue.store import Backoff, JobQueue
from sheetbridge.queue.worker import JobContext, WorkerPool


@pytest.fixture
def queue(db: Database) -> JobQueue:
    return JobQueue(db, lease_s=5, backoff=Backoff(base_s=0.01, cap_s=0.05))


def test_jobs_of_one_key_are_claimed_in_order_and_one_at_a_time(
    queue: JobQueue,
) -> None:
    first = queue.enqueue("noop", queue_key="user:1")
    second = queue.enqueue("noop", queue_key="user:1")

    claimed = queue.claim("w1")
    assert claimed is not None and claimed.id == first.job_id
    assert queue.claim("w2") is None
    queue.succeed(claimed.id, claimed.epoch, {})
    following = queue.claim("w2")
    assert following is not None and following.id == second.job_id


def test_enqueue_reports_position_behind_earlier_jobs(queue: JobQueue) -> None:
    positions = [queue.enqueue("noop", queue_key="user:1").position for _ in range(3)]
    other = queue.enqueue("noop", queue_key="user:2")
    assert positions == [1, 2, 3]
    assert other.position == 1


def test_different_keys_run_in_parallel_but_a_shared_resource_does_not(
    queue: JobQueue,
) -> None:
    queue.enqueue("noop", queue_key="user:1", resource_key="sheet:a")
    queue.enqueue("noop", queue_key="user:2", resource_key="sheet:b")
    queue.enqueue("noop", queue_key="user:3", resource_key="sheet:a")

    claimed = [queue.claim("w1"), queue.claim("w2"), queue.claim("w3")]
    assert [job.queue_key if job else None for job in claimed] == [
        "user:1",
        "user:2",
        None,
    ]


def test_database_refuses_a_second_running_job_for_a_key(
    queue: JobQueue, db: Database
) -> None:
    queue.enqueue("noop", queue_key="user:1")
    queue.enqueue("noop", queue_key="user:1")
    with pytest.raises(IntegrityError), db.session() as session:
        session.execute(update(Job).values(state="running"))


def test_key_served_least_recently_goes_first(queue: JobQueue) -> None:
    busy = [queue.enqueue("noop", queue_key="user:busy").job_id for _ in range(3)]
    first = queue.claim("w")
    assert first is not None and first.id == busy[0]
    queue.succeed(first.id, first.epoch, {})
    late = queue.enqueue("noop", queue_key="user:late")

    after = queue.claim("w")
    assert after is not None and after.id == late.job_id


def test_retry_keeps_the_key_and_its_order(queue: JobQueue) -> None:
    first = queue.enqueue("noop", queue_key="user:1")
    queue.enqueue("noop", queue_key="user:1")
    claimed = queue.claim("w")
    assert claimed is not None
    queue.fail(claimed.id, claimed.epoch, "rate limited", retry=True, retry_after_s=0.2)

    assert queue.claim("w") is None
    waiting = queue.get(first.job_id)
    assert waiting.state == "queued"
    assert queue.waiting_for(waiting) is not None
    assert "retry" in (queue.waiting_for(waiting) or "")
    time.sleep(0.25)
    again = queue.claim("w")
    assert again is not None and again.id == first.job_id and again.attempts == 2


def test_late_finish_from_an_expired_owner_is_rejected(queue: JobQueue) -> None:
    queue.enqueue("noop", queue_key="user:1")
    stale = queue.claim("w-old")
    assert stale is not None
    with queue.db.session() as session:
        session.execute(
            update(Job).values(lease_expires_at=clock.now() - timedelta(seconds=1))
        )
    assert queue.requeue_expired() == 1
    fresh = queue.claim("w-new")
    assert fresh is not None and fresh.epoch == stale.epoch + 1

    with pytest.raises(LeaseLost):
        queue.succeed(stale.id, stale.epoch, {"by": "old"})
    with pytest.raises(LeaseLost):
        queue.heartbeat(stale.id, stale.epoch)
    queue.succeed(fresh.id, fresh.epoch, {"by": "new"})
    assert queue.get(fresh.id).result == {"by": "new"}


def test_cancel_queued_job_is_immediate_and_running_one_stops_at_safe_point(
    queue: JobQueue,
) -> None:
    running = queue.enqueue("noop", queue_key="user:1")
    waiting = queue.enqueue("noop", queue_key="user:1")
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id == running.job_id

    assert queue.cancel(waiting.job_id).state == "cancelled"
    queue.cancel(running.job_id)
    context = JobContext(claimed, queue)
    with pytest.raises(Exception, match="cancelled"):
        context.progress("writing")


def test_worker_pool_runs_every_job_and_retries_transient_failures(
    queue: JobQueue,
) -> None:
    calls: list[int] = []

    def flaky(context: JobContext) -> dict[str, int]:
        calls.append(context.job.id)
        if context.job.attempts == 1:
            raise RetryableJobError("service unavailable", retry_after_s=0.01)
        return {"attempts": context.job.attempts}

    ids = [queue.enqueue("flaky", queue_key=f"user:{n % 3}").job_id for n in range(6)]
    pool = WorkerPool(queue, {"flaky": flaky}, concurrency=3, poll_interval_s=0.02)
    pool.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all(queue.get(i).state == "succeeded" for i in ids):
                break
            time.sleep(0.02)
    finally:
        pool.stop()
    assert [queue.get(i).result for i in ids] == [{"attempts": 2}] * 6
    assert sorted(calls) == sorted(ids * 2)


def test_next_job_of_a_key_starts_without_waiting_for_a_poll(queue: JobQueue) -> None:
    done = threading.Event()
    starts: list[float] = []

    def record(context: JobContext) -> dict[str, int]:
        starts.append(time.monotonic())
        if len(starts) == 20:
            done.set()
        return {}

    pool = WorkerPool(queue, {"noop": record}, concurrency=2, poll_interval_s=30)
    pool.start()
    try:
        for _ in range(20):
            queue.enqueue("noop", queue_key="user:1")
        assert done.wait(20)
    finally:
        pool.stop()
    assert max(b - a for a, b in itertools.pairwise(starts)) < 5
