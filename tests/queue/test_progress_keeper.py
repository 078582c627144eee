"""A pool stores its running jobs' progress together, a few times a second,
and still stops a job that was cancelled or taken over."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Connection, event, update
from sqlalchemy.exc import OperationalError

from sheetbridge.db import Database, is_sqlite
from sheetbridge.queue import store
from sheetbridge.queue.errors import JobCancelled, LeaseLost
from sheetbridge.queue.models import Job
from sheetbridge.queue.store import JobQueue
from sheetbridge.queue.worker import JobContext, WorkerPool

INTERVAL_S = 0.1


@pytest.fixture
def queue(db: Database) -> JobQueue:
    return JobQueue(db, lease_s=5)


@pytest.fixture
def writes(queue: JobQueue, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The time of every write transaction the queue's database begins."""
    seen: list[float] = []
    begin = queue.db.transaction
    open_session = queue.db.session

    @contextmanager
    def counted_transaction() -> Iterator[Connection]:
        seen.append(time.monotonic())
        with begin() as connection:
            yield connection

    @contextmanager
    def counted_session() -> Iterator[Any]:
        seen.append(time.monotonic())
        with open_session() as session:
            yield session

    monkeypatch.setattr(queue.db, "transaction", counted_transaction)
    monkeypatch.setattr(queue.db, "session", counted_session)
    return seen


def wait_until(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def take_over(queue: JobQueue, job_id: int) -> None:
    """What another worker's takeover does to a running job: a new epoch."""
    with queue.db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(epoch=Job.epoch + 1))


def start_pool(queue: JobQueue, handler: Any, concurrency: int) -> WorkerPool:
    pool = WorkerPool(
        queue,
        {"work": handler},
        concurrency=concurrency,
        poll_interval_s=0.05,
        progress_interval_s=INTERVAL_S,
    )
    pool.start()
    return pool


def test_many_jobs_reports_are_stored_in_a_few_transactions(
    queue: JobQueue, writes: list[float]
) -> None:
    jobs, reports_each = 8, 20
    release = threading.Event()
    reported = threading.Barrier(jobs + 1)

    def work(context: JobContext) -> dict[str, Any]:
        for step in range(1, reports_each + 1):
            context.progress("writing", step, reports_each)
        reported.wait(10)
        release.wait(10)
        return {}

    ids = [queue.enqueue("work", queue_key=f"user:{n}").job_id for n in range(jobs)]
    writes_before = len(writes)
    pool = start_pool(queue, work, jobs)
    try:
        reported.wait(10)
        wait_until(
            lambda: all(
                (queue.get(job_id).progress or {}).get("done") == reports_each
                for job_id in ids
            )
        )
        claimed_and_stored_with = len(writes) - writes_before
    finally:
        release.set()
        pool.stop(5)
    # A claim per job, then 160 reports: each keeper round stores the newest
    # report of every job at once.
    assert claimed_and_stored_with <= jobs + 4
    assert all(queue.get(job_id).state == "succeeded" for job_id in ids)


def test_progress_reaches_listeners_once_it_is_stored(queue: JobQueue) -> None:
    seen: list[tuple[dict[str, Any] | None, dict[str, Any] | None]] = []

    def on_event(event: str, job: Job) -> None:
        if event == "progress":
            seen.append((job.progress, queue.get(job.id).progress))

    queue.subscribe(on_event)

    def work(context: JobContext) -> dict[str, Any]:
        context.progress("reading", 1, 2)
        time.sleep(INTERVAL_S * 3)
        return {}

    job_id = queue.enqueue("work", queue_key="user:1").job_id
    pool = start_pool(queue, work, 1)
    try:
        wait_until(lambda: queue.get(job_id).state == "succeeded")
    finally:
        pool.stop(5)
    assert seen, "no progress event"
    assert all(sent == stored for sent, stored in seen)
    assert seen[0][0] == {"phase": "reading", "done": 1, "total": 2}


def test_a_cancel_stops_a_running_job_at_its_next_report(queue: JobQueue) -> None:
    started = threading.Event()

    def work(context: JobContext) -> dict[str, Any]:
        started.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            context.progress("writing")
            time.sleep(0.01)
        return {"ran": "to the end"}

    job_id = queue.enqueue("work", queue_key="user:1").job_id
    pool = start_pool(queue, work, 1)
    try:
        assert started.wait(10)
        asked = time.monotonic()
        queue.cancel(job_id)
        wait_until(lambda: queue.get(job_id).state == "cancelled")
        took_s = time.monotonic() - asked
    finally:
        pool.stop(5)
    assert took_s < 2.0


def test_a_job_taken_over_stops_at_its_next_report(
    queue: JobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    started = threading.Event()
    ended: list[str] = []

    def work(context: JobContext) -> dict[str, Any]:
        started.set()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                context.progress("writing")
                time.sleep(0.01)
        except LeaseLost:
            ended.append("lease lost")
            raise
        except JobCancelled:
            ended.append("cancelled")
            raise
        ended.append("ran to the end")
        return {}

    job_id = queue.enqueue("work", queue_key="user:1").job_id
    pool = start_pool(queue, work, 1)
    try:
        assert started.wait(10)
        take_over(queue, job_id)
        wait_until(lambda: bool(ended))
    finally:
        pool.stop(5)
    assert ended == ["lease lost"]
    assert "job.lease_lost" in caplog.text


def test_a_job_ending_with_a_report_unstored_ends_as_it_ended(
    queue: JobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)

    def work(context: JobContext) -> dict[str, Any]:
        context.progress("writing", 5, 5)
        return {"rows": 5}

    ids = [queue.enqueue("work", queue_key=f"user:{n}").job_id for n in range(20)]
    pool = start_pool(queue, work, 4)
    try:
        wait_until(lambda: all(queue.get(i).state == "succeeded" for i in ids))
        time.sleep(INTERVAL_S * 3)  # keeper rounds after the ends
    finally:
        pool.stop(5)
    assert all(queue.get(i).result == {"rows": 5} for i in ids)
    assert all(queue.get(i).state == "succeeded" for i in ids)
    assert "lease_lost" not in caplog.text
    assert "keep_failed" not in caplog.text


def test_a_report_whose_store_failed_is_stored_by_a_later_round(
    queue: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep = queue.keep_running
    failures = [OperationalError("UPDATE jobs", {}, Exception("disk I/O error"))]

    def failing_once(jobs: Any) -> Any:
        if failures:
            raise failures.pop()
        return keep(jobs)

    monkeypatch.setattr(queue, "keep_running", failing_once)
    release = threading.Event()

    def work(context: JobContext) -> dict[str, Any]:
        context.progress("reading", 3, 7)  # once only
        release.wait(10)
        return {}

    job_id = queue.enqueue("work", queue_key="user:1").job_id
    pool = start_pool(queue, work, 1)
    try:
        wait_until(lambda: queue.get(job_id).progress is not None)
        assert not failures
        assert queue.get(job_id).progress == {"phase": "reading", "done": 3, "total": 7}
    finally:
        release.set()
        pool.stop(5)


def slow_keeper_pool(queue: JobQueue, handler: Any) -> WorkerPool:
    """A pool whose keeper would store nothing for a minute."""
    pool = WorkerPool(queue, {"work": handler}, concurrency=1, progress_interval_s=60)
    pool.start()
    return pool


def long_step_job(
    queue: JobQueue, during_the_step: Any
) -> tuple[list[str], dict[str, Any]]:
    """Run a job that reports, takes a long step (several keeper rounds,
    ``during_the_step`` runs at its start), then reports and writes."""
    reading = threading.Event()
    stepped = threading.Event()
    ended: list[str] = []

    def work(context: JobContext) -> dict[str, Any]:
        context.progress("reading")
        reading.set()
        stepped.wait(10)
        time.sleep(INTERVAL_S * 4)  # a long read: the keeper has looked since
        try:
            context.progress("writing")  # a report made before no store
        except (JobCancelled, LeaseLost) as exc:
            ended.append(type(exc).__name__)
            raise
        ended.append("wrote the sheet")
        return {}

    job_id = queue.enqueue("work", queue_key="user:1").job_id
    pool = start_pool(queue, work, 1)
    try:
        assert reading.wait(10)
        # Its report is stored before the cancel or takeover: only a look at
        # the jobs that reported nothing new can see it.
        wait_until(lambda: (queue.get(job_id).progress or {}).get("phase") == "reading")
        during_the_step(job_id)
        stepped.set()
        wait_until(lambda: bool(ended))
        wait_until(lambda: queue.get(job_id).state != "running" or "Lease" in ended[0])
    finally:
        pool.stop(5)
    return ended, {"state": queue.get(job_id).state}


def test_a_cancel_during_a_long_step_stops_the_job_at_the_next_report(
    queue: JobQueue,
) -> None:
    ended, job = long_step_job(queue, queue.cancel)
    assert ended == ["JobCancelled"]
    assert job["state"] == "cancelled"


def test_a_takeover_during_a_long_step_stops_the_job_at_the_next_report(
    queue: JobQueue,
) -> None:
    ended, _ = long_step_job(queue, lambda job_id: take_over(queue, job_id))
    assert ended == ["LeaseLost"]


def test_a_finished_job_keeps_its_last_report_though_the_keeper_never_stored_it(
    queue: JobQueue,
) -> None:
    def work(context: JobContext) -> dict[str, Any]:
        context.progress("reading", 0, 7)
        context.progress("writing", 7, 7, rows_written=7, stop_if_cancelled=False)
        if context.job.kind == "work" and context.payload.get("fail"):
            raise RuntimeError("the sheet went away")
        return {"rows": 7}

    done = queue.enqueue("work", queue_key="user:1").job_id
    failed = queue.enqueue("work", queue_key="user:2", payload={"fail": True}).job_id
    pool = slow_keeper_pool(queue, work)
    try:
        wait_until(
            lambda: (
                queue.get(done).state == "succeeded"
                and queue.get(failed).state == "failed"
            )
        )
    finally:
        pool.stop(5)
    last = {"done": 7, "total": 7, "rows_written": 7}
    assert queue.get(done).progress == {"phase": "writing", **last}
    assert queue.get(failed).progress == {"stopped_in": "writing", **last}


def test_keeping_many_running_jobs_is_one_statement_that_tells_each_jobs_fate(
    queue: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [queue.enqueue("work", queue_key=f"user:{n}").job_id for n in range(8)]
    claimed = {job.id: job for job in iter(lambda: queue.claim("w"), None)}
    assert sorted(claimed) == ids
    reported, taken, cancelled = ids[:3], ids[5], ids[6]
    before = {job_id: queue.get(job_id) for job_id in ids}
    take_over(queue, taken)
    queue.cancel(cancelled)

    statements: list[str] = []
    engine = queue.db.engine
    execute_pg = store._execute_pg

    def count(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        statements.append(sql)

    def count_pg(cursor: Any, sql: str, params: Any) -> None:
        statements.append(sql)
        execute_pg(cursor, sql, params)

    event.listen(engine, "before_cursor_execute", count)
    monkeypatch.setattr(store, "_execute_pg", count_pg)
    try:
        kept = queue.keep_running(
            [(job_id, claimed[job_id].epoch, {"step": job_id}) for job_id in reported]
            + [(job_id, claimed[job_id].epoch, None) for job_id in ids[3:]]
        )
    finally:
        event.remove(engine, "before_cursor_execute", count)

    # SQLite: BEGIN IMMEDIATE and the update. PostgreSQL: the row locks in id
    # order, the update, and the reported jobs' events to other processes.
    assert len(statements) == (2 if is_sqlite(engine) else 3), statements
    assert kept.lost == {taken}
    assert kept.cancel_requested == {cancelled}
    for job_id in ids:
        job = queue.get(job_id)
        if job_id in reported:
            assert job.progress == {"step": job_id}
        else:
            assert job.progress == before[job_id].progress
        if job_id == taken:
            assert job.lease_expires_at == before[job_id].lease_expires_at
        else:
            assert job.lease_expires_at is not None
            assert before[job_id].lease_expires_at is not None
            assert job.lease_expires_at > before[job_id].lease_expires_at
