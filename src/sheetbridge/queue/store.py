"""The durable keyed job queue, kept in the application database.

Per queue key jobs run one at a time in FIFO order; per resource key at most
one job runs. Partial unique indexes over running jobs make the database refuse
any claim that would break either rule, so no race between workers or machines
can.

The first active job of each key is its *head*. While it waits, it carries
``ready_at``, the key's turn: when the key was last served, or the time of its
retry. Claiming walks waiting heads in turn order on an index that holds
nothing else, so keys take turns (a key that just ran goes behind keys that
waited) and a claim reads the same few rows whether one key waits or ten
thousand do. Whatever leaves the active set (success, final failure, cancel)
promotes the next job of its key in the same transaction, so it is claimable
the moment that transaction commits.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Json
from sqlalchemy import (
    JSON,
    Column,
    ColumnClause,
    Connection,
    DateTime,
    Integer,
    Table,
    bindparam,
    column,
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, configure_mappers, defer
from sqlalchemy.orm.attributes import manager_of_class, set_committed_value
from sqlalchemy.orm.instrumentation import ClassManager

from sheetbridge import clock
from sheetbridge.db import Database, is_sqlite
from sheetbridge.queue import metrics
from sheetbridge.queue.errors import JobFinished, JobNotFound, LeaseLost
from sheetbridge.queue.events import CHANNEL, MAX_PAYLOAD_BYTES, PgEventBridge
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
# A running job whose handler reports this phase waits for the API quota.
WAITING_FOR_QUOTA = "waiting for quota"
# Events after which a job may have become claimable: they wake idle workers.
WAKING_EVENTS = frozenset(
    {
        "queued",
        "retry_scheduled",
        "succeeded",
        "failed",
        "cancelled",
        "lease_expired",
        "released",
        "reconnected",
    }
)
# Events a worker publishes and then claims its next job: it looks for the
# work they make claimable itself.
FINISHING_EVENTS = frozenset({"succeeded", "failed", "cancelled", "retry_scheduled"})
# Events that end an attempt: their log line and metrics carry its duration.
_ENDING_EVENTS = frozenset({"succeeded", "failed", "cancelled", "retry_scheduled"})
# Namespace of the per-queue-key advisory locks (PostgreSQL).
_KEY_LOCK_CLASS = 0x5B17

Listener = Callable[[str, Job], None]
# A handler's last database write, made in the transaction that records its
# job's success (see ``JobContext.on_success``).
SuccessWrite = Callable[[Connection], None]
# Called on every event: (event, remote, wake); for another process's event,
# ``wake`` says whether it asks idle workers elsewhere to look for work.
Waker = Callable[[str, bool, bool], None]
# Whether a worker of this process will look for work after an event it
# publishes, so that other processes need not.
Lookout = Callable[[str], bool]

_JOBS: Table = Job.__table__  # type: ignore[assignment]
_COLUMNS = ", ".join(column.name for column in _JOBS.c)

# The claim, in SQL: the waiting head whose turn came first and whose
# resource is free becomes running, in one statement, with no progress yet
# (an earlier attempt's is not this one's). Only waiting heads have
# a turn (a check constraint), so the query walks ix_jobs_waiting_heads from
# the front and stops at the first head it can run. It passes over heads whose
# resource a running job holds (each costs a probe among running jobs), but
# never over heads backing off (their turn is their retry time, beyond the
# range) nor over any other job. The run_after condition only matters for a
# job handed back by a process whose clock runs ahead. {lock} is "FOR UPDATE
# SKIP LOCKED" on PostgreSQL, so competing workers pass over a head another
# one claims.
_RUNNABLE_HEAD_SQL = """
  SELECT head.id FROM jobs AS head
  WHERE head.ready_at <= :now
    AND head.run_after <= :now
    AND NOT EXISTS (
      SELECT 1 FROM jobs AS holder
      WHERE holder.state = 'running' AND holder.resource_key = head.resource_key)
  ORDER BY head.ready_at, head.id
  LIMIT 1"""

_CLAIM_SQL = f"""
UPDATE jobs SET
  state = 'running', attempts = attempts + 1, epoch = epoch + 1,
  lease_owner = :worker, lease_expires_at = :expires, started_at = :now,
  cancel_requested = false, ready_at = NULL, progress = NULL
WHERE id = ({_RUNNABLE_HEAD_SQL}
  {{lock}})
RETURNING {_COLUMNS}
"""

# PostgreSQL plans by its statistics, and a queue's are often stale: taken
# while the table was quiet, they make a partial index look empty, and then
# sorting every waiting head looks as cheap as walking the index. Sorting is
# never the right plan for the claim, so the claim's transaction rules it out
# (and nothing else: SET LOCAL ends with the transaction).
_CLAIM_PLAN_SQL = "SET LOCAL enable_sort = off"

# PostgreSQL only, run on the driver's connection (see _run_pg).
_NOTIFY_SQL = (
    "SELECT pg_notify(%(channel)s, payload)"
    " FROM unnest(%(payloads)s::text[]) AS payload"
)
_LOCK_KEY_SQL = "SELECT pg_advisory_xact_lock(%(cls)s, hashtext(%(key)s))"
_LOCK_KEY_OF_JOB_SQL = (
    "SELECT pg_advisory_xact_lock(%(cls)s, hashtext(queue_key))"
    " FROM jobs WHERE id = %(id)s"
)
# Ends a running job if this epoch still owns it. The epoch and state
# conditions are rechecked under the row lock the UPDATE takes, so a takeover
# cannot slip in between. A success clears the error of an earlier attempt
# (``errors`` keeps every attempt's).
_FINISH_SQL = f"""
UPDATE jobs SET
  state = :final_state, result = :final_result, result_brief = :final_brief,
  finished_at = :now,
  lease_owner = NULL,
  progress = CASE WHEN :has_progress THEN :final_progress ELSE progress END,
  error = CASE WHEN :keep_error THEN error ELSE NULL END
WHERE id = :job_id AND epoch = :owner_epoch AND state = 'running'
RETURNING {_COLUMNS}
"""
# The head has the lowest id of its key's active jobs, so the next one is the
# first queued id above it: one probe on (state, queue_key, id).
_PROMOTE_SQL = """
UPDATE jobs SET ready_at = :turn
WHERE id = (
  SELECT id FROM jobs
  WHERE state = 'queued' AND queue_key = :key AND id > :after_id
  ORDER BY id
  LIMIT 1)
"""

# What an enqueue needs to know of its key: how many active jobs are ahead,
# and when the key was last served.
_KEY_STATE_SQL = """
SELECT
  (SELECT count(*) FROM jobs
   WHERE queue_key = :key AND state IN ('queued', 'running')) AS ahead,
  (SELECT max(started_at) FROM jobs WHERE queue_key = :key) AS served
"""
_ENQUEUE_SQL = """
INSERT INTO jobs (
  kind, owner_id, queue_key, resource_key, payload, state, attempts,
  max_attempts, enqueued_at, run_after, epoch, cancel_requested, errors,
  ready_at, coalesce_key)
VALUES (
  :kind, :owner_id, :queue_key, :resource_key, :payload, :state, :attempts,
  :max_attempts, :enqueued_at, :run_after, :epoch, :cancel_requested, :errors,
  :ready_at, :coalesce_key)
RETURNING id
"""

# Running jobs' newer progress (where ``has_progress``) and a longer lease,
# for each job this epoch still owns, in one statement: a worker process keeps
# all its running jobs at once, and on SQLite every statement inside the
# write turn makes other writers wait longer.
_KEEP_SQL = """
WITH kept(job_id, owner_epoch, has_progress, new_progress) AS (VALUES {rows})
UPDATE jobs SET
  lease_expires_at = :expires,
  progress = CASE WHEN kept.has_progress THEN kept.new_progress ELSE progress END
FROM kept
WHERE jobs.id = kept.job_id AND jobs.epoch = kept.owner_epoch
  AND jobs.state = 'running'
RETURNING {columns}
"""
# PostgreSQL: the rows a keep updates, locked in id order first, so that
# transactions locking several jobs never wait for each other in a circle.
_LOCK_JOBS_SQL = "SELECT id FROM jobs WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE"


class _Statement:
    """One of the statements every claim or finish runs: SQL with ``:name``
    parameters, run through SQLAlchemy, which converts values for SQLite, or
    on PostgreSQL straight on the driver's connection, which returns the same
    values at a fraction of the cost."""

    def __init__(
        self,
        sql: str,
        *,
        times: Iterable[str] = (),
        documents: Iterable[str] = (),
        columns: Iterable[ColumnClause[Any] | Column[Any]] = (),
    ) -> None:
        binds = [bindparam(name, type_=DateTime(timezone=True)) for name in times]
        binds += [bindparam(name, type_=JSON) for name in documents]
        typed = text(sql).bindparams(*binds)
        self.typed = typed.columns(*columns) if columns else typed
        self.documents = frozenset(documents)
        self.pg = re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql)

    def first(
        self, connection: Connection, params: dict[str, Any], postgres: bool
    ) -> dict[str, Any] | None:
        """The first row the statement returns, as a dict, or None."""
        if not postgres:
            row = connection.execute(self.typed, params).mappings().first()
            return dict(row) if row is not None else None
        driver: Any = connection.connection.driver_connection
        with driver.cursor(row_factory=dict_row) as cursor:
            _execute_pg(cursor, self.pg, self._adapted(params))
            found: dict[str, Any] | None = cursor.fetchone()
        return found

    def all(
        self, connection: Connection, params: dict[str, Any], postgres: bool
    ) -> list[dict[str, Any]]:
        """Every row the statement returns, as dicts."""
        if not postgres:
            rows = connection.execute(self.typed, params).mappings().all()
            return [dict(row) for row in rows]
        driver: Any = connection.connection.driver_connection
        with driver.cursor(row_factory=dict_row) as cursor:
            _execute_pg(cursor, self.pg, self._adapted(params))
            found: list[dict[str, Any]] = cursor.fetchall()
        return found

    def one(
        self, connection: Connection, params: dict[str, Any], postgres: bool
    ) -> dict[str, Any]:
        """The row a statement that always returns one row returns."""
        row = self.first(connection, params, postgres)
        if row is None:
            raise RuntimeError(f"no row from {self.pg}")
        return row

    def run(
        self, connection: Connection, params: dict[str, Any], postgres: bool
    ) -> None:
        """Run a statement that returns no rows."""
        if not postgres:
            connection.execute(self.typed, params)
            return
        _run_pg(connection, self.pg, self._adapted(params))

    def _adapted(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            name: Json(value) if name in self.documents else value
            for name, value in params.items()
        }


_FINISH = _Statement(
    _FINISH_SQL,
    times=["now"],
    documents=["final_result", "final_brief", "final_progress"],
    columns=_JOBS.c,
)
_PROMOTE = _Statement(_PROMOTE_SQL, times=["turn"])
_KEY_STATE = _Statement(
    _KEY_STATE_SQL,
    columns=[column("ahead", Integer), column("served", DateTime(timezone=True))],
)
_ENQUEUE = _Statement(
    _ENQUEUE_SQL,
    times=["enqueued_at", "run_after", "ready_at"],
    documents=["payload", "errors"],
)


@functools.cache
def _keep(count: int) -> _Statement:
    """The statement keeping ``count`` running jobs."""
    rows = ", ".join(
        f"(:job_id{i}, :owner_epoch{i}, :has_progress{i}, :new_progress{i})"
        for i in range(count)
    )
    columns = ", ".join(f"jobs.{column.name}" for column in _JOBS.c)
    return _Statement(
        _KEEP_SQL.format(rows=rows, columns=columns),
        times=["expires"],
        documents=[f"new_progress{i}" for i in range(count)],
        columns=_JOBS.c,
    )


@dataclass(frozen=True)
class Enqueued:
    """A job's id and its place in its key's queue (1: next to run)."""

    job_id: int
    position: int
    coalesced: bool = False


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


@dataclass(frozen=True)
class Kept:
    """What keeping several running jobs found: which were asked to cancel,
    and which their epoch no longer owns (taken over or handed back)."""

    cancel_requested: frozenset[int]
    lost: frozenset[int]


@dataclass(frozen=True)
class _Started:
    """A claim made in a transaction, to publish once it has committed."""

    job: Job
    more: bool


@dataclass
class Backoff:
    """Exponential backoff with jitter, capped; a retry-after hint is a floor."""

    base_s: float = 1.0
    cap_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random)

    def delay_s(self, attempt: int, hint_s: float | None = None) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** max(attempt - 1, 0))
        delay = ceiling / 2 + self.rng.uniform(0, ceiling / 2)
        return float(max(delay, hint_s or 0.0))


class JobQueue:
    """Enqueue, claim, finish and inspect jobs; publish every transition.

    ``coalesce`` names the job kinds for which a request identical to a job
    still queued and never started returns that job instead of a new one.
    ``brief`` makes a result's listing form, stored beside it as the job ends
    and read by :meth:`status` and :meth:`finished` instead of the whole.
    """

    def __init__(
        self,
        db: Database,
        *,
        lease_s: float = 30.0,
        backoff: Backoff | None = None,
        now: Callable[[], datetime] = clock.now,
        coalesce: Iterable[str] = (),
        brief: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
    ) -> None:
        self.db = db
        self._make_brief = brief
        self.lease_s = lease_s
        self.backoff = backoff or Backoff()
        self.now = now
        self.coalesce_kinds = frozenset(coalesce)
        self.origin = uuid.uuid4().hex
        self._postgres = not is_sqlite(db.engine)
        lock = "FOR UPDATE OF head SKIP LOCKED" if self._postgres else ""
        self._claim = _Statement(
            _CLAIM_SQL.format(lock=lock), times=["now", "expires"], columns=_JOBS.c
        )
        self._runnable = _Statement(_RUNNABLE_HEAD_SQL, times=["now"])
        self._changed = threading.Condition()
        self._generation = 0
        self._listeners: list[Listener] = []
        self._wakers: list[Waker] = []
        self._lookouts: list[Lookout] = []
        self._bridge: PgEventBridge | None = None
        self._bridge_users = 0
        self._bridge_lock = threading.Lock()
        metrics.STATE_COLLECTOR.track(self)

    # -- events ---------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event, job)`` on every transition; returns unsubscribe.

        On PostgreSQL this includes other processes' transitions; their ``job``
        is rebuilt from the event and carries no ``result`` or ``payload``.
        """
        self._listeners.append(listener)
        self._use_bridge()

        def unsubscribe() -> None:
            self._listeners.remove(listener)
            self._release_bridge()

        return unsubscribe

    def wait_for_change(self, generation: int, timeout_s: float) -> int:
        """Block until something changed after ``generation`` or the timeout."""
        with self._changed:
            self._changed.wait_for(lambda: self._generation != generation, timeout_s)
            return self._generation

    @property
    def generation(self) -> int:
        return self._generation

    def close(self) -> None:
        """Stop listening for other processes' events."""
        with self._bridge_lock:
            self._bridge_users = 0
            bridge, self._bridge = self._bridge, None
        if bridge is not None:
            bridge.stop()

    def _add_waker(self, waker: Waker, lookout: Lookout) -> None:
        """Wake a worker pool on events; ``lookout`` tells whether it takes
        care of an event this process publishes (see ``_others_should_look``)."""
        self._wakers.append(waker)
        self._lookouts.append(lookout)
        self._use_bridge()

    def _remove_waker(self, waker: Waker, lookout: Lookout) -> None:
        self._wakers.remove(waker)
        self._lookouts.remove(lookout)
        self._release_bridge()

    def _use_bridge(self) -> None:
        # One LISTEN connection per queue object while anyone needs it:
        # subscribers and worker pools count as users.
        if not self._postgres:
            return
        with self._bridge_lock:
            self._bridge_users += 1
            if self._bridge is None:
                self._bridge = PgEventBridge(
                    self.db.url, self.receive_event, self._on_reconnect
                )
                self._bridge.start()

    def _release_bridge(self) -> None:
        with self._bridge_lock:
            self._bridge_users = max(self._bridge_users - 1, 0)
            if self._bridge_users or self._bridge is None:
                return
            bridge, self._bridge = self._bridge, None
        bridge.stop()

    def _notify(
        self, connection: Connection, event: str, *jobs: Job, more: bool = False
    ) -> None:
        """Send the event of each job to other processes when this transaction
        commits (one statement for all)."""
        if not self._postgres or not jobs:
            return
        wake = self._others_should_look(event, more)
        payloads = []
        for job in jobs:
            payload = json.dumps(self.event_message(event, job, wake=wake), default=str)
            if len(payload.encode()) > MAX_PAYLOAD_BYTES:
                message = self.event_message(event, job, small=True, wake=wake)
                payload = json.dumps(message, default=str)
            payloads.append(payload)
        _run_pg(connection, _NOTIFY_SQL, {"channel": CHANNEL, "payloads": payloads})

    def _others_should_look(self, event: str, more: bool) -> bool:
        """Whether idle workers of other processes should look for work after
        this process publishes ``event``.

        Every process hears every event, so each would send a worker to claim
        the one job an event made claimable. Not when a worker here looks for
        it anyway: the worker that finished a job claims its next one, and an
        idle worker here is woken. A claim that leaves ``more`` claimable work
        behind asks others to look when no worker here is idle to.
        """
        if event == "started" and not more:
            return False
        if event not in WAKING_EVENTS and event != "started":
            return False
        return not any(lookout(event) for lookout in self._lookouts)

    def event_message(
        self, event: str, job: Job, *, small: bool = False, wake: bool | None = None
    ) -> dict[str, Any]:
        """A transition as other processes receive it (JSON-ready); ``wake``
        says whether their idle workers should look for work (None: if the
        event may have made a job claimable)."""
        message: dict[str, Any] = {
            "origin": self.origin,
            "event": event,
            "job": _job_fields(job, small=small),
        }
        if wake is not None:
            message["wake"] = wake
        return message

    def receive_event(self, message: dict[str, Any]) -> None:
        """Publish another process's transition (an ``event_message``) here."""
        if message.get("origin") == self.origin:
            return  # published locally already
        event = str(message["event"])
        wake = bool(message.get("wake", event in WAKING_EVENTS))
        if not self._listeners:  # a worker process: its pool needs no more
            self._signal(event, True, wake)
            return
        self._publish(event, _job_from_fields(message["job"]), True, wake)

    def _on_reconnect(self) -> None:
        self._signal("reconnected", True, True)

    def _publish(
        self, event: str, job: Job, remote: bool = False, wake: bool = False
    ) -> None:
        if not remote:
            self._log_and_measure(event, job)
        self._signal(event, remote, wake)
        for listener in list(self._listeners):
            try:
                listener(event, job)
            except Exception:
                log.exception("job.listener_failed", extra={"action": "listener"})

    def nudge(self) -> None:
        """Another process says work may be waiting: wake idle workers now."""
        self._signal("queued", True, True)

    def _signal(self, event: str, remote: bool, wake: bool) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()
        for waker in list(self._wakers):
            waker(event, remote, wake)

    def _log_and_measure(self, event: str, job: Job) -> None:
        """One log line per transition; metrics of this process's transitions."""
        fields: dict[str, Any] = {
            "action": f"job.{event}",
            "job_id": job.id,
            "kind": job.kind,
            "owner_id": job.owner_id,
            "queue_key": job.queue_key,
            "resource_key": job.resource_key,
            "attempt": job.attempts,
            "epoch": job.epoch,
        }
        metrics.JOB_TRANSITIONS.labels(event).inc()
        if event == "started" and job.started_at is not None:
            due = max(clock.as_utc(job.enqueued_at), clock.as_utc(job.run_after))
            wait_s = max((clock.as_utc(job.started_at) - due).total_seconds(), 0.0)
            metrics.JOB_WAIT_SECONDS.labels(job.kind).observe(wait_s)
            fields["wait_ms"] = round(wait_s * 1000)
        elif event in _ENDING_EVENTS and job.started_at is not None and job.attempts:
            end = clock.as_utc(job.finished_at or self.now())
            run_s = max((end - clock.as_utc(job.started_at)).total_seconds(), 0)
            metrics.JOB_RUN_SECONDS.labels(job.kind, event).observe(run_s)
            fields["duration_ms"] = round(run_s * 1000)
        if event == "retry_scheduled":
            metrics.JOB_RETRIES.labels(job.kind).inc()
            fields["retry_at"] = clock.iso(job.run_after)
        if event == "lease_expired":
            metrics.LEASE_TAKEOVERS.labels(job.kind).inc()
        if event in ("failed", "retry_scheduled", "lease_expired", "released"):
            fields["error"] = job.error
        # ERROR only when a job finally fails; a retry is routine.
        level = logging.ERROR if event == "failed" else logging.INFO
        log.log(level, "job.%s", event, extra=fields)

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
        """Add a job at the end of its key's queue. Never refuses a busy key.

        For a coalescing kind, an identical job still queued and never started
        is returned instead (``coalesced=True``).
        """
        payload = payload or {}
        coalesce_key = None
        if kind in self.coalesce_kinds:
            coalesce_key = _coalesce_key(
                kind, queue_key, resource_key, owner_id, payload
            )
        with self.db.transaction() as connection:
            self._lock_key(connection, queue_key)
            if coalesce_key is not None:
                twin = connection.execute(
                    select(_JOBS.c.id, _JOBS.c.state, _JOBS.c.queue_key).where(
                        _JOBS.c.coalesce_key == coalesce_key,
                        _JOBS.c.state == QUEUED,
                        _JOBS.c.attempts == 0,
                    )
                ).first()
                if twin is not None:
                    position = self._position(connection, Job(**twin._mapping))
                    return Enqueued(twin.id, position, coalesced=True)
            key_state = _KEY_STATE.one(connection, {"key": queue_key}, self._postgres)
            ahead, served = key_state["ahead"], key_state["served"]
            now = self.now()
            values: dict[str, Any] = {
                "kind": kind,
                "owner_id": owner_id,
                "queue_key": queue_key,
                "resource_key": resource_key,
                "payload": payload,
                "state": QUEUED,
                "attempts": 0,
                "max_attempts": max_attempts,
                "enqueued_at": now,
                "run_after": now,
                "epoch": 0,
                "cancel_requested": False,
                "errors": [],
                # Behind an active job of its key: not a head. Otherwise the
                # head, its turn when the key was last served (new keys first).
                "ready_at": None if ahead else clock.as_utc(served or _NEVER),
                "coalesce_key": coalesce_key,
            }
            job_id = _ENQUEUE.one(connection, values, self._postgres)["id"]
            job = Job(id=job_id, **values)
            self._notify(connection, "queued", job)
        self._publish("queued", job)
        # The key lock (or SQLite's single writer) kept the count exact.
        return Enqueued(job_id, ahead + 1)

    def _lock_key(self, connection: Connection, queue_key: str) -> None:
        """Serialise this key's enqueues and head promotions (PostgreSQL).

        Without it an enqueue could see the key's running job, queue behind
        it, and miss the promotion of that job's committing successor. SQLite
        runs one writer at a time, which serialises them already.
        """
        if self._postgres:
            _run_pg(
                connection, _LOCK_KEY_SQL, {"cls": _KEY_LOCK_CLASS, "key": queue_key}
            )

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
        if not self._postgres and not self._anything_runnable():
            return None
        with self.db.transaction() as connection:
            started = self._claim_in(connection, worker_id)
        return self._started(started)

    def _claim_in(self, connection: Connection, worker_id: str) -> _Started | None:
        """Claim within the caller's transaction; publish with ``_started``
        once it has committed."""
        self._plan_claim(connection)
        now = self.now()
        row = self._claim.first(
            connection,
            {
                "worker": worker_id,
                "now": now,
                "expires": now + timedelta(seconds=self.lease_s),
            },
            self._postgres,
        )
        if row is None:
            return None
        job = _job(row)
        # Whether another job is claimable too: then one more worker should
        # look, here if one is idle, else in another process.
        runnable = self._runnable.first(connection, {"now": now}, self._postgres)
        more = runnable is not None
        self._notify(connection, "started", job, more=more)
        return _Started(job, more)

    def _plan_claim(self, connection: Connection) -> None:
        if self._postgres:
            _run_pg(connection, _CLAIM_PLAN_SQL)

    def _started(self, started: _Started | None) -> Claimed | None:
        if started is None:
            return None
        job = started.job
        self._publish("started", job, wake=started.more)
        return Claimed(
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

    def _anything_runnable(self) -> bool:
        """A look without the write lock, so idle workers on SQLite do not queue
        for it (and delay every request that writes) only to find nothing."""
        with self.db.read_session() as session:
            head = session.execute(self._runnable.typed, {"now": self.now()}).first()
        return head is not None

    def look_at_running(self, jobs: dict[int, int]) -> Kept:
        """For running jobs ``{id: epoch}``: which were asked to cancel and
        which their epoch no longer owns. One read, no write turn."""
        with self.db.read_session() as session:
            rows = session.execute(
                select(Job.id, Job.cancel_requested, Job.epoch, Job.state).where(
                    Job.id.in_(jobs)
                )
            ).all()
        found = {row.id: row for row in rows}
        cancel: set[int] = set()
        lost: set[int] = set()
        for job_id, epoch in jobs.items():
            row = found.get(job_id)
            if row is None or row.epoch != epoch or row.state != RUNNING:
                lost.add(job_id)
            elif row.cancel_requested:
                cancel.add(job_id)
        return Kept(frozenset(cancel), frozenset(lost))

    def keep_running(
        self, jobs: Iterable[tuple[int, int, dict[str, Any] | None]]
    ) -> Kept:
        """For running jobs ``(id, epoch, newest progress or None)``, in one
        transaction: store each progress, extend each lease, and note which
        jobs were asked to cancel and which are no longer this epoch's.

        A worker process reports all its jobs' progress this way, a few times a
        second, instead of in a transaction per report.
        """
        ordered = sorted(jobs, key=lambda job: job[0])
        if not ordered:
            return Kept(frozenset(), frozenset())
        params: dict[str, Any] = {
            "expires": self.now() + timedelta(seconds=self.lease_s)
        }
        for i, (job_id, epoch, progress) in enumerate(ordered):
            params[f"job_id{i}"] = job_id
            params[f"owner_epoch{i}"] = epoch
            params[f"has_progress{i}"] = progress is not None
            params[f"new_progress{i}"] = progress
        reporting = {job_id for job_id, _, progress in ordered if progress is not None}
        statement = _keep(len(ordered))
        with self.db.transaction() as connection:
            if self._postgres:
                ids = [job_id for job_id, _, _ in ordered]
                _run_pg(connection, _LOCK_JOBS_SQL, {"ids": ids})
            rows = statement.all(connection, params, self._postgres)
            reported = [_job(row) for row in rows if row["id"] in reporting]
            self._notify(connection, "progress", *reported)
        for job in reported:
            self._publish("progress", job)
        kept = {row["id"] for row in rows}
        return Kept(
            frozenset(row["id"] for row in rows if row["cancel_requested"]),
            frozenset(job_id for job_id, _, _ in ordered if job_id not in kept),
        )

    def heartbeat(self, job_id: int, epoch: int) -> None:
        """Extend the lease; raises LeaseLost if the job was taken over."""
        if self.keep_running([(job_id, epoch, None)]).lost:
            raise LeaseLost(f"job {job_id} epoch {epoch} lost its lease")

    def report_progress(
        self, job_id: int, epoch: int, progress: dict[str, Any]
    ) -> bool:
        """Store progress; returns True when cancellation was requested.

        Raises LeaseLost if the job was taken over (the epoch moved on).
        """
        kept = self.keep_running([(job_id, epoch, progress)])
        if kept.lost:
            raise LeaseLost(f"job {job_id} epoch {epoch} lost its lease")
        return job_id in kept.cancel_requested

    # Settling a job: with ``then_claim`` (a worker id), that worker's next job
    # is claimed in the same transaction and returned, so a busy worker needs
    # one transaction per job instead of two.

    def succeed(
        self,
        job_id: int,
        epoch: int,
        result: dict[str, Any],
        *,
        then_claim: str | None = None,
        progress: dict[str, Any] | None = None,
        writes: Iterable[SuccessWrite] = (),
    ) -> Claimed | None:
        """Finish the job with its result (and its last ``progress``, if not
        stored yet) and make the handler's ``writes`` in the same transaction;
        LeaseLost, and none of them, if it is no longer ours."""
        return self._settle(
            lambda claim: self._finish(
                job_id, epoch, SUCCEEDED, result, claim, progress, writes
            ),
            then_claim,
        )

    def cancelled(
        self,
        job_id: int,
        epoch: int,
        *,
        then_claim: str | None = None,
        progress: dict[str, Any] | None = None,
    ) -> Claimed | None:
        """Record that a running job stopped at a safe point after a cancel."""
        return self._settle(
            lambda claim: self._finish(job_id, epoch, CANCELLED, None, claim, progress),
            then_claim,
        )

    def fail(
        self,
        job_id: int,
        epoch: int,
        error: str,
        *,
        retry: bool = False,
        retry_after_s: float | None = None,
        result: dict[str, Any] | None = None,
        then_claim: str | None = None,
        progress: dict[str, Any] | None = None,
    ) -> Claimed | None:
        """Fail the job, or keep it at the front of its key for another attempt.

        Every failed attempt is appended to ``errors``. A retry waits at least
        ``retry_after_s`` and holds its key, so later jobs of the key stay
        behind it.
        """
        return self._settle(
            lambda claim: self._fail(
                job_id, epoch, error, retry, retry_after_s, result, claim, progress
            ),
            then_claim,
        )

    def _settle(
        self, settle: Callable[[str | None], Claimed | None], then_claim: str | None
    ) -> Claimed | None:
        try:
            return settle(then_claim)
        except IntegrityError:
            if then_claim is None:
                raise
        # The claim collided with another worker's and took the settling
        # down with it: settle alone, then claim.
        settle(None)
        return self.claim(then_claim)

    def _fail(
        self,
        job_id: int,
        epoch: int,
        error: str,
        retry: bool,
        retry_after_s: float | None,
        result: dict[str, Any] | None,
        then_claim: str | None,
        progress: dict[str, Any] | None = None,
    ) -> Claimed | None:
        with self.db.session() as session:
            job = self._owned(session, job_id, epoch, lock_key=True)
            now = self.now()
            job.error = error
            job.result = result
            job.result_brief = self._brief(result)
            job.progress = stopped(progress if progress is not None else job.progress)
            job.lease_owner = None
            job.lease_expires_at = None
            entry: dict[str, Any] = {
                "attempt": job.attempts,
                "error": error,
                "at": clock.iso(now),
            }
            if retry and job.cancel_requested:
                # Asked to stop: the stop is kept instead of another attempt.
                self._end(session, job, CANCELLED, now)
                event = CANCELLED
            elif retry and job.attempts < job.max_attempts:
                delay_s = self.backoff.delay_s(job.attempts, retry_after_s)
                job.state = QUEUED
                job.run_after = now + timedelta(seconds=delay_s)
                # Its turn comes with its retry time: until then the claim's
                # walk does not reach it, and then it queues behind keys that
                # were waiting already.
                job.ready_at = job.run_after
                entry["retry_at"] = clock.iso(job.run_after)
                event = "retry_scheduled"
            else:
                if retry:  # worth another try, but none is left
                    job.error = f"gave up after {job.attempts} tries: {error}"
                self._end(session, job, FAILED, now)
                event = "failed"
            job.errors = [*job.errors, entry]
            self._notify(session.connection(), event, job)
            session.flush()
            started = None
            if then_claim is not None:
                started = self._claim_in(session.connection(), then_claim)
        self._publish(event, job)
        return self._started(started)

    def release(
        self, job_id: int, epoch: int, reason: str, *, crashed: bool = False
    ) -> None:
        """Hand a running job back: it is queued again at once at the front of
        its key (or cancelled, if it was asked to stop). A worker shutting
        down hands back an attempt that does not count; with ``crashed`` (the
        worker process died running it) the attempt counts, as for an expired
        lease, so a job that kills its worker every time fails after its
        attempts instead of crashing the worker without end."""
        with self.db.session() as session:
            job = self._owned(session, job_id, epoch, lock_key=True)
            if not crashed:
                job.attempts = max(job.attempts - 1, 0)
            self._retry_or_end(session, job, reason)
            self._notify(session.connection(), "released", job)
        self._publish("released", job)
        if job.state in FINAL_STATES:
            self._publish(job.state, job)

    def _retry_or_end(self, session: Session, job: Job, reason: str) -> None:
        """End a running job's attempt that ended without a result: cancelled
        if its user asked it to stop, failed if it was the last attempt, else
        queued again at the front of its key."""
        now = self.now()
        job.error = reason
        job.errors = [
            *job.errors,
            {"attempt": job.attempts, "error": reason, "at": clock.iso(now)},
        ]
        job.progress = stopped(job.progress)
        job.lease_owner = None
        job.lease_expires_at = None
        if job.cancel_requested:
            self._end(session, job, CANCELLED, now)
        elif job.attempts >= job.max_attempts:
            self._end(session, job, FAILED, now)
        else:
            job.state = QUEUED
            job.run_after = now
            job.ready_at = job.started_at  # its turn: when its key was served

    def _end(self, session: Session, job: Job, state: str, now: datetime) -> None:
        """A running job is over (``state``): its key's next job may start."""
        job.state = state
        job.finished_at = now
        self._promote_next(session.connection(), job, job.started_at)

    def _finish(
        self,
        job_id: int,
        epoch: int,
        state: str,
        result: dict[str, Any] | None,
        then_claim: str | None,
        progress: dict[str, Any] | None = None,
        writes: Iterable[SuccessWrite] = (),
    ) -> Claimed | None:
        with self.db.transaction() as connection:
            self._lock_key_of(connection, job_id)
            row = _FINISH.first(
                connection,
                {
                    "job_id": job_id,
                    "owner_epoch": epoch,
                    "final_state": state,
                    "final_result": result,
                    "final_brief": self._brief(result),
                    "has_progress": progress is not None,
                    "final_progress": progress,
                    "keep_error": state != SUCCEEDED,
                    "now": self.now(),
                },
                self._postgres,
            )
            if row is None:
                raise LeaseLost(f"job {job_id} epoch {epoch} is no longer ours")
            for write in writes:
                write(connection)
            job = _job(row)
            if state != SUCCEEDED and stopped(job.progress) != job.progress:
                job.progress = stopped(job.progress)
                connection.execute(
                    update(_JOBS)
                    .where(_JOBS.c.id == job_id)
                    .values(progress=job.progress)
                )
            self._promote_next(connection, job, job.started_at)
            self._notify(connection, state, job)
            started = None
            if then_claim is not None:
                started = self._claim_in(connection, then_claim)
        self._publish(state, job)
        return self._started(started)

    def _lock_key_of(self, connection: Connection, job_id: int) -> None:
        """Take the key lock of a job known by id only (PostgreSQL)."""
        if self._postgres:
            _run_pg(
                connection, _LOCK_KEY_OF_JOB_SQL, {"cls": _KEY_LOCK_CLASS, "id": job_id}
            )

    def _owned(
        self, session: Session, job_id: int, epoch: int, *, lock_key: bool = False
    ) -> Job:
        """The job, if this epoch still owns it; row-locked on PostgreSQL so the
        epoch check and the write are one step no takeover can fall between."""
        if lock_key:
            # Key lock before row lock, the order every writer uses.
            self._lock_key_of(session.connection(), job_id)
        query = select(Job).where(
            Job.id == job_id, Job.epoch == epoch, Job.state == RUNNING
        )
        if self._postgres:
            query = query.with_for_update()
        job: Job | None = session.scalars(query).first()
        if job is None:
            raise LeaseLost(f"job {job_id} epoch {epoch} is no longer ours")
        return job

    def _promote_next(
        self, connection: Connection, job: Job, turn: datetime | None
    ) -> None:
        """``job``, its key's head, has just finished: make the next queued job
        of the key the waiting head, its turn ``turn``, when the key was last
        served (the caller holds the key lock)."""
        _PROMOTE.run(
            connection,
            {"key": job.queue_key, "after_id": job.id, "turn": turn},
            self._postgres,
        )

    def cancel(self, job_id: int, *, owner_id: int | None = None) -> Job:
        """Cancel a queued job at once; ask a running one to stop at a safe
        point; :class:`JobFinished` for one that has finished."""
        with self.db.session() as session:
            key = session.scalar(select(Job.queue_key).where(Job.id == job_id))
            if key is None:
                raise JobNotFound(job_id)
            self._lock_key(session.connection(), key)
            query = select(Job).where(Job.id == job_id)
            if self._postgres:
                # Wait for a claim in flight, so a job being claimed is not
                # overwritten as cancelled while a worker starts it.
                query = query.with_for_update()
            job = session.scalars(query).one()
            if owner_id is not None and job.owner_id != owner_id:
                raise JobNotFound(job_id)
            if job.state == QUEUED:
                job.state, job.cancel_requested = CANCELLED, True
                job.finished_at = self.now()
                if job.ready_at is not None:  # it was its key's waiting head
                    # It gives up its turn before the next job takes one: the
                    # database allows one waiting head per key.
                    turn, job.ready_at = job.started_at or job.ready_at, None
                    session.flush()
                    self._promote_next(session.connection(), job, turn)
                event = "cancelled"
            elif job.state == RUNNING:
                job.cancel_requested = True
                event = "cancel_requested"
            else:
                session.expunge(job)  # as it is: the rollback would expire it
                raise JobFinished(job)
            self._notify(session.connection(), event, job)
        self._publish(event, job)
        return job

    def requeue_expired(self) -> int:
        """Take back running jobs whose worker stopped renewing its lease.

        The job goes back to the front of its key (or fails, out of attempts);
        the old owner's epoch no longer matches, so its late writes are refused.
        """
        with self.db.read_session() as session:
            expired = session.execute(
                select(Job.id, Job.epoch).where(
                    Job.state == RUNNING, Job.lease_expires_at < self.now()
                )
            ).all()
        taken = 0
        for job_id, epoch in expired:
            # One transaction per job, key lock first, like every other writer.
            with self.db.session() as session:
                try:
                    job = self._owned(session, job_id, epoch, lock_key=True)
                except LeaseLost:
                    continue  # finished or renewed meanwhile
                now = self.now()
                if clock.as_utc(job.lease_expires_at or now) >= now:
                    continue  # renewed after our read
                reason = f"worker {job.lease_owner} stopped responding"
                self._retry_or_end(session, job, reason)
                self._notify(session.connection(), "lease_expired", job)
            taken += 1
            self._publish("lease_expired", job)
            if job.state in FINAL_STATES:
                self._publish(job.state, job)
        return taken

    # -- inspecting -----------------------------------------------------------

    def get(self, job_id: int) -> Job:
        """The job as stored now; JobNotFound if there is none."""
        with self.db.read_session() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise JobNotFound(job_id)
            return job

    def counts_by_state(self) -> dict[str, int]:
        """How many jobs are queued and running, for the metrics gauge."""
        with self.db.read_session() as session:
            rows = session.execute(
                select(Job.state, func.count())
                .where(Job.state.in_((QUEUED, RUNNING)))
                .group_by(Job.state)
            ).all()
        counts = {QUEUED: 0, RUNNING: 0}
        counts.update({state: count for state, count in rows})
        return counts

    def _brief(self, result: dict[str, Any] | None) -> dict[str, Any] | None:
        if result is None or self._make_brief is None:
            return None
        return self._make_brief(result)

    def status(self, owner_id: int | None, *, recent: int = 20) -> dict[str, list[Job]]:
        """Running, queued and recently finished jobs of one owner (None: all);
        the finished ones as listed (see :meth:`finished`)."""
        with self.db.read_session() as session:
            mine = select(Job)
            if owner_id is not None:
                mine = mine.where(Job.owner_id == owner_id)
            active = session.scalars(
                mine.where(Job.state.in_((QUEUED, RUNNING))).order_by(Job.id)
            ).all()
            finished = _listed(
                session,
                session.scalars(
                    mine.where(Job.state.in_(FINAL_STATES))
                    .options(defer(Job.result))
                    .order_by(Job.id.desc())
                    .limit(recent)
                ).all(),
            )
        return {
            "running": [job for job in active if job.state == RUNNING],
            "queued": [job for job in active if job.state == QUEUED],
            "recent": list(finished),
        }

    def finished(
        self, owner_id: int | None, *, before: int | None, limit: int
    ) -> tuple[list[Job], bool]:
        """Finished jobs of one owner (None: all), newest first, older than
        job ``before`` if given: a page of at most ``limit``, and whether
        older ones remain.

        A listed job carries its ``result_brief``, and its whole ``result``
        only where it has no brief: a result may hold hundreds of issues,
        which a listing does not show. :meth:`get` reads the whole."""
        with self.db.read_session() as session:
            query = (
                select(Job)
                .where(Job.state.in_(FINAL_STATES))
                .options(defer(Job.result))
            )
            if owner_id is not None:
                query = query.where(Job.owner_id == owner_id)
            if before is not None:
                query = query.where(Job.id < before)
            jobs = _listed(
                session,
                session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)).all(),
            )
        return list(jobs[:limit]), len(jobs) > limit

    def position(self, job: Job) -> int:
        """1 + the jobs ahead of this one in its key; 0 once it has finished."""
        with self.db.read_session() as session:
            return self._position(session, job)

    @staticmethod
    def _position(session: Session | Connection, job: Job) -> int:
        if job.state not in (QUEUED, RUNNING):
            return 0
        ahead = session.scalar(
            select(func.count())
            .select_from(_JOBS)
            .where(
                _JOBS.c.queue_key == job.queue_key,
                _JOBS.c.state.in_((QUEUED, RUNNING)),
                _JOBS.c.id < job.id,
            )
        )
        return (ahead or 0) + 1

    def waiting_for(self, job: Job) -> str | None:
        """What a job waits for, in words a user understands, or None.

        A queued job waits for an earlier job of its key, the resource held by
        another job, its retry time or a free worker; a running job may wait
        for the API quota (its handler reported ``WAITING_FOR_QUOTA``).
        """
        if job.state == RUNNING:
            if (job.progress or {}).get("phase") == WAITING_FOR_QUOTA:
                until = (job.progress or {}).get("until")
                return f"the API quota (until {until})" if until else "the API quota"
            return None
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
            if holder == job.id:
                return None  # read while queued, it has started since
            if holder is not None:
                return f"the sheet, in use by sync #{holder}"
        run_after = clock.as_utc(job.run_after)
        if run_after > self.now():
            return f"a retry at {run_after.isoformat(timespec='seconds')}"
        return "a free worker"


def _listed(session: Session, jobs: Sequence[Job]) -> list[Job]:
    """Finished jobs read without their whole result, given it where they
    have no brief to stand for it."""
    whole = {job.id: job for job in jobs if job.result_brief is None}
    if whole:
        found = session.execute(
            select(Job.id, Job.result).where(Job.id.in_(list(whole)))
        )
        for job_id, result in found:
            set_committed_value(whole[job_id], "result", result)
    return list(jobs)


def stopped(progress: dict[str, Any] | None) -> dict[str, Any] | None:
    """An attempt's last progress once it ended unfinished: its counts kept,
    and its phase told as where it stopped (``stopped_in``), so that no one
    reads it as a step still going. A passing state (a wait) tells the phase
    it came ``during`` as where the attempt stopped."""
    if not progress or "phase" not in progress:
        return progress
    counts = {
        name: value
        for name, value in progress.items()
        if name not in ("phase", "during")
    }
    return {"stopped_in": progress.get("during") or progress["phase"], **counts}


def _run_pg(
    connection: Connection, sql: str, params: dict[str, Any] | None = None
) -> None:
    """Run a PostgreSQL-only statement on the driver's connection, in the
    transaction of ``connection``: it needs none of SQLAlchemy's type handling,
    and skipping it makes the queue's every transition cheaper."""
    driver: Any = connection.connection.driver_connection
    with driver.cursor() as cursor:
        _execute_pg(cursor, sql, params)


def _execute_pg(cursor: Any, sql: str, params: dict[str, Any] | None) -> None:
    """Execute on the driver, raising what SQLAlchemy would have for a broken
    constraint, so callers handle one IntegrityError whichever way ran it."""
    try:
        cursor.execute(sql, params)
    except psycopg.IntegrityError as exc:
        raise IntegrityError(sql, params, exc) from exc


def _coalesce_key(
    kind: str,
    queue_key: str,
    resource_key: str | None,
    owner_id: int | None,
    payload: dict[str, Any],
) -> str:
    identity = [kind, queue_key, resource_key, owner_id, payload]
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


_EVENT_FIELDS = (
    "id",
    "kind",
    "owner_id",
    "queue_key",
    "resource_key",
    "state",
    "attempts",
    "max_attempts",
    "epoch",
    "cancel_requested",
    "enqueued_at",
    "run_after",
    "started_at",
    "finished_at",
    "ready_at",
    "progress",
    "error",
)
_EVENT_TIMES = ("enqueued_at", "run_after", "started_at", "finished_at", "ready_at")


def _job(row: dict[str, Any]) -> Job:
    """A job from a whole row a statement returned, built as SQLAlchemy loads
    one, without the change tracking of ``Job(**row)``: a sixteenth of its
    cost, paid while a transaction holds the database (on SQLite, the write
    turn every web request waits for)."""
    job: Job = _job_class().new_instance()
    job.__dict__.update(row)
    return job


@functools.cache
def _job_class() -> ClassManager[Job]:
    # Job(**row) would set up the mapped classes on first use; a worker
    # process may read jobs back before anything else has.
    configure_mappers()
    return manager_of_class(Job)


def _job_fields(job: Job, *, small: bool = False) -> dict[str, Any]:
    fields = {name: getattr(job, name) for name in _EVENT_FIELDS}
    for name in _EVENT_TIMES:
        if fields[name] is not None:
            fields[name] = clock.iso(fields[name])
    if small:
        fields["progress"] = None
        fields["error"] = (job.error or "")[:500] or None
    return fields


def _job_from_fields(fields: dict[str, Any]) -> Job:
    values = dict(fields)
    for name in _EVENT_TIMES:
        if values.get(name) is not None:
            values[name] = datetime.fromisoformat(values[name])
    return Job(**values)
