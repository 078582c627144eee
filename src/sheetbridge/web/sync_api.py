"""The request's sync endpoints: enqueue at once, report status, cancel."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)
from sqlalchemy import select

from sheetbridge import clock
from sheetbridge.insurance import review
from sheetbridge.insurance.mapping import CUSTOMERS, POLICIES
from sheetbridge.insurance.models import User
from sheetbridge.insurance.schemas import MAX_ID
from sheetbridge.insurance.services import InvalidField
from sheetbridge.insurance.sync_jobs import (
    FROM_SHEET,
    TO_SHEET,
    brief_result,
    left_out_message,
)
from sheetbridge.queue.errors import JobFinished, JobNotFound
from sheetbridge.queue.models import FINAL_STATES, Job
from sheetbridge.queue.store import Enqueued, JobQueue
from sheetbridge.sheets.google import service_account_email, spreadsheet_id_in
from sheetbridge.sync.models import SyncTarget
from sheetbridge.web.answers import JsonAnswer
from sheetbridge.web.bodies import JsonRoute
from sheetbridge.web.deps import CurrentUser, Runtime, RuntimeDep

router = APIRouter(prefix="/api/insurance/sync", tags=["sync"], route_class=JsonRoute)
JobId = Annotated[int, Path(ge=1, le=MAX_ID)]
MAX_HISTORY_PAGE = 100
# A write-back names at most a whole big book's records.
MAX_WRITE_BACK = 100_000


def _iso(value: Any) -> str | None:
    return clock.iso(value) if value is not None else None


def job_view(
    queue: JobQueue, job: Job, result: dict[str, Any] | None
) -> dict[str, Any]:
    """A job as the status endpoint and the dashboard show it, with
    ``result`` (the whole or the brief)."""
    return {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "owner_id": job.owner_id,
        "position": queue.position(job) if job.state == "queued" else None,
        "waiting_for": queue.waiting_for(job),
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "progress": job.progress,
        "result": result,
        "error": job.error,
        "errors": job.errors,  # every attempt's error, oldest first
        "cancel_requested": job.cancel_requested,
        "enqueued_at": _iso(job.enqueued_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "run_after": _iso(job.run_after),
        "status_url": f"/api/insurance/sync/jobs/{job.id}",
    }


def _enqueue(kind: str, user: CurrentUser, rt: RuntimeDep) -> JsonAnswer:
    return _queued(rt.sync.enqueue(user, kind))


def _queued(queued: Enqueued, **more: object) -> JsonAnswer:
    answer = {
        "queued": True,
        "job_id": queued.job_id,
        "position": queued.position,
        "status_url": f"/api/insurance/sync/jobs/{queued.job_id}",
        **more,
    }
    return JsonAnswer(answer, status_code=status.HTTP_202_ACCEPTED)


@router.post("/to-sheet", status_code=status.HTTP_202_ACCEPTED)
def sync_to_sheet(user: CurrentUser, rt: RuntimeDep) -> JsonAnswer:
    """Queue a sync of the caller's book to their sheet; never waits for it."""
    return _enqueue(TO_SHEET, user, rt)


@router.post("/from-sheet", status_code=status.HTTP_202_ACCEPTED)
def sync_from_sheet(user: CurrentUser, rt: RuntimeDep) -> JsonAnswer:
    """Queue an import of the caller's sheet into the app; never waits for it."""
    return _enqueue(FROM_SHEET, user, rt)


RecordIds = Annotated[
    list[Annotated[StrictInt, Field(ge=1, le=MAX_ID)]],
    Field(max_length=MAX_WRITE_BACK),
]


class WriteBack(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customers: RecordIds = []
    policies: RecordIds = []
    all: StrictBool = Field(
        default=False, description="every record whose row the sync finds deleted"
    )


@router.post("/write-back", status_code=status.HTTP_202_ACCEPTED)
def write_back(body: WriteBack, user: CurrentUser, rt: RuntimeDep) -> JsonAnswer:
    """Queue a sync to the sheet that appends again the rows of these records
    (or of all), which were deleted from the sheet but kept in the app."""
    lists = {CUSTOMERS.tab: "customers", POLICIES.tab: "policies"}
    given = {
        tab: getattr(body, field)
        for tab, field in lists.items()
        if field in body.model_fields_set
    }
    queued, left_out = rt.sync.write_back(user, given, every=body.all)
    if not left_out:
        return _queued(queued)
    return _queued(
        queued,
        left_out={lists[tab]: ids for tab, ids in left_out.items()},
        message=left_out_message(left_out),
    )


def job_views(
    rt: Runtime, jobs: list[Job], *, brief: bool = False
) -> list[dict[str, Any]]:
    """The jobs' views; a finished import tells how many of the records it
    changed an undo can still take back (``undoable``), and one that failed,
    was stopped or waits for another attempt after it committed the same as
    ``saved_changes``: they stay. ``brief`` views count each tab's issues
    instead of listing them: a list of jobs carries many results, one job's
    view the whole of its own."""
    imports = [
        job.id for job in jobs if job.kind == FROM_SHEET and job.state in FINAL_STATES
    ]
    retrying = [
        job.id
        for job in jobs
        if job.kind == FROM_SHEET and job.state == "queued" and job.attempts
    ]
    saved: dict[int, int] = {}
    if imports or retrying:
        with rt.db.read_session() as session:
            saved = review.saved_changes(session, [*imports, *retrying])
    return [
        {
            **job_view(rt.queue, job, _result(job, brief)),
            "saved_changes": (
                saved.get(job.id)
                if job.state in ("failed", "cancelled") or job.id in retrying
                else None
            ),
            "undoable": saved.get(job.id, 0) if job.id in imports else None,
        }
        for job in jobs
    ]


def _result(job: Job, brief: bool) -> dict[str, Any] | None:
    """The job's result, or as a listing carries it: the brief stored with
    it, else made from the whole (a job that ended before briefs were kept)."""
    if not brief:
        return job.result
    if job.result_brief is not None:
        return job.result_brief
    return brief_result(job.result)


def listed_views(
    rt: Runtime, jobs: list[Job], owner: int | None
) -> list[dict[str, Any]]:
    """Brief views of ``owner``'s jobs, or (None) of everyone's, each then
    naming whose it is (``owner``)."""
    views = job_views(rt, jobs, brief=True)
    owners = {view["owner_id"] for view in views} if owner is None else set()
    if owners:
        with rt.db.read_session() as session:
            rows = session.execute(
                select(User.id, User.username).where(User.id.in_(owners))
            )
            names: dict[int, str] = {user_id: name for user_id, name in rows}
        for view in views:
            view["owner"] = names.get(view["owner_id"])
    return views


@router.get("/status")
def sync_status(
    user: CurrentUser, rt: RuntimeDep, all_users: bool = False
) -> JsonAnswer:
    """The caller's running, queued and recent jobs (admins may ask for all),
    each result with its issues counted: a job's own view lists them."""
    return JsonAnswer(jobs_status(rt, whose_syncs(user, all_users)))


@router.get("/jobs")
def older_jobs(
    user: CurrentUser,
    rt: RuntimeDep,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_PAGE)] = 20,
    all_users: bool = False,
) -> JsonAnswer:
    """The caller's finished jobs (admins may ask for all), newest first,
    older than job ``before``: the history past the status's recent jobs,
    a page at a time, each result with its issues counted."""
    owner = whose_syncs(user, all_users)
    jobs, more = rt.queue.finished(owner, before=before, limit=limit)
    return JsonAnswer({"jobs": listed_views(rt, jobs, owner), "more": more})


def whose_syncs(user: User, all_users: bool) -> int | None:
    """The owner whose syncs a listing shows: the caller's, or everyone's
    (None) for an admin who asks; anyone else asking is refused, not shown
    their own as if they were everyone's."""
    if not all_users:
        return user.id
    if not user.is_admin:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "all_users: only admins see everyone's syncs; leave it out for your own",
        )
    return None


def jobs_status(rt: Runtime, owner: int | None) -> dict[str, list[dict[str, Any]]]:
    """The running, queued and recent jobs of ``owner`` (None: everyone's,
    each naming whose it is)."""
    groups = rt.queue.status(owner, recent=rt.settings.recent_jobs)
    # All groups' views at once: one look-up of imports' changes and names.
    views = iter(
        listed_views(rt, [job for jobs in groups.values() for job in jobs], owner)
    )
    return {name: [next(views) for _ in jobs] for name, jobs in groups.items()}


def _own_job(job_id: JobId, user: CurrentUser, rt: RuntimeDep) -> Job:
    try:
        job = rt.queue.get(job_id)
    except JobNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    if job.owner_id != user.id and not user.is_admin:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} does not exist")
    return job


@router.get("/jobs/{job_id}")
def get_job(job_id: JobId, user: CurrentUser, rt: RuntimeDep) -> JsonAnswer:
    (view,) = job_views(rt, [_own_job(job_id, user, rt)])
    return JsonAnswer(view)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: JobId, user: CurrentUser, rt: RuntimeDep) -> JsonAnswer:
    """Cancel a queued sync, or stop a running one at its next safe point; a
    finished one is a 409 with the job as it ended."""
    job = _own_job(job_id, user, rt)
    try:
        (view,) = job_views(rt, [rt.queue.cancel(job.id)])
    except JobFinished as finished:
        (ended,) = job_views(rt, [finished.job])
        detail = (
            f"sync #{job.id} has already finished ({ended['state']}); "
            "there is nothing to stop"
        )
        return JsonAnswer(
            {"detail": detail, "job": ended}, status_code=status.HTTP_409_CONFLICT
        )
    return JsonAnswer(view)


def _one_kind_of_value(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    """One plain refusal for a value of none of the kinds, not one for each."""
    try:
        return handler(value)
    except ValidationError:
        raise ValueError("must be text, a number or null") from None


class Resolution(BaseModel):
    model_config = ConfigDict(extra="forbid")

    choice: Literal["app", "sheet", "edit"]
    value: Annotated[
        str | StrictInt | Decimal | None, WrapValidator(_one_kind_of_value)
    ] = Field(default=None, description="The value to keep, with choice 'edit'")


@router.get("/conflicts")
def list_conflicts(user: CurrentUser, rt: RuntimeDep) -> dict[str, Any]:
    """Open conflicts in the caller's sheet (admins: every sheet)."""
    with rt.db.read_session() as session:
        return {"conflicts": review.open_conflicts(session, user)}


@router.post("/conflicts/{conflict_id}/resolve")
def resolve_conflict(
    conflict_id: JobId, body: Resolution, user: CurrentUser, rt: RuntimeDep
) -> dict[str, Any]:
    """Keep the app's value, the sheet's, or an edited one."""
    given = "value" in body.model_fields_set
    if body.choice == "edit" and not given:
        raise InvalidField("value", "an edit needs the value to keep (null clears)")
    if body.choice != "edit" and given:
        raise InvalidField("value", f"a value is only for 'edit', not '{body.choice}'")
    try:
        with rt.db.session() as session:
            row = review.resolve_conflict(
                session, user, conflict_id, body.choice, body.value
            )
            return review.conflict_view(row)
    except review.ConflictOutdated as outdated:
        with rt.db.session() as session:
            review.show_app_value(session, outdated.conflict_id, outdated.current)
        raise
    except review.RecordGone as gone:
        with rt.db.session() as session:
            review.close_gone(session, gone)
        raise


@router.post("/jobs/{job_id}/undo")
def undo_import(job_id: JobId, user: CurrentUser, rt: RuntimeDep) -> dict[str, Any]:
    """Restore what one import changed; records edited since are left alone."""
    _own_job(job_id, user, rt)
    with rt.db.session() as session:
        report = review.undo_import(session, user, job_id)
    return {
        "restored": report.restored,
        # Of them, records the import created, deleted: their rows stay.
        "removed": report.removed,
        "left_alone": report.left_alone,
        "note": report.note,
    }


class TargetChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delete_mode: Literal["flag", "delete"] | None = None
    backend: Literal["xlsx", "google"] | None = None
    spreadsheet_id: str | None = Field(
        default=None,
        max_length=256,
        description="the ID, or the spreadsheet's address with it after /d/",
    )

    @field_validator("spreadsheet_id")
    @classmethod
    def _id_of_an_address(cls, value: str | None) -> str | None:
        return None if value is None else spreadsheet_id_in(value)


def _target_view(rt: RuntimeDep, target: SyncTarget) -> dict[str, Any]:
    return {
        "id": target.id,
        "user_id": target.user_id,
        "backend": target.backend,
        "location": target.location,
        "delete_mode": target.delete_mode,
        "share_with": service_account_email(rt.settings),
    }


def _subject(user: CurrentUser, rt: RuntimeDep, user_id: int | None, verb: str) -> User:
    """The caller, or for an admin the user named by ``user_id``; ``verb``
    ("see", "set") is what only admins may do with another user's sheet."""
    if user_id is None or user_id == user.id:
        return user
    if not user.is_admin:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"only admins {verb} others' sheets"
        )
    with rt.db.read_session() as session:
        other = session.get(User, user_id)
    if other is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {user_id} does not exist")
    return other


@router.get("/target")
def get_target(
    user: CurrentUser,
    rt: RuntimeDep,
    user_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> dict[str, Any]:
    """Where a book syncs to, how deletes are treated, whom to share it with."""
    return _target_view(rt, rt.sync.target_for(_subject(user, rt, user_id, "see")))


@router.patch("/target")
def change_target(
    body: TargetChange,
    user: CurrentUser,
    rt: RuntimeDep,
    user_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> dict[str, Any]:
    """Point a book at a Google spreadsheet (or back to its workbook), or set
    ``delete_mode``: ``flag`` reports deleted rows, ``delete`` removes them."""
    target = rt.sync.update_target(
        _subject(user, rt, user_id, "set"),
        delete_mode=body.delete_mode,
        backend=body.backend,
        spreadsheet_id=body.spreadsheet_id,
        by=user,
    )
    return _target_view(rt, target)
