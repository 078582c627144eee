"""Errors of the job queue and the signals job handlers raise."""

from __future__ import annotations

from typing import Any


class QueueError(Exception):
    """Root of the queue's errors."""


class JobNotFound(QueueError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} does not exist")
        self.job_id = job_id


class JobFinished(QueueError):
    """The job has finished: there is nothing left to cancel."""

    def __init__(self, job: Any) -> None:
        super().__init__(f"job {job.id} has already finished ({job.state})")
        self.job = job


class LeaseLost(QueueError):
    """The worker no longer owns the job: its lease expired and it was taken over."""


class RetryableJobError(QueueError):
    """Raised by a handler for a failure worth another attempt (throttling, 5xx...)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentJobError(QueueError):
    """Raised by a handler for a failure that no retry can fix; shown to the user."""


class JobCancelled(QueueError):
    """Raised inside a handler at a safe point once cancellation was requested."""
