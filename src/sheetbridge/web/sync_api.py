"""The request's sync endpoints: enqueue at once, report status, cancel."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status

from sheetbridge import clock
from sheetbridge.insurance.sync_jobs import FROM_SHEET, TO_SHEET
from sheetbridge.queue.errors import JobNotFound
from sheetbridge.queue.models import Job
from sheetbridge.queue.store import JobQueue
from sheetbridge.web.deps import CurrentUser, RuntimeDep

router = APIRouter(prefix="/api/insurance/sync", tags=["sync"])


def _iso(value: Any) -> str | None:
    return clock.as_utc(value).isoformat() if value is not None else None


def job_view(queue: JobQueue, job: Job) -> dict[str, Any]:
    """A job as the status endpoint and the dashboard show it."""
    return {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "owner_id": job.owner_id,
        "position": queue.position(job) if job.state == "queued" else None,
        "waiting_for": queue.waiting_for(job),
        "attempts": job.attempts,
        "progress": job.progress,
        "result": job.result,
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "enqueued_at": _iso(job.enqueued_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "run_after": _iso(job.run_after),
        "status_url": f"/api/insurance/sync/jobs/{job.id}",
    }


def _enqueue(kind: str, user: CurrentUser, rt: RuntimeDep) -> dict[str, Any]:
    queued = rt.sync.enqueue(user, kind)
    return {
        "queued": True,
        "job_id": queued.job_id,
        "position": queued.position,
        "status_url": f"/api/insurance/sync/jobs/{queued.job_id}",
    }


@router.post("/to-sheet", status_code=status.HTTP_202_ACCEPTED)
def sync_to_sheet(user: CurrentUser, rt: RuntimeDep) -> dict[str, Any]:
    """Queue a sync of the caller's book to their sheet; never waits for it."""
    return _enqueue(TO_SHEET, user, rt)


@router.post("/from-sheet", status_code=status.HTTP_202_ACCEPTED)
def sync_from_sheet(user: CurrentUser, rt: RuntimeDep) -> dict[str, Any]:
    """Queue an import of the caller's sheet into the app; never waits for it."""
    return _enqueue(FROM_SHEET, user, rt)


@router.get("/status")
def sync_status(
    user: CurrentUser, rt: RuntimeDep, all_users: bool = False
) -> dict[str, Any]:
    """The caller's running, queued and recent jobs (admins may ask for all)."""
    owner = None if (all_users and user.is_admin) else user.id
    jobs = rt.queue.status(owner, recent=rt.settings.recent_jobs)
    return {
        name: [job_view(rt.queue, job) for job in group] for name, group in jobs.items()
    }


def _own_job(job_id: int, user: CurrentUser, rt: RuntimeDep) -> Job:
    try:
        job = rt.queue.get(job_id)
    except JobNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    if job.owner_id != user.id and not user.is_admin:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} does not exist")
    return job


@router.get("/jobs/{job_id}")
def get_job(job_id: int, user: CurrentUser, rt: RuntimeDep) -> dict[str, Any]:
    return job_view(rt.queue, _own_job(job_id, user, rt))


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: int, user: CurrentUser, rt: RuntimeDep) -> dict[str, Any]:
    job = _own_job(job_id, user, rt)
    return job_view(rt.queue, rt.queue.cancel(job.id))
