"""Server-sent events: a user's job transitions, pushed as they happen."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from sheetbridge.db import DATABASE_UNAVAILABLE_ERRORS, unavailable_reason
from sheetbridge.queue.errors import JobNotFound
from sheetbridge.queue.models import Job
from sheetbridge.web.bodies import JsonRoute
from sheetbridge.web.deps import CurrentUser, Runtime, RuntimeDep
from sheetbridge.web.sync_api import job_views, jobs_status, whose_syncs

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/insurance/sync", tags=["sync"], route_class=JsonRoute)

KEEPALIVE_S = 15.0
QUIET_EVENTS = frozenset({"progress", "queued"})
QUEUED_JOBS = 0  # not a job id: "the user's queued jobs"
CLOSING = -1  # not a job id: "the server is stopping"
MAX_REFRESHED = 50


class OpenStreams:
    """The event streams a web process serves, so that a server that stops
    can end them: a stream ends only when its client goes away, and the
    server would wait for every open page before it exits."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[int]] = set()

    def add(self, queue: asyncio.Queue[int]) -> None:
        self._queues.add(queue)

    def discard(self, queue: asyncio.Queue[int]) -> None:
        self._queues.discard(queue)

    def close_all(self) -> None:
        """End every open stream (on the event loop that serves them); a page
        that loses its stream polls the status and connects again."""
        for queue in self._queues:
            queue.put_nowait(CLOSING)


def _frame(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


@router.get("/events")
async def sync_events(
    request: Request, user: CurrentUser, rt: RuntimeDep, all_users: bool = False
) -> StreamingResponse:
    """Stream the caller's job events (admins may ask for everyone's).

    The stream opens with a ``status`` event, the status endpoint's answer, so
    a client that reconnects after a drop misses no final state. Each ``job``
    event after it is one job's whole view, its issues listed.
    """
    owner = whose_syncs(user, all_users)
    stream = _stream(request, rt, owner, request.app.state.open_streams)
    # The status is read before anything is answered: with the database
    # down, the caller gets its 503 instead of a 200 whose stream breaks.
    status = await anext(stream)
    return StreamingResponse(
        _after(status, stream),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _after(first: bytes, rest: AsyncGenerator[bytes]) -> AsyncIterator[bytes]:
    """``first``, then the frames of ``rest``, closing it however this ends."""
    try:
        yield first
        async for frame in rest:
            yield frame
    finally:
        await rest.aclose()


async def _stream(
    request: Request, rt: Runtime, owner: int | None, streams: OpenStreams
) -> AsyncGenerator[bytes]:
    loop = asyncio.get_running_loop()
    changed: asyncio.Queue[int] = asyncio.Queue()
    streams.add(changed)

    def on_event(event: str, job: Job) -> None:
        if owner is None or job.owner_id == owner:
            loop.call_soon_threadsafe(changed.put_nowait, job.id)
            if event not in QUIET_EVENTS:
                # A job that started or ended moves the ones queued behind it.
                loop.call_soon_threadsafe(changed.put_nowait, QUEUED_JOBS)

    unsubscribe = rt.queue.subscribe(on_event)
    try:
        status = await to_thread.run_sync(jobs_status, rt, owner)
        yield _frame("status", status)
        while not await request.is_disconnected():
            try:
                job_id = await asyncio.wait_for(changed.get(), KEEPALIVE_S)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            # Progress comes in bursts: send each changed job once per burst.
            pending = {job_id}
            while not changed.empty():
                pending.add(changed.get_nowait())
            if CLOSING in pending:
                return
            try:
                views = await to_thread.run_sync(_views, rt, owner, pending)
            except DATABASE_UNAVAILABLE_ERRORS as exc:
                # The stream ends cleanly: the page polls the status until
                # it can open a new one.
                log.warning(
                    "events.database_unavailable",
                    extra={"action": "events", "error": unavailable_reason(exc)},
                )
                return
            for view in views:
                yield _frame("job", view)
    finally:
        unsubscribe()
        streams.discard(changed)


def _views(rt: Runtime, owner: int | None, job_ids: set[int]) -> list[dict[str, Any]]:
    """The changed jobs as they are now; QUEUED_JOBS stands for every queued job
    of the stream's user (up to MAX_REFRESHED), whose positions may have moved."""
    ids = job_ids - {QUEUED_JOBS}
    jobs = []
    for job_id in sorted(ids):
        try:
            jobs.append(rt.queue.get(job_id))
        except JobNotFound:
            continue
    if QUEUED_JOBS in job_ids:
        queued = rt.queue.status(owner, recent=1)["queued"][:MAX_REFRESHED]
        jobs += [job for job in queued if job.id not in ids]
    return job_views(rt, jobs)
