"""The FastAPI application and the runtime it serves from."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.middleware.sessions import SessionMiddleware

from sheetbridge.config import Settings
from sheetbridge.db import DATABASE_UNAVAILABLE_ERRORS, Database, unavailable_reason
from sheetbridge.insurance.review import ReviewError
from sheetbridge.insurance.schemas import error_message
from sheetbridge.insurance.services import InUse, InvalidField, RecordNotFound
from sheetbridge.insurance.sync_jobs import SyncService, brief_result
from sheetbridge.queue.store import JobQueue
from sheetbridge.queue.worker import WorkerPool
from sheetbridge.web import api, events, pages, sync_api
from sheetbridge.web.deps import CurrentUser, NotSignedIn, Runtime
from sheetbridge.web.security import load_or_create_secret
from sheetbridge.web.timing import RequestTiming

log = logging.getLogger(__name__)

# What a client is told when the database is unavailable.
DATABASE_UNAVAILABLE = "the database is busy or unreachable; try again in a few seconds"
RETRY_AFTER_S = 5


def build_runtime(settings: Settings) -> Runtime:
    db = Database(
        settings.effective_database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    queue = JobQueue(db, lease_s=settings.lease_s, brief=brief_result)
    return Runtime(
        settings=settings, db=db, queue=queue, sync=SyncService(settings, db, queue)
    )


def worker_pool(runtime: Runtime, concurrency: int) -> WorkerPool:
    """Worker threads for the runtime's sync jobs."""
    return WorkerPool(
        runtime.queue,
        runtime.sync.handlers,
        concurrency=concurrency,
        poll_interval_s=runtime.settings.poll_interval_s,
        progress_interval_s=runtime.settings.progress_interval_s,
    )


def create_app(runtime: Runtime, *, workers: bool = True) -> FastAPI:
    """The web app; with ``workers`` it also runs the sync workers in-process."""
    settings = runtime.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = None
        if workers:
            pool = worker_pool(runtime, settings.worker_concurrency)
            pool.start()
        app.state.pool = pool
        try:
            yield
        finally:
            if pool is not None:
                pool.stop()

    app = FastAPI(title="Sheetbridge", lifespan=lifespan)
    app.state.runtime = runtime
    app.state.open_streams = events.OpenStreams()
    secret = settings.secret_key or load_or_create_secret(settings.data_dir)
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret,
        session_cookie="sheetbridge_session",
        max_age=settings.session_max_age_s,
        same_site="lax",
        https_only=settings.cookie_secure,
    )
    app.add_middleware(RequestTiming)  # outermost: it times the session too
    app.mount(
        "/static",
        StaticFiles(directory=Path(__file__).parent / "static"),
        name="static",
    )
    app.include_router(pages.router)
    app.include_router(api.router)
    app.include_router(sync_api.router)
    app.include_router(events.router)
    _add_error_handlers(app)
    _add_health(app, runtime)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NotSignedIn)
    async def _sign_in(request: Request, exc: NotSignedIn) -> RedirectResponse:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(RecordNotFound)
    async def _not_found(request: Request, exc: RecordNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(ReviewError)
    async def _review(request: Request, exc: ReviewError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_409_CONFLICT)

    @app.exception_handler(InUse)
    async def _in_use(request: Request, exc: InUse) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_409_CONFLICT)

    @app.exception_handler(InvalidField)
    async def _invalid(request: Request, exc: InvalidField) -> JSONResponse:
        detail = [
            {
                "loc": ["body", exc.field],
                "field": exc.field,
                "msg": exc.message,
                "type": "invalid",
            }
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    async def _database_unavailable(request: Request, exc: Exception) -> Response:
        log.warning(
            "database.unavailable",
            extra={"action": "request", "error": unavailable_reason(exc)},
        )
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        if _is_page(request):  # a person's browser: a page saying so
            return pages.templates.TemplateResponse(
                request,
                "unavailable.html",
                {
                    "csrf": "",
                    "reason": DATABASE_UNAVAILABLE.split(";")[0].capitalize(),
                    "retry_after": RETRY_AFTER_S,
                },
                status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                headers=headers,
            )
        return JSONResponse(
            {"detail": DATABASE_UNAVAILABLE},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers=headers,
        )

    for error in DATABASE_UNAVAILABLE_ERRORS:
        app.add_exception_handler(error, _database_unavailable)

    @app.exception_handler(RequestValidationError)
    async def _validation(
        request: Request, exc: RequestValidationError
    ) -> JSONResponse:
        errors = exc.errors()
        if any(_whole_body(error) for error in errors):
            kind = request.headers.get("content-type", "").split(";")[0].strip()
            if kind != "application/json":
                message = "send the body as JSON, with Content-Type: application/json"
                detail = [{"loc": ["body"], "field": "", "msg": message}]
                return JSONResponse({"detail": detail}, status_code=415)
        detail = [_validation_error(error) for error in errors]
        return JSONResponse({"detail": detail}, status_code=422)


def _is_page(request: Request) -> bool:
    """Whether the request is for one of the pages people open, not the API."""
    path = request.url.path
    return path in ("/", "/login", "/logout")


def _whole_body(error: Mapping[str, Any]) -> bool:
    """The body as a whole is not the JSON object a route takes."""
    return tuple(error.get("loc", ())) == ("body",) and error.get("type") in (
        "model_attributes_type",
        "dict_type",
    )


def _validation_error(error: Mapping[str, Any]) -> dict[str, Any]:
    """One invalid input, with the dotted ``field`` it concerns ("" for a body
    that is not JSON at all, whose message says where it broke)."""
    loc = list(error.get("loc", ()))
    kind = error.get("type", "invalid")
    message = error_message(error) if "msg" in error else "invalid"
    if kind == "json_invalid":
        position = loc[1] if len(loc) > 1 else "?"
        reason = (error.get("ctx") or {}).get("error", "")
        message = f"the body is not valid JSON ({reason} at character {position})"
        return {"loc": loc[:1], "field": "", "msg": message, "type": kind}
    if _whole_body(error):
        message = "the body must be a JSON object, {…}"
    elif loc == ["body"] and kind == "missing":
        message = "the body is missing: send a JSON object, {…}"
    field = ".".join(str(part) for part in loc[1:])
    return {"loc": loc, "field": field, "msg": message, "type": kind}


def _add_health(app: FastAPI, runtime: Runtime) -> None:
    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        try:
            with runtime.db.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "reason": str(exc)}, 503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False)
    def metrics(user: CurrentUser) -> PlainTextResponse:
        """Prometheus metrics, for an admin's API token (scrapers send it)."""
        if not user.is_admin:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "metrics are for admins")
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)
