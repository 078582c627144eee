"""Semantics of the keyed job queue, on whichever database the suite runs."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Connection, inspect, text, update
from sqlalchemy.exc import IntegrityError, OperationalError

from sheetbridge import clock
from sheetbridge.db import Database, is_sqlite
from sheetbridge.queue.errors import LeaseLost, PermanentJobError, RetryableJobError
from sheetbridge.queue.models import Job
from sheetbridge.queue.store import Backoff, Claimed, Enqueued, JobQueue
from sheetbridge.queue.worker import JobContext, WorkerPool


@pytest.fixture
def queue(db: Database) -> JobQueue:
    return JobQueue(db, lease_s=5, backoff=Backoff(base_s=0.01, cap_s=0.05))


def claim_within(queue: JobQueue, timeout_s: float) -> Claimed:
    """Claim the next job, waiting for a retry time to come."""
    deadline = time.monotonic() + timeout_s
    while (claimed := queue.claim("w")) is None:
        assert time.monotonic() < deadline, "nothing became claimable"
        time.sleep(0.01)
    return claimed


def claim_cost(queue: JobQueue) -> int:
    """The work of one claim statement, rolled back afterwards: rows read from
    the jobs table on PostgreSQL, virtual machine steps on SQLite."""
    params = {"worker": "probe", "now": clock.now(), "expires": clock.now()}
    with queue.db.engine.connect() as connection:
        queue._plan_claim(connection)
        if not is_sqlite(queue.db.engine):
            explain = f"EXPLAIN (ANALYZE, FORMAT JSON) {queue._claim.typed}"
            plan = connection.execute(text(explain), params).scalar_one()
            connection.rollback()
            return _rows_read(json.loads(plan) if isinstance(plan, str) else plan)
        steps = 0

        def count_step() -> int:
            nonlocal steps
            steps += 1
            return 0

        raw: Any = connection.connection.driver_connection
        raw.set_progress_handler(count_step, 1)
        try:
            connection.execute(queue._claim.typed, params).all()
        finally:
            raw.set_progress_handler(None, 1)
        connection.rollback()
        return steps


def _rows_read(node: Any) -> int:
    """Rows that scans of the jobs table read, in an EXPLAIN ANALYZE plan."""
    if isinstance(node, list):
        return sum(_rows_read(item) for item in node)
    if not isinstance(node, dict):
        return 0
    read = 0
    if node.get("Relation Name") == "jobs" and "Actual Rows" in node:
        per_loop = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
        read = per_loop * node["Actual Loops"]
    return read + sum(_rows_read(value) for value in node.values())


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


def test_settling_a_job_can_claim_the_workers_next_one_in_the_same_step(
    queue: JobQueue,
) -> None:
    events: list[tuple[str, int]] = []
    unsubscribe = queue.subscribe(lambda event, job: events.append((event, job.id)))
    first, second = (queue.enqueue("noop", queue_key="user:1") for _ in "12")
    other = queue.enqueue("noop", queue_key="user:2")
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id == first.job_id

    # user:2 waited while user:1 was served, so its turn comes first.
    after_success = queue.succeed(claimed.id, claimed.epoch, {}, then_claim="w")
    assert after_success is not None and after_success.id == other.job_id
    after_retry = queue.fail(
        after_success.id,
        after_success.epoch,
        "429",
        retry=True,
        retry_after_s=60,
        then_claim="w",
    )
    assert after_retry is not None and after_retry.id == second.job_id
    queue.cancel(second.job_id)
    assert queue.cancelled(after_retry.id, after_retry.epoch, then_claim="w") is None
    unsubscribe()

    assert [queue.get(job.job_id).state for job in (first, second, other)] == [
        "succeeded",
        "cancelled",
        "queued",
    ]
    assert events[-6:] == [
        ("succeeded", first.job_id),
        ("started", other.job_id),
        ("retry_scheduled", other.job_id),
        ("started", second.job_id),
        ("cancel_requested", second.job_id),
        ("cancelled", second.job_id),
    ]


# A worker process's first queries are the queue's own statements, not the
# ORM's: the jobs it reads back must work before any ORM query has run.
_FRESH_WORKER = """
import sys
from sheetbridge.db import Database
from sheetbridge.queue.store import JobQueue
queue = JobQueue(Database(sys.argv[1]))
claimed = queue.claim("fresh")
assert claimed is not None
queue.keep_running([(claimed.id, claimed.epoch, {"phase": "reading"})])
queue.succeed(claimed.id, claimed.epoch, {"done": True})
"""


def test_a_fresh_worker_process_claims_keeps_and_finishes_a_job(
    queue: JobQueue, database_url: str
) -> None:
    job_id = queue.enqueue("k", queue_key="a").job_id

    ran = subprocess.run(
        [sys.executable, "-c", _FRESH_WORKER, database_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert ran.returncode == 0, ran.stderr[-2000:]
    job = queue.get(job_id)
    assert (job.state, job.result, job.progress) == (
        "succeeded",
        {"done": True},
        {"phase": "reading"},
    )


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


def test_database_lets_a_key_offer_one_job_to_claim_and_only_a_queued_one(
    queue: JobQueue, db: Database
) -> None:
    first = queue.enqueue("noop", queue_key="user:1")
    second = queue.enqueue("noop", queue_key="user:1")

    def give_a_turn(job_id: int) -> None:
        with pytest.raises(IntegrityError), db.session() as session:
            session.execute(
                update(Job).where(Job.id == job_id).values(ready_at=clock.now())
            )

    give_a_turn(second.job_id)  # a second waiting head
    assert queue.claim("w") is not None
    give_a_turn(first.job_id)  # a running job


def test_key_served_least_recently_goes_first(queue: JobQueue) -> None:
    busy = [queue.enqueue("noop", queue_key="user:busy").job_id for _ in range(3)]
    first = queue.claim("w")
    assert first is not None and first.id == busy[0]
    queue.succeed(first.id, first.epoch, {})
    late = queue.enqueue("noop", queue_key="user:late")

    after = queue.claim("w")
    assert after is not None and after.id == late.job_id


def test_a_claim_costs_no_more_with_hundreds_of_keys_waiting_or_backing_off(
    queue: JobQueue,
) -> None:
    def run_one(key: str) -> None:
        queue.enqueue("noop", queue_key=key)
        claimed = queue.claim("w")
        assert claimed is not None and claimed.queue_key == key
        queue.succeed(claimed.id, claimed.epoch, {})

    for n in range(100):
        run_one(f"done:{n}")
    if not is_sqlite(queue.db.engine):
        # PostgreSQL plans by statistics from a quiet moment, as a busy
        # database often has them; SQLite keeps none unless asked to.
        with queue.db.engine.begin() as connection:
            connection.execute(text("ANALYZE jobs"))
    backing_off = []
    for n in range(50):
        backing_off.append(queue.enqueue("noop", queue_key=f"backing-off:{n}").job_id)
        claimed = queue.claim("w")
        assert claimed is not None
        queue.fail(claimed.id, claimed.epoch, "429", retry=True, retry_after_s=600)
    for n in range(150):
        run_one(f"waiting:{n}")  # served after the keys now backing off
    waiting = [queue.enqueue("noop", queue_key=f"waiting:{n}") for n in range(150)]
    many_keys = claim_cost(queue)

    for job_id in [*backing_off, *(job.job_id for job in waiting[1:])]:
        queue.cancel(job_id)
    one_key = claim_cost(queue)

    assert many_keys <= 1.2 * one_key, f"{one_key} for one key, {many_keys} for 200"
    first = queue.claim("w")
    assert first is not None and first.id == waiting[0].job_id


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


def _note(connection: Connection, text_: str) -> None:
    connection.execute(text("INSERT INTO notes (text) VALUES (:text)"), {"text": text_})


@pytest.fixture
def notes(queue: JobQueue) -> Iterator[None]:
    with queue.db.transaction() as connection:
        connection.execute(text("CREATE TABLE notes (text VARCHAR(20))"))
    yield
    with queue.db.transaction() as connection:
        connection.execute(text("DROP TABLE notes"))


def _notes(queue: JobQueue) -> list[str]:
    with queue.db.engine.connect() as connection:
        return list(connection.execute(text("SELECT text FROM notes")).scalars())


@pytest.mark.usefixtures("notes")
def test_a_handlers_success_writes_commit_with_the_jobs_success(
    queue: JobQueue,
) -> None:
    def handler(context: JobContext) -> dict[str, Any]:
        context.on_success(lambda connection: _note(connection, "remembered"))
        return {"ok": True}

    job = queue.enqueue("write", queue_key="user:1")
    pool = WorkerPool(queue, {"write": handler})

    assert pool.run_until_empty() == 1
    assert queue.get(job.job_id).state == "succeeded"
    assert _notes(queue) == ["remembered"]


@pytest.mark.usefixtures("notes")
def test_a_taken_over_job_writes_nothing_of_its_success(queue: JobQueue) -> None:
    def handler(context: JobContext) -> dict[str, Any]:
        context.on_success(lambda connection: _note(connection, "stale"))
        with queue.db.session() as session:  # another worker takes the job over
            session.execute(
                update(Job).values(lease_expires_at=clock.now() - timedelta(seconds=1))
            )
        queue.requeue_expired()
        return {"ok": True}

    job = queue.enqueue("write", queue_key="user:1")
    WorkerPool(queue, {"write": handler}).run_until_empty()

    assert queue.get(job.job_id).state == "queued"
    assert _notes(queue) == []


@pytest.mark.usefixtures("notes")
def test_a_failed_job_writes_nothing_of_its_success(queue: JobQueue) -> None:
    def handler(context: JobContext) -> dict[str, Any]:
        context.on_success(lambda connection: _note(connection, "half"))
        raise RetryableJobError("the sheet went away")

    job = queue.enqueue("write", queue_key="user:1", max_attempts=1)
    WorkerPool(queue, {"write": handler}).run_until_empty()

    assert queue.get(job.job_id).state == "failed"
    assert _notes(queue) == []


def test_cancel_queued_job_is_immediate_and_running_one_stops_at_safe_point(
    queue: JobQueue,
) -> None:
    running = queue.enqueue("noop", queue_key="user:1")
    waiting = queue.enqueue("noop", queue_key="user:1")
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id == running.job_id

    assert queue.cancel(waiting.job_id).state == "cancelled"
    stored = queue.get(waiting.job_id)
    assert (stored.state, stored.cancel_requested) == ("cancelled", True)
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


def test_identical_request_coalesces_only_for_its_kind_and_only_before_start(
    db: Database,
) -> None:
    queue = JobQueue(db, lease_s=5, coalesce={"to_sheet"})
    first = queue.enqueue("to_sheet", queue_key="user:1", payload={"target": 1})
    twin = queue.enqueue("to_sheet", queue_key="user:1", payload={"target": 1})
    other_payload = queue.enqueue("to_sheet", queue_key="user:1", payload={"x": 2})
    other_kind = [queue.enqueue("from_sheet", queue_key="user:1") for _ in range(2)]

    assert twin == Enqueued(first.job_id, 1, coalesced=True)
    assert other_payload.job_id != first.job_id
    assert other_kind[0].job_id != other_kind[1].job_id
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id == first.job_id
    after_start = queue.enqueue("to_sheet", queue_key="user:1", payload={"target": 1})
    assert not after_start.coalesced and after_start.job_id != first.job_id


def test_a_job_handed_back_by_a_stopping_worker_keeps_its_attempts(
    queue: JobQueue,
) -> None:
    queued = queue.enqueue("noop", queue_key="user:1", max_attempts=1)
    for _ in range(3):
        claimed = claim_within(queue, 5)
        queue.release(claimed.id, claimed.epoch, "worker w stopped")

    job = queue.get(queued.job_id)
    assert (job.state, job.attempts) == ("queued", 0)


def test_a_job_whose_worker_process_keeps_dying_fails_after_its_attempts(
    queue: JobQueue,
) -> None:
    poison = queue.enqueue("noop", queue_key="user:1", max_attempts=2)
    behind = queue.enqueue("noop", queue_key="user:1")
    for attempt in (1, 2):
        claimed = claim_within(queue, 5)
        assert (claimed.id, claimed.attempts) == (poison.job_id, attempt)
        queue.release(
            claimed.id, claimed.epoch, "the worker process died", crashed=True
        )

    job = queue.get(poison.job_id)
    assert job.state == "failed" and job.finished_at is not None
    assert job.error == "the worker process died"
    assert [e["attempt"] for e in job.errors] == [1, 2]
    # The user's queue moves on to the job behind it.
    assert claim_within(queue, 5).id == behind.job_id


def test_a_job_that_succeeds_on_a_retry_has_no_error_but_keeps_its_history(
    queue: JobQueue,
) -> None:
    queued = queue.enqueue("noop", queue_key="user:1")
    claimed = claim_within(queue, 5)
    queue.fail(claimed.id, claimed.epoch, "HTTP 503", retry=True, retry_after_s=0.01)
    claimed = claim_within(queue, 5)
    queue.succeed(claimed.id, claimed.epoch, {"rows": 1})

    job = queue.get(queued.job_id)
    assert (job.state, job.error) == ("succeeded", None)
    assert [e["error"] for e in job.errors] == ["HTTP 503"]


def test_a_job_read_as_queued_never_waits_for_its_own_sheet(queue: JobQueue) -> None:
    queued = queue.enqueue("noop", queue_key="user:1", resource_key="sheet:1")
    read_while_queued = queue.get(queued.job_id)
    claimed = claim_within(queue, 5)  # it starts before its event is shown
    assert claimed.id == queued.job_id

    assert queue.waiting_for(read_while_queued) is None


@pytest.mark.parametrize("ending", ["worker died", "lease expired", "retry scheduled"])
def test_a_job_asked_to_stop_is_cancelled_not_run_again_when_its_attempt_ends(
    queue: JobQueue, ending: str
) -> None:
    stopped = queue.enqueue("noop", queue_key="user:1")
    behind = queue.enqueue("noop", queue_key="user:1")
    claimed = claim_within(queue, 5)
    queue.cancel(stopped.job_id)  # running: it will stop at its next safe point
    end_attempt(queue, claimed, ending)

    job = queue.get(stopped.job_id)
    assert (job.state, job.cancel_requested) == ("cancelled", True)
    assert job.finished_at is not None
    assert claim_within(queue, 5).id == behind.job_id


ENDINGS = ["failed", "cancelled", "retry scheduled", "worker died", "lease expired"]


def end_attempt(queue: JobQueue, claimed: Claimed, ending: str) -> None:
    """End a running attempt without success, as ``ending`` says."""
    if ending == "failed":
        queue.fail(claimed.id, claimed.epoch, "HTTP 400")
    elif ending == "cancelled":
        queue.cancelled(claimed.id, claimed.epoch)
    elif ending == "retry scheduled":
        queue.fail(claimed.id, claimed.epoch, "HTTP 503", retry=True, retry_after_s=0)
    elif ending == "worker died":
        queue.release(claimed.id, claimed.epoch, "the worker died", crashed=True)
    else:
        with queue.db.session() as session:
            session.execute(
                update(Job)
                .where(Job.id == claimed.id)
                .values(lease_expires_at=clock.now() - timedelta(seconds=1))
            )
        assert queue.requeue_expired() == 1


@pytest.mark.parametrize("ending", ENDINGS)
def test_an_attempt_that_ended_unfinished_tells_where_it_stopped_not_a_phase(
    queue: JobQueue, ending: str
) -> None:
    queued = queue.enqueue("sync", queue_key="user:1", max_attempts=2)
    claimed = claim_within(queue, 5)
    queue.report_progress(
        claimed.id, claimed.epoch, {"phase": "writing", "done": 5, "total": 10}
    )

    end_attempt(queue, claimed, ending)

    job = queue.get(queued.job_id)
    assert job.progress == {"stopped_in": "writing", "done": 5, "total": 10}


def test_an_attempt_that_ended_in_a_wait_tells_the_phase_it_waited_during(
    queue: JobQueue,
) -> None:
    queued = queue.enqueue("sync", queue_key="user:1", max_attempts=2)
    claimed = claim_within(queue, 5)
    queue.report_progress(
        claimed.id,
        claimed.epoch,
        {"phase": "retrying", "during": "writing", "done": 0, "total": 3},
    )

    end_attempt(queue, claimed, "failed")

    job = queue.get(queued.job_id)
    assert job.progress == {"stopped_in": "writing", "done": 0, "total": 3}


def test_a_job_that_failed_keeps_its_last_report_as_where_it_stopped(
    queue: JobQueue,
) -> None:
    def handler(context: JobContext) -> dict[str, Any]:
        context.progress("comparing", 3, 4, rows_read=12)
        raise PermanentJobError("the sheet has no tab 'Policies'")

    queued = queue.enqueue("sync", queue_key="user:1")
    WorkerPool(queue, {"sync": handler}).run_until_empty()

    job = queue.get(queued.job_id)
    assert job.state == "failed"
    assert job.progress == {
        "stopped_in": "comparing",
        "done": 3,
        "total": 4,
        "rows_read": 12,
    }


def test_a_job_run_again_starts_with_no_progress_and_waits_for_no_quota(
    queue: JobQueue,
) -> None:
    queued = queue.enqueue("sync", queue_key="user:1", max_attempts=2)
    first = claim_within(queue, 5)
    queue.report_progress(
        first.id, first.epoch, {"phase": "waiting_for_quota", "until": None}
    )
    queue.fail(first.id, first.epoch, "HTTP 429", retry=True, retry_after_s=0)

    again = claim_within(queue, 5)

    job = queue.get(queued.job_id)
    assert (again.id, job.state, job.attempts) == (queued.job_id, "running", 2)
    assert job.progress is None
    assert queue.waiting_for(job) is None


def test_every_failed_attempt_is_kept_with_its_retry_time(queue: JobQueue) -> None:
    queued = queue.enqueue("noop", queue_key="user:1", max_attempts=2)
    for error in ("HTTP 429", "HTTP 503"):
        claimed = claim_within(queue, 5)
        queue.fail(claimed.id, claimed.epoch, error, retry=True, retry_after_s=0.05)

    job = queue.get(queued.job_id)
    assert job.state == "failed"
    assert [(e["attempt"], e["error"]) for e in job.errors] == [
        (1, "HTTP 429"),
        (2, "HTTP 503"),
    ]
    assert "retry_at" in job.errors[0] and "retry_at" not in job.errors[1]
    # The job's own error says that no try is left.
    assert job.error == "gave up after 2 tries: HTTP 503"


def test_a_key_with_fifty_jobs_delays_a_key_with_one_by_at_most_one_job(
    queue: JobQueue,
) -> None:
    started: list[str] = []
    first_running = threading.Event()
    release_first = threading.Event()
    all_done = threading.Event()

    def record(context: JobContext) -> dict[str, int]:
        started.append(context.job.queue_key)
        if len(started) == 1:
            first_running.set()
            assert release_first.wait(10)
        if len(started) == 51:
            all_done.set()
        return {}

    for _ in range(50):
        queue.enqueue("noop", queue_key="user:busy")
    pool = WorkerPool(queue, {"noop": record}, concurrency=1, poll_interval_s=0.05)
    pool.start()
    try:
        assert first_running.wait(10)
        queue.enqueue("noop", queue_key="user:one")
        release_first.set()
        assert all_done.wait(30)
    finally:
        pool.stop()
    assert started.index("user:one") == 1


def test_every_transition_is_published_to_subscribers(queue: JobQueue) -> None:
    seen: list[tuple[str, int]] = []
    unsubscribe = queue.subscribe(lambda event, job: seen.append((event, job.id)))
    ok = queue.enqueue("noop", queue_key="user:1").job_id
    retried = queue.enqueue("noop", queue_key="user:2", max_attempts=1).job_id
    cancelled = queue.enqueue("noop", queue_key="user:1").job_id
    first = queue.claim("w")
    second = queue.claim("w")
    assert first is not None and second is not None
    JobContext(first, queue).progress("writing", 1, 2)
    queue.cancel(cancelled)
    queue.succeed(first.id, first.epoch, {})
    queue.fail(second.id, second.epoch, "boom", retry=True)
    unsubscribe()

    assert seen == [
        ("queued", ok),
        ("queued", retried),
        ("queued", cancelled),
        ("started", ok),
        ("started", retried),
        ("progress", ok),
        ("cancelled", cancelled),
        ("succeeded", ok),
        ("failed", retried),
    ]


def test_retry_is_published_with_the_time_of_the_next_attempt(
    queue: JobQueue,
) -> None:
    events: list[str] = []
    queue.subscribe(lambda event, job: events.append(event))
    queued = queue.enqueue("noop", queue_key="user:1")
    claimed = queue.claim("w")
    assert claimed is not None
    queue.fail(claimed.id, claimed.epoch, "429", retry=True, retry_after_s=60)
    assert events[-1] == "retry_scheduled"
    assert (queue.waiting_for(queue.get(queued.job_id)) or "").startswith("a retry at ")


def test_running_job_waiting_for_quota_says_so(queue: JobQueue) -> None:
    queue.enqueue("noop", queue_key="user:1")
    claimed = queue.claim("w")
    assert claimed is not None
    context = JobContext(claimed, queue)
    assert queue.waiting_for(queue.get(claimed.id)) is None

    context.waiting_for_quota(clock.now() + timedelta(seconds=30))
    assert (queue.waiting_for(queue.get(claimed.id)) or "").startswith("the API quota")


def test_stopping_a_pool_hands_an_unfinished_job_back_at_once(
    queue: JobQueue,
) -> None:
    running = threading.Event()
    finish = threading.Event()
    outcome: list[str] = []

    def stuck(context: JobContext) -> dict[str, int]:
        running.set()
        finish.wait(10)
        try:
            context.progress("late")
        except LeaseLost:
            outcome.append("refused")
            raise
        return {}

    queued = queue.enqueue("stuck", queue_key="user:1")
    later = queue.enqueue("stuck", queue_key="user:1")
    pool = WorkerPool(queue, {"stuck": stuck}, concurrency=2, poll_interval_s=0.05)
    pool.start()
    assert running.wait(10)
    assert pool.stop(timeout_s=0.2) == [queued.job_id]

    job = queue.get(queued.job_id)
    assert job.state == "queued" and job.attempts == 0
    assert "stopped" in job.errors[-1]["error"]
    again = queue.claim("w2")
    assert again is not None and again.id == queued.job_id
    assert again.epoch == 2
    finish.set()
    deadline = time.monotonic() + 10
    while not outcome and time.monotonic() < deadline:
        time.sleep(0.01)
    assert outcome == ["refused"]
    assert queue.get(later.job_id).state == "queued"


def test_a_dead_workers_job_is_taken_back_and_rerun_without_a_manual_step(
    db: Database,
) -> None:
    queue = JobQueue(db, lease_s=0.3, backoff=Backoff(base_s=0.01, cap_s=0.05))
    queued = queue.enqueue("noop", queue_key="user:1")
    dead = queue.claim("dead-worker")  # claims, then never heartbeats
    assert dead is not None
    done = threading.Event()

    def record(context: JobContext) -> dict[str, int]:
        done.set()
        return {"attempt": context.job.attempts}

    pool = WorkerPool(queue, {"noop": record}, concurrency=1, poll_interval_s=0.05)
    pool.start()
    try:
        assert done.wait(10)
    finally:
        pool.stop()
    job = queue.get(queued.job_id)
    assert job.state == "succeeded" and job.result == {"attempt": 2}
    assert "stopped responding" in job.errors[0]["error"]
    with pytest.raises(LeaseLost):
        queue.succeed(dead.id, dead.epoch, {"by": "dead"})


def test_metrics_count_states_retries_and_takeovers(queue: JobQueue) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    retries = sample("sheetbridge_job_retries_total", kind="metered")
    takeovers = sample("sheetbridge_job_lease_takeovers_total", kind="metered")
    waits = sample("sheetbridge_job_wait_seconds_count", kind="metered")
    queue.enqueue("metered", queue_key="user:1")
    queue.enqueue("metered", queue_key="user:1")
    assert queue.counts_by_state() == {"queued": 2, "running": 0}
    claimed = queue.claim("w")
    assert claimed is not None
    assert queue.counts_by_state() == {"queued": 1, "running": 1}
    queue.fail(claimed.id, claimed.epoch, "503", retry=True, retry_after_s=0)
    claimed = claim_within(queue, 5)
    with queue.db.session() as session:
        session.execute(
            update(Job).values(lease_expires_at=clock.now() - timedelta(seconds=1))
        )
    assert queue.requeue_expired() == 1

    assert sample("sheetbridge_job_retries_total", kind="metered") == retries + 1
    assert (
        sample("sheetbridge_job_lease_takeovers_total", kind="metered") == takeovers + 1
    )
    assert sample("sheetbridge_job_wait_seconds_count", kind="metered") == waits + 2
    assert sample("sheetbridge_jobs", state="queued") >= 2


def test_a_job_that_finished_is_never_reported_as_having_lost_its_lease(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    queue = JobQueue(db, lease_s=0.15)  # its keeper renews leases every 50 ms
    settled = threading.Event()

    def slow_subscriber(event: str, job: Job) -> None:
        if event == "succeeded":
            time.sleep(0.3)  # the worker is still settling the job meanwhile
            settled.set()

    unsubscribe = queue.subscribe(slow_subscriber)
    queue.enqueue("noop", queue_key="user:1")
    pool = WorkerPool(queue, {"noop": lambda context: {}}, concurrency=1)
    with caplog.at_level("WARNING", logger="sheetbridge.queue.worker"):
        pool.start()
        try:
            assert settled.wait(10)
        finally:
            pool.stop()
            unsubscribe()
    assert [r.getMessage() for r in caplog.records] == []


def test_a_worker_whose_settling_fails_goes_on_and_the_job_is_retried(
    db: Database,
) -> None:
    class QueueLosingOneWrite(JobQueue):
        lost = False

        def succeed(self, *args: Any, **kwargs: Any) -> Claimed | None:
            if not self.lost:
                self.lost = True
                raise OperationalError("UPDATE jobs", {}, Exception("server gone"))
            return super().succeed(*args, **kwargs)

    queue = QueueLosingOneWrite(db, lease_s=0.3)
    ids = [queue.enqueue("noop", queue_key=f"user:{n}").job_id for n in range(2)]
    pool = WorkerPool(
        queue, {"noop": lambda context: {}}, concurrency=1, poll_interval_s=0.05
    )
    pool.start()
    try:
        deadline = time.monotonic() + 10
        while any(queue.get(job_id).state != "succeeded" for job_id in ids):
            assert time.monotonic() < deadline, "the worker stopped"
            time.sleep(0.02)
    finally:
        pool.stop()
    assert queue.get(ids[0]).attempts == 2


class _Panic(BaseException):
    """What a library written in Rust raises when it panics: no Exception."""


def test_a_handler_that_panics_fails_its_job_and_its_worker_goes_on(
    db: Database,
) -> None:
    def panic(context: JobContext) -> dict[str, Any]:
        raise _Panic("TimeDelta::milliseconds out of bounds")

    queue = JobQueue(db, lease_s=30)
    panicked = queue.enqueue("panic", queue_key="user:1").job_id
    after = queue.enqueue("noop", queue_key="user:1").job_id
    pool = WorkerPool(
        queue,
        {"panic": panic, "noop": lambda context: {}},
        concurrency=1,
        poll_interval_s=0.05,
    )
    pool.start()
    try:
        deadline = time.monotonic() + 10
        while queue.get(after).state != "succeeded":
            assert time.monotonic() < deadline, "the worker died with the job"
            time.sleep(0.02)
    finally:
        pool.stop()
    failed = queue.get(panicked)
    assert failed.state == "failed"
    assert (
        failed.error
        == "unexpected error: _Panic: TimeDelta::milliseconds out of bounds"
    )


def _outline(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """A listing's form of a result in these tests: its keys, no values."""
    return None if result is None else {"keys": sorted(result)}


def test_listings_carry_each_finished_jobs_brief_result_not_the_whole(
    db: Database,
) -> None:
    queue = JobQueue(db, lease_s=5, brief=_outline)
    done = queue.enqueue("k", queue_key="alice")
    failed = queue.enqueue("k", queue_key="bob")
    epochs = {}
    for job_id in (done.job_id, failed.job_id):
        claimed = queue.claim("w")
        assert claimed is not None and claimed.id == job_id
        epochs[job_id] = claimed.epoch
    whole = {"issues": ["x"] * 1000, "summary": {}}
    queue.succeed(done.job_id, epochs[done.job_id], whole)
    queue.fail(failed.job_id, epochs[failed.job_id], "broken", result={"saved": 3})

    listed = (
        queue.status(None)["recent"] + queue.finished(None, before=None, limit=5)[0]
    )

    for job in listed:
        assert "result" in inspect(job).unloaded  # the whole is not read
    briefs = {job.id: job.result_brief for job in listed}
    assert briefs == {
        done.job_id: {"keys": ["issues", "summary"]},
        failed.job_id: {"keys": ["saved"]},
    }
    # One job's own view still has the whole.
    assert queue.get(done.job_id).result == whole


def test_a_job_finished_before_briefs_were_kept_is_listed_with_its_whole_result(
    queue: JobQueue,
) -> None:
    queued = queue.enqueue("k", queue_key="alice")
    claimed = queue.claim("w")
    assert claimed is not None
    queue.succeed(claimed.id, claimed.epoch, {"rows": 1})  # a queue with no brief

    (job,) = queue.status(None)["recent"]

    assert job.id == queued.job_id
    assert (job.result_brief, job.result) == (None, {"rows": 1})
