"""Worker threads that claim jobs and run their handlers."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sheetbridge.queue.errors import (
    JobCancelled,
    LeaseLost,
    PermanentJobError,
    RetryableJobError,
)
from sheetbridge.queue.store import Claimed, JobQueue

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    """What a handler sees of its job: payload, progress reports, cancellation."""

    job: Claimed
    queue: JobQueue
    _cancel: bool = field(default=False, init=False)

    @property
    def payload(self) -> dict[str, Any]:
        return self.job.payload

    def progress(
        self, phase: str, done: int = 0, total: int = 0, **counts: Any
    ) -> None:
        """Report progress; also a safe point where a requested cancel takes effect."""
        state = {"phase": phase, "done": done, "total": total, **counts}
        self._cancel = self.queue.report_progress(self.job.id, self.job.epoch, state)
        self.check_cancelled()

    def check_cancelled(self) -> None:
        if self._cancel:
            raise JobCancelled(f"job {self.job.id} was cancelled")


Handler = Callable[[JobContext], dict[str, Any]]


class WorkerPool:
    """``concurrency`` threads, each running one job at a time.

    Workers sleep on the queue's change signal, so a job enqueued in this
    process, or the next job of a key whose job just finished, starts at once;
    ``poll_interval_s`` only bounds how late work from other processes or a
    retry time is noticed.
    """

    def __init__(
        self,
        queue: JobQueue,
        handlers: Mapping[str, Handler],
        *,
        concurrency: int = 8,
        poll_interval_s: float = 1.0,
        name: str | None = None,
    ) -> None:
        self.queue = queue
        self.handlers = dict(handlers)
        self.concurrency = concurrency
        self.poll_interval_s = poll_interval_s
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[int, Claimed] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        for index in range(self.concurrency):
            thread = threading.Thread(
                target=self._work, args=(f"{self.name}-{index}",), daemon=True
            )
            thread.start()
            self._threads.append(thread)
        keeper = threading.Thread(target=self._keep_leases, daemon=True)
        keeper.start()
        self._threads.append(keeper)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop claiming; wait for running jobs to finish."""
        self._stopping.set()
        with self.queue._changed:
            self.queue._changed.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        self._threads.clear()

    def run_until_empty(self) -> int:
        """Run jobs in this thread until nothing is runnable; returns how many ran."""
        count = 0
        while (job := self.queue.claim(f"{self.name}-inline")) is not None:
            self._run(job)
            count += 1
        return count

    def _work(self, worker_id: str) -> None:
        generation = self.queue.generation
        while not self._stopping.is_set():
            try:
                job = self.queue.claim(worker_id)
            except Exception:
                log.exception("worker.claim_failed", extra={"action": "worker"})
                job = None
            if job is None:
                generation = self.queue.wait_for_change(
                    generation, self.poll_interval_s
                )
                continue
            self._run(job)

    def _run(self, job: Claimed) -> None:
        context = JobContext(job, self.queue)
        with self._lock:
            self._running[job.id] = job
        started = time.monotonic()
        try:
            self._settle(job, self._outcome(context))
        except LeaseLost:
            log.warning(
                "job.lease_lost", extra={"action": "job.lease_lost", "job_id": job.id}
            )
        finally:
            with self._lock:
                self._running.pop(job.id, None)
            log.info(
                "job.done",
                extra={
                    "action": "job.done",
                    "job_id": job.id,
                    "duration_ms": round((time.monotonic() - started) * 1000),
                },
            )

    def _outcome(self, context: JobContext) -> dict[str, Any] | BaseException:
        """The handler's result, or the exception it ended with."""
        handler = self.handlers.get(context.job.kind)
        if handler is None:
            return PermanentJobError(f"no handler for job kind {context.job.kind!r}")
        try:
            return handler(context)
        except LeaseLost:
            raise
        except Exception as exc:
            if not isinstance(
                exc, RetryableJobError | PermanentJobError | JobCancelled
            ):
                log.exception("job.crashed", extra={"action": "job.crashed"})
            return exc

    def _settle(self, job: Claimed, outcome: dict[str, Any] | BaseException) -> None:
        if isinstance(outcome, dict):
            self.queue.succeed(job.id, job.epoch, outcome)
        elif isinstance(outcome, JobCancelled):
            self.queue.cancelled(job.id, job.epoch)
        elif isinstance(outcome, RetryableJobError):
            self.queue.fail(
                job.id,
                job.epoch,
                str(outcome),
                retry=True,
                retry_after_s=outcome.retry_after_s,
            )
        elif isinstance(outcome, PermanentJobError):
            self.queue.fail(job.id, job.epoch, str(outcome))
        else:
            message = f"unexpected error: {type(outcome).__name__}: {outcome}"
            self.queue.fail(job.id, job.epoch, message)

    def _keep_leases(self) -> None:
        """Renew the leases of running jobs and take back expired ones."""
        interval_s = max(self.queue.lease_s / 3, 0.05)
        while not self._stopping.wait(interval_s):
            with self._lock:
                running = list(self._running.values())
            for job in running:
                try:
                    self.queue.heartbeat(job.id, job.epoch)
                except LeaseLost:
                    log.warning("job.lease_lost", extra={"action": "job.lease_lost"})
                except Exception:
                    log.exception("worker.heartbeat_failed", extra={"action": "hb"})
            try:
                self.queue.requeue_expired()
            except Exception:
                log.exception("worker.requeue_failed", extra={"action": "requeue"})
