"""Worker threads that claim jobs and run their handlers."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sheetbridge.queue.errors import (
    JobCancelled,
    LeaseLost,
    PermanentJobError,
    RetryableJobError,
)
from sheetbridge.queue.store import (
    FINISHING_EVENTS,
    WAITING_FOR_QUOTA,
    WAKING_EVENTS,
    Claimed,
    JobQueue,
    Kept,
    SuccessWrite,
)

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    """What a handler sees of its job: payload, progress reports, cancellation.

    Alone, a context stores each report at once. In a started ``WorkerPool``
    it hands reports to the pool, whose keeper stores those of all its jobs
    together every ``progress_interval_s`` and looks for cancels and takeovers
    of them all; the job acts on one at its first report after that round.
    """

    job: Claimed
    queue: JobQueue
    pool: WorkerPool | None = None
    _cancel: bool = field(default=False, init=False)
    _lost: bool = field(default=False, init=False)
    success_writes: list[SuccessWrite] = field(default_factory=list, init=False)

    @property
    def payload(self) -> dict[str, Any]:
        return self.job.payload

    def progress(
        self,
        phase: str,
        done: int = 0,
        total: int = 0,
        *,
        stop_if_cancelled: bool = True,
        **counts: Any,
    ) -> None:
        """Report progress; also a safe point where a requested cancel takes
        effect, unless the work reported cannot be taken back
        (``stop_if_cancelled=False``).

        Raises LeaseLost if the job was taken over: the handler must stop.
        """
        state = {"phase": phase, "done": done, "total": total, **counts}
        if self.pool is None:
            self._cancel = self.queue.report_progress(
                self.job.id, self.job.epoch, state
            )
        else:
            self.pool._report(self, state)
        if stop_if_cancelled:
            self.check_cancelled()
        else:
            self._stop_if_lost()

    def on_success(self, write: SuccessWrite) -> None:
        """Make ``write`` in the transaction that records the job's success,
        after the check that the job is still this worker's: the handler's
        last writes and the job's end are one commit, and a job that failed
        or was taken over writes nothing of them."""
        self.success_writes.append(write)

    def waiting_for_quota(self, until: datetime | None = None) -> None:
        """Tell the job's watchers it waits for the API quota (until ``until``)."""
        until_text = until.isoformat(timespec="seconds") if until else None
        self.progress(WAITING_FOR_QUOTA, until=until_text)

    def check_cancelled(self) -> None:
        """Raise JobCancelled if a cancel was requested (as last seen), and
        LeaseLost if the job is no longer this worker's."""
        self._stop_if_lost()
        if self._cancel:
            raise JobCancelled(f"job {self.job.id} was cancelled")

    def _stop_if_lost(self) -> None:
        if self._lost:
            raise LeaseLost(f"job {self.job.id} epoch {self.job.epoch} was taken over")


Handler = Callable[[JobContext], dict[str, Any]]


class _Doorbell:
    """Wakes idle workers one at a time.

    Each event that may have made a job claimable rings once, and so does a
    claim that leaves more claimable work behind: a burst of work fans out
    while a single job wakes a single worker instead of sending every idle
    thread to the database at once.
    """

    def __init__(self, limit: int) -> None:
        self._condition = threading.Condition()
        self._rings = 0
        self._limit = limit
        self.idle = 0  # workers waiting for a ring

    def ring(self, times: int = 1) -> None:
        with self._condition:
            self._rings = min(self._rings + times, self._limit)
            self._condition.notify(times)

    def wait(self, timeout_s: float) -> None:
        with self._condition:
            if not self._rings:
                self.idle += 1
                self._condition.wait(timeout_s)
                self.idle -= 1
            self._rings = max(self._rings - 1, 0)


class WorkerPool:
    """``concurrency`` threads, each running one job at a time.

    Workers sleep until an event says work may be claimable: a job enqueued or
    finished in this process or, on PostgreSQL, in any other process (LISTEN/
    NOTIFY). So a job starts at once, and the next job of a key whose job just
    finished starts without waiting for a poll; ``poll_interval_s`` only
    bounds how late a retry time or a lost notification is noticed.

    Processes spare each other needless looks: a worker that finishes a job
    claims its next one itself, so other processes are only woken by events
    no worker here takes care of (see ``JobQueue._others_should_look``).

    One keeper thread stores the progress its jobs reported and renews their
    leases, for all of them in one transaction every ``progress_interval_s``:
    on SQLite, where writers take turns, a job then costs about two writes
    (its claim with the previous job's settling, and its own data) instead of
    one more per progress report.
    """

    def __init__(
        self,
        queue: JobQueue,
        handlers: Mapping[str, Handler],
        *,
        concurrency: int = 8,
        poll_interval_s: float = 1.0,
        progress_interval_s: float = 0.5,
        name: str | None = None,
    ) -> None:
        self.queue = queue
        self.handlers = dict(handlers)
        self.concurrency = concurrency
        self.poll_interval_s = poll_interval_s
        self.progress_interval_s = progress_interval_s
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self._stopping = threading.Event()
        self._keeper_stopping = threading.Event()
        self._doorbell = _Doorbell(concurrency)
        self._workers: list[threading.Thread] = []
        self._keeper: threading.Thread | None = None
        self._running: dict[int, JobContext] = {}
        self._reports: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._thread_state = threading.local()

    def start(self) -> None:
        """Start the keeper, then the worker threads."""
        self._stopping.clear()
        self._keeper_stopping.clear()
        self._keeper = threading.Thread(target=self._keep_running, daemon=True)
        self._keeper.start()
        self.queue._add_waker(self._on_event, self._looks_after)
        for index in range(self.concurrency):
            thread = threading.Thread(
                target=self._work, args=(f"{self.name}-{index}",), daemon=True
            )
            thread.start()
            self._workers.append(thread)

    def stop(self, timeout_s: float = 30.0) -> list[int]:
        """Drain: stop claiming, let running jobs finish for up to ``timeout_s``,
        then hand the unfinished ones back to the queue. Returns their ids.

        A handed-back job is queued again at once, at the front of its key, for
        any worker; its handler here may still be running, but its epoch no
        longer owns the job, so its progress and finish are refused.
        """
        self._stopping.set()
        self._doorbell.ring(self.concurrency)
        deadline = time.monotonic() + timeout_s
        for thread in self._workers:
            thread.join(max(deadline - time.monotonic(), 0.0))
        with self._lock:
            unfinished = list(self._running.values())
        released = []
        for context in unfinished:
            if self._hand_back(context.job):
                context._lost = True  # its handler may still run: stop it
                released.append(context.job.id)
        # Leases are renewed until the drain is over, so no running job is
        # taken over (and run twice at once) while this pool still waits on it.
        self._keeper_stopping.set()
        if self._keeper is not None:
            self._keeper.join(5.0)
        self.queue._remove_waker(self._on_event, self._looks_after)
        self._workers.clear()
        return released

    def run_until_empty(self) -> int:
        """Run jobs in this thread until nothing is runnable; returns how many ran."""
        worker_id = f"{self.name}-inline"
        count = 0
        job = self.queue.claim(worker_id)
        while job is not None:
            job = self._run(job, worker_id)
            count += 1
        return count

    def _on_event(self, event: str, remote: bool, wake: bool) -> None:
        # Wakers run in the publishing thread. Another process's event says
        # whether it wants workers elsewhere to look for work, and a claim
        # here whether it left more claimable work behind. One of our workers
        # that ends a job claims the next one itself, so only its enqueues
        # need to wake an idle worker; other threads' events do.
        if remote or event == "started":
            if wake:
                self._doorbell.ring()
            return
        from_our_worker = getattr(self._thread_state, "worker", False)
        if event in WAKING_EVENTS and (event == "queued" or not from_our_worker):
            self._doorbell.ring()

    def _looks_after(self, event: str) -> bool:
        """Whether a worker here looks for work after ``event``, published in
        this process: its own worker claims next after finishing a job, an
        idle one is woken by the event (or, after a claim, by the claimer)."""
        if self._stopping.is_set():
            return False
        if event in FINISHING_EVENTS and getattr(self._thread_state, "worker", False):
            return True
        return self._doorbell.idle > 0

    def _work(self, worker_id: str) -> None:
        self._thread_state.worker = True
        job: Claimed | None = None
        while not self._stopping.is_set():
            if job is None:
                try:
                    job = self.queue.claim(worker_id)
                except Exception:
                    log.exception("worker.claim_failed", extra={"action": "worker"})
                if job is None:
                    self._doorbell.wait(self.poll_interval_s)
                    continue
            job = self._run(job, worker_id)
        if job is not None:  # claimed while the pool began to stop
            self._hand_back(job)

    def _run(self, job: Claimed, worker_id: str) -> Claimed | None:
        """Run the job and settle it; returns the worker's next job, claimed
        in the same transaction as the settling, if there is one."""
        # A started pool's keeper stores progress; run_until_empty has none.
        kept = self._keeper is not None and not self._keeper_stopping.is_set()
        context = JobContext(job, self.queue, self if kept else None)
        with self._lock:
            self._running[job.id] = context
        try:
            try:
                outcome = self._outcome(context)
            finally:
                # Settling ends the lease: no more renewals or progress, and a
                # stopping pool has nothing to hand back.
                with self._lock:
                    self._running.pop(job.id, None)
                    last_report = self._reports.pop(job.id, None)
            then_claim = None if self._stopping.is_set() else worker_id
            return self._settle(context, outcome, then_claim, last_report)
        except LeaseLost:
            log.warning(
                "job.lease_lost",
                extra={
                    "action": "job.lease_lost",
                    "job_id": job.id,
                    "epoch": job.epoch,
                    "queue_key": job.queue_key,
                },
            )
        except Exception:
            # Not a final failure: the job stays running until its lease runs
            # out, and is retried.
            log.warning(
                "worker.settle_failed",
                exc_info=True,
                extra={"action": "worker.settle_failed", "job_id": job.id},
            )
        return None

    def _hand_back(self, job: Claimed) -> bool:
        """Queue the job again for another worker; False if it is no longer
        ours (it finished, or was taken over, meanwhile)."""
        try:
            self.queue.release(job.id, job.epoch, f"worker {self.name} stopped")
        except LeaseLost:
            return False
        return True

    def _outcome(self, context: JobContext) -> dict[str, Any] | BaseException:
        """The handler's result, or the exception it ended with."""
        handler = self.handlers.get(context.job.kind)
        if handler is None:
            return PermanentJobError(f"no handler for job kind {context.job.kind!r}")
        try:
            return handler(context)
        except (LeaseLost, KeyboardInterrupt, SystemExit):
            raise
        # Not only Exception: a library written in Rust that panics raises a
        # BaseException, which would end the worker's thread with the job.
        except BaseException as exc:
            if not isinstance(
                exc, RetryableJobError | PermanentJobError | JobCancelled
            ):
                # The job fails below and that is logged at ERROR; here only
                # the traceback, which the failure line does not carry.
                log.warning(
                    "job.crashed",
                    exc_info=True,
                    extra={"action": "job.crashed", "job_id": context.job.id},
                )
            return exc

    def _settle(
        self,
        context: JobContext,
        outcome: dict[str, Any] | BaseException,
        then_claim: str | None,
        progress: dict[str, Any] | None = None,
    ) -> Claimed | None:
        """Settle the job; ``progress`` is its last report if the keeper has
        not stored it yet, so a finished job shows its final counts."""
        queue, job_id, epoch = self.queue, context.job.id, context.job.epoch
        if isinstance(outcome, dict):
            return queue.succeed(
                job_id,
                epoch,
                outcome,
                then_claim=then_claim,
                progress=progress,
                writes=context.success_writes,
            )
        if isinstance(outcome, JobCancelled):
            return queue.cancelled(
                job_id, epoch, then_claim=then_claim, progress=progress
            )
        if isinstance(outcome, RetryableJobError):
            return queue.fail(
                job_id,
                epoch,
                str(outcome),
                retry=True,
                retry_after_s=outcome.retry_after_s,
                then_claim=then_claim,
                progress=progress,
            )
        if isinstance(outcome, PermanentJobError):
            message = str(outcome)
        else:
            message = f"unexpected error: {type(outcome).__name__}: {outcome}"
        return queue.fail(
            job_id, epoch, message, then_claim=then_claim, progress=progress
        )

    def _report(self, context: JobContext, progress: dict[str, Any]) -> None:
        """Keep a job's newest progress for the keeper's next store."""
        with self._lock:
            if context.job.id in self._running:
                self._reports[context.job.id] = progress

    def _keep_running(self) -> None:
        """Every ``progress_interval_s``, store the reported progress, and now
        and then renew every running job's lease and take back other workers'
        expired jobs."""
        lease_every_s = max(self.queue.lease_s / 3, 0.05)
        renewed_at = expired_at = time.monotonic()
        while not self._keeper_stopping.wait(self.progress_interval_s):
            now = time.monotonic()
            renew = now - renewed_at >= lease_every_s
            if self._keep_round(renew) and renew:
                renewed_at = now
            if now - expired_at >= lease_every_s:
                expired_at = now
                try:
                    self.queue.requeue_expired()
                except Exception:
                    log.exception("worker.requeue_failed", extra={"action": "requeue"})
        self._keep_round(renew=False)  # the last reports still reach watchers

    def _keep_round(self, renew: bool) -> bool:
        """Store each running job's newest report and, with ``renew``, every
        running job's lease, in one transaction; look at the other running
        jobs with a read. So every job sees a cancel or a takeover within a
        round. False if the store failed: its reports wait for the next round,
        and leases outlast several rounds."""
        with self._lock:
            reports, self._reports = self._reports, {}
            contexts = {i: c for i, c in self._running.items() if not c._lost}
        if not contexts:
            return True
        stored = [
            (job_id, context.job.epoch, reports.get(job_id))
            for job_id, context in contexts.items()
            if renew or job_id in reports
        ]
        looked_at = {
            job_id: context.job.epoch
            for job_id, context in contexts.items()
            if not (renew or job_id in reports)
        }
        try:
            found = [self.queue.keep_running(stored)] if stored else []
        except Exception:
            log.exception("worker.keep_failed", extra={"action": "keep"})
            with self._lock:
                for job_id, progress in reports.items():
                    if job_id in self._running:  # a newer report wins
                        self._reports.setdefault(job_id, progress)
            return False
        if looked_at:
            try:
                found.append(self.queue.look_at_running(looked_at))
            except Exception:
                log.exception("worker.look_failed", extra={"action": "keep"})
        for kept in found:
            self._apply(kept, contexts)
        return True

    def _apply(self, kept: Kept, contexts: dict[int, JobContext]) -> None:
        """Tell running jobs what the keeper found: a cancel, or a takeover."""
        for job_id in kept.cancel_requested:
            contexts[job_id]._cancel = True
        for job_id in kept.lost:
            with self._lock:
                still_running = job_id in self._running
            if still_running:  # else it just finished: nothing lost
                contexts[job_id]._lost = True
                log.warning(
                    "job.lease_lost",
                    extra={"action": "job.lease_lost", "job_id": job_id},
                )
