"""The durable keyed job queue, kept in the application database.

Per queue key jobs run one at a time in FIFO order; per resource key at most
one job runs. Partial unique indexes over running jobs make the database refuse
any claim that would break either rule, so no race between workers or machines
can. Keys with ready work take turns: the key served least recently goes first.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import aliased

from sheetbridge import clock
from sheetbridge.db import Database, is_sqlite
from sheetbridge.queue.errors import JobNotFound, LeaseLost
from sheetbridge.queue.models import (
    CANCELLED,
    FAILED,
    FINAL_STATES,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Job,
)

log = logging.getLogger(__name__)

_NEVER = datetime(1970, 1, 1, tzinfo=UTC)

Listener = Callable[[str, Job], None]


@dataclass(frozen=True)
class Enqueued:
    job_id: int
    position: int


@dataclass(frozen=True)
class Claimed:
    """A job a worker now owns, fenced by ``epoch``."""

    id: int
    kind: str
    owner_id: int | None
    queue_key: str
    resource_key: str | None
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    epoch: int
    enqueued_at: datetime


@dataclass
class Backoff:
    """Exponential backoff with full jitter, capped."""

    base_s: float = 1.0
    cap_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random)

    def delay_s(self, attempt: int, hint_s: float | None = None) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** max(attempt - 1, 0))
        delay = ceiling / 2 + self.rng.uniform(0, ceiling / 2)
        return float(max(delay, hint_s or 0.0))


class JobQueue:
    """Enqueue, claim, finish and inspect jobs."""

    def __init__(
        self,
        db: Database,
        *,
        lease_s: float = 30.0,
        backoff: Backoff | None = None,
        now: Callable[[], datetime] = clock.now,
    ) -> None:
        self.db = db
        self.lease_s = lease_s
        self.backoff = backoff or Backoff()
        self.now = now
        self._changed = threading.Condition()
        self._generation = 0
        self._listeners: list[Listener] = []

    # -- events ---------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event, job)`` on every transition; returns unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def wait_for_change(self, generation: int, timeout_s: float) -> int:
        """Block until something changed after ``generation`` or the timeout."""
        with self._changed:
            self._changed.wait_for(lambda: self._generation != generation, timeout_s)
            return self._generation

    @property
    def generation(self) -> int:
        return self._generation

    def _publish(self, event: str, job: Job) -> None:
        log.info(
            "job.%s",
            event,
            extra={
                "action": f"job.{event}",
                "job_id": job.id,
                "kind": job.kind,
                "owner_id": job.owner_id,
                "queue_key": job.queue_key,
                "resource_key": job.resource_key,
                "attempt": job.attempts,
                "epoch": job.epoch,
            },
        )
        with self._changed:
            self._generation += 1
            self._changed.notify_all()
        for listener in list(self._listeners):
            try:
                listener(event, job)
            except Exception:
                log.exception("job.listener_failed", extra={"action": "listener"})

    # -- producing ------------------------------------------------------------

    def enqueue(
        self,
        kind: str,
        *,
        queue_key: str,
        resource_key: str | None = None,
        owner_id: int | None = None,
        payload: dict[str, Any] | None = None,
        max_attempts: int = 5,
    ) -> Enqueued:
        """Add a job at the end of its key's queue. Never refuses a busy key."""
        now = self.now()
        job = Job(
            kind=kind,
            owner_id=owner_id,
            queue_key=queue_key,
            resource_key=resource_key,
            payload=payload or {},
            state=QUEUED,
            attempts=0,
            max_attempts=max_attempts,
            enqueued_at=now,
            run_after=now,
            epoch=0,
            cancel_requested=False,
        )
        with self.db.session() as session:
            session.add(job)
            session.flush()
            position = self._position(session, job)
        self._publish("queued", job)
        return Enqueued(job.id, position)

    # -- consuming ------------------------------------------------------------

    def claim(self, worker_id: str) -> Claimed | None:
        """Take the next runnable job, or None when nothing can run now."""
        for _ in range(5):
            try:
                return self._claim_once(worker_id)
            except IntegrityError:
                # Another worker claimed a job of the same key or resource
                # between our read and our write; the index refused ours.
                continue
            except OperationalError as exc:
                if "locked" not in str(exc).lower():
                    raise
        return None

    def _claim_once(self, worker_id: str) -> Claimed | None:
        with self.db.session() as session:
            session.connection()  # begin (and on SQLite lock) before reading the clock
            now = self.now()
            statement = self._runnable(now).limit(1)
            if not is_sqlite(self.db.engine):
                statement = statement.with_for_update(skip_locked=True, of=Job)
            job = session.scalars(statement).first()
            if job is None:
                return None
            job.state = RUNNING
            job.attempts += 1
            job.epoch += 1
            job.lease_owner = worker_id
            job.lease_expires_at = now + timedelta(seconds=self.lease_s)
            job.cancel_requested = False
            if job.started_at is None or job.attempts > 1:
                job.started_at = now
            session.flush()
            claimed = Claimed(
                id=job.id,
                kind=job.kind,
                owner_id=job.owner_id,
                queue_key=job.queue_key,
                resource_key=job.resource_key,
                payload=dict(job.payload),
                attempts=job.attempts,
                max_attempts=job.max_attempts,
                epoch=job.epoch,
                enqueued_at=clock.as_utc(job.enqueued_at),
            )
        self._publish("started", job)
        return claimed

    @staticmethod
    def _runnable(now: datetime) -> Any:
        earlier = aliased(Job)
        running = aliased(Job)
        served = aliased(Job)
        head_of_key = (
            select(func.min(earlier.id))
            .where(earlier.queue_key == Job.queue_key, earlier.state == QUEUED)
            .scalar_subquery()
        )
        key_busy = exists().where(
            running.state == RUNNING,
            or_(
                running.queue_key == Job.queue_key,
                running.resource_key == Job.resource_key,
            ),
        )
        last_served = (
            select(func.max(served.started_at))
            .where(served.queue_key == Job.queue_key)
            .scalar_subquery()
        )
        return (
            select(Job)
            .where(
                Job.state == QUEUED,
                Job.run_after <= now,
                Job.id == head_of_key,
                ~key_busy,
            )
            .order_by(func.coalesce(last_served, _NEVER), Job.id)
        )

    def heartbeat(self, job_id: int, epoch: int) -> None:
        """Extend the lease; raises LeaseLost if the job was taken over."""
        with self.db.session() as session:
            renewed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.epoch == epoch, Job.state == RUNNING)
                .values(lease_expires_at=self.now() + timedelta(seconds=self.lease_s))
            ).rowcount  # type: ignore[attr-defined]
            if not renewed:
                raise LeaseLost(f"job {job_id} epoch {epoch} lost its lease")

    def report_progress(
        self, job_id: int, epoch: int, progress: dict[str, Any]
    ) -> bool:
        """Store progress; returns True when cancellation was requested."""
        with self.db.session() as session:
            job = self._owned(session, job_id, epoch)
            job.progress = progress
            job.lease_expires_at = self.now() + timedelta(seconds=self.lease_s)
            cancel = job.cancel_requested
        self._publish("progress", job)
        return cancel

    def succeed(self, job_id: int, epoch: int, result: dict[str, Any]) -> None:
        self._finish(job_id, epoch, SUCCEEDED, result=result)

    def fail(
        self,
        job_id: int,
        epoch: int,
        error: str,
        *,
        retry: bool = False,
        retry_after_s: float | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Fail the job, or put it back in front of its key for another attempt."""
        with self.db.session() as session:
            job = self._owned(session, job_id, epoch)
            job.error = error
            job.result = result
            if retry and job.attempts < job.max_attempts:
                delay_s = self.backoff.delay_s(job.attempts, retry_after_s)
                job.state = QUEUED
                job.run_after = self.now() + timedelta(seconds=delay_s)
                job.lease_owner = None
                job.lease_expires_at = None
                event = "retry_scheduled"
            else:
                job.state = FAILED
                job.finished_at = self.now()
                job.lease_owner = None
                event = "failed"
        if event == "failed":
            log.error("job.failed", extra={"action": "job.failed", "job_id": job_id})
        self._publish(event, job)

    def cancelled(self, job_id: int, epoch: int) -> None:
        self._finish(job_id, epoch, CANCELLED, result=None)

    def _finish(
        self, job_id: int, epoch: int, state: str, *, result: dict[str, Any] | None
    ) -> None:
        with self.db.session() as session:
            job = self._owned(session, job_id, epoch)
            job.state = state
            job.result = result
            job.finished_at = self.now()
            job.lease_owner = None
        self._publish(state, job)

    def _owned(self, session: Any, job_id: int, epoch: int) -> Job:
        job: Job | None = session.scalars(
            select(Job).where(
                Job.id == job_id, Job.epoch == epoch, Job.state == RUNNING
            )
        ).first()
        if job is None:
            raise LeaseLost(f"job {job_id} epoch {epoch} is no longer ours")
        return job

    def cancel(self, job_id: int, *, owner_id: int | None = None) -> Job:
        """Cancel a queued job at once; ask a running one to stop at a safe point."""
        with self.db.session() as session:
            job = session.get(Job, job_id)
            if job is None or (owner_id is not None and job.owner_id != owner_id):
                raise JobNotFound(job_id)
            if job.state == QUEUED:
                job.state = CANCELLED
                job.finished_at = self.now()
                event = "cancelled"
            elif job.state == RUNNING:
                job.cancel_requested = True
                event = "cancel_requested"
            else:
                return job
        self._publish(event, job)
        return job

    def requeue_expired(self) -> int:
        """Take back running jobs whose worker stopped renewing its lease."""
        now = self.now()
        with self.db.session() as session:
            expired = session.scalars(
                select(Job).where(Job.state == RUNNING, Job.lease_expires_at < now)
            ).all()
            for job in expired:
                job.error = f"worker {job.lease_owner} stopped responding"
                job.lease_owner = None
                if job.attempts >= job.max_attempts:
                    job.state = FAILED
                    job.finished_at = now
                else:
                    job.state = QUEUED
                    job.run_after = now
        for job in expired:
            self._publish("lease_expired", job)
        return len(expired)

    # -- inspecting -----------------------------------------------------------

    def get(self, job_id: int) -> Job:
        with self.db.read_session() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise JobNotFound(job_id)
            return job

    def status(self, owner_id: int | None, *, recent: int = 20) -> dict[str, list[Job]]:
        """Running, queued and recently finished jobs of one owner (None: all)."""
        with self.db.read_session() as session:
            mine = select(Job)
            if owner_id is not None:
                mine = mine.where(Job.owner_id == owner_id)
            active = session.scalars(
                mine.where(Job.state.in_((QUEUED, RUNNING))).order_by(Job.id)
            ).all()
            finished = session.scalars(
                mine.where(Job.state.in_(FINAL_STATES))
                .order_by(Job.id.desc())
                .limit(recent)
            ).all()
        return {
            "running": [job for job in active if job.state == RUNNING],
            "queued": [job for job in active if job.state == QUEUED],
            "recent": list(finished),
        }

    def position(self, job: Job) -> int:
        with self.db.read_session() as session:
            return self._position(session, job)

    @staticmethod
    def _position(session: Any, job: Job) -> int:
        """1 + the jobs ahead of this one in its key (running or queued)."""
        if job.state not in (QUEUED, RUNNING):
            return 0
        ahead: int = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(
                Job.queue_key == job.queue_key,
                Job.state.in_((QUEUED, RUNNING)),
                Job.id < job.id,
            )
        )
        return ahead + 1

    def waiting_for(self, job: Job) -> str | None:
        """What a queued job waits for, in words a user understands."""
        if job.state != QUEUED:
            return None
        with self.db.read_session() as session:
            earlier = session.scalar(
                select(func.min(Job.id)).where(
                    Job.queue_key == job.queue_key,
                    Job.state.in_((QUEUED, RUNNING)),
                    Job.id < job.id,
                )
            )
            if earlier is not None:
                return f"your earlier sync #{earlier}"
            holder = None
            if job.resource_key is not None:
                holder = session.scalar(
                    select(Job.id).where(
                        Job.resource_key == job.resource_key, Job.state == RUNNING
                    )
                )
            if holder is not None:
                return f"the sheet, in use by sync #{holder}"
        run_after = clock.as_utc(job.run_after)
        if run_after > self.now():
            return f"a retry at {run_after.isoformat(timespec='seconds')}"
        return "a free worker"
