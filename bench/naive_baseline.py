"""A deliberately naive sync server: the design the original request complains of.

One global lock around every sync. A sync runs inside the HTTP request, so the
request (and the page waiting on it) blocks until the sheet is written; a sync
requested while any other user's sync runs is answered ``409 already syncing``.
Record endpoints are Sheetbridge's own (``sheetbridge.web.api``), and a sync is
Sheetbridge's own sync job on the same data (enqueued and run inline by
``WorkerPool.run_until_empty``), so only the concurrency model differs.

This file lives in ``bench/`` only; the app never imports it.

    /work/venv/bin/python bench/naive_baseline.py            # small demo
    /work/venv/bin/python bench/naive_baseline.py --serve    # used by load.py

The demo starts the emulator (300 ms per API call) and this server, and lets
1, 2 and 10 users press "Sync to sheet" at the same moment.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from loadkit import (
    Samples,
    SimUser,
    app_settings,
    clean_env,
    edit_one,
    emulator_process,
    free_port,
    percentile,
    prepare,
    process,
    sqlite_url,
    user_client,
)

from sheetbridge.config import Settings
from sheetbridge.insurance.sync_jobs import FROM_SHEET, TO_SHEET
from sheetbridge.logs import configure_logging
from sheetbridge.queue.worker import WorkerPool
from sheetbridge.web import api
from sheetbridge.web.app import build_runtime
from sheetbridge.web.deps import CurrentUser, Runtime


def create_naive_app(runtime: Runtime) -> FastAPI:
    """The naive app: records API as usual, syncs behind one global lock."""
    app = FastAPI(title="naive sync baseline")
    app.state.runtime = runtime
    app.include_router(api.router)
    lock = threading.Lock()
    syncing: dict[str, Any] = {"user": None}

    def sync_now(kind: str, user: CurrentUser) -> JSONResponse:
        if not lock.acquire(blocking=False):
            return JSONResponse(
                {"detail": "Sync already in progress", "by": syncing["user"]},
                status_code=409,
            )
        try:
            syncing["user"] = user.username
            queued = runtime.sync.enqueue(user, kind)
            WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty()
            job = runtime.queue.get(queued.job_id)
        finally:
            syncing["user"] = None
            lock.release()
        ok = job.state == "succeeded"
        return JSONResponse(
            {"ok": ok, "job_id": job.id, "result": job.result, "error": job.error},
            status_code=200 if ok else 500,
        )

    @app.post("/api/insurance/sync/to-sheet")
    def to_sheet(user: CurrentUser) -> JSONResponse:
        return sync_now(TO_SHEET, user)

    @app.post("/api/insurance/sync/from-sheet")
    def from_sheet(user: CurrentUser) -> JSONResponse:
        return sync_now(FROM_SHEET, user)

    @app.get("/api/insurance/sync/status")
    def status(user: CurrentUser) -> dict[str, Any]:
        return {"syncing": lock.locked(), "by": syncing["user"]}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def serve() -> None:
    """Serve the naive app with settings from ``SHEETBRIDGE_*`` variables."""
    settings = Settings()
    configure_logging(settings.log_level)
    runtime = build_runtime(settings)
    runtime.db.upgrade()
    uvicorn.run(
        create_naive_app(runtime),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
    )


async def click_together(
    base_url: str, users: list[SimUser]
) -> list[tuple[float, int]]:
    """Each user edits one policy, then all press Sync at once; (s, status) each."""
    samples = Samples()
    clients = [user_client(base_url, user) for user in users]
    try:
        await asyncio.gather(
            *(edit_one(c, u, samples) for c, u in zip(clients, users, strict=True))
        )

        async def click(client: httpx.AsyncClient) -> tuple[float, int]:
            started = time.perf_counter()
            answer = await client.post("/api/insurance/sync/to-sheet")
            return time.perf_counter() - started, answer.status_code

        return list(await asyncio.gather(*(click(c) for c in clients)))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


def demo() -> None:
    """1, 2 and 10 users press Sync at once against the naive server."""
    with tempfile.TemporaryDirectory(prefix="sheetbridge-naive-") as folder:
        work = Path(folder)
        with emulator_process(300, work) as emulator:
            database_url = sqlite_url(work / "naive")
            users = prepare(
                work / "naive",
                database_url,
                emulator,
                users=10,
                customers=20,
                policies=50,
            )
            port = free_port()
            env = clean_env(
                app_settings(work / "naive", database_url, emulator.base_url, port, 1)
            )
            command = [sys.executable, __file__, "--serve"]
            base_url = f"http://127.0.0.1:{port}"
            with process(command, env, f"{base_url}/healthz", work / "naive.log"):
                print("naive baseline, emulator at 300 ms per API call")
                print("users | request time p50 / max (s) | synced | 409 errors")
                for count in (1, 2, 10):
                    answers = asyncio.run(click_together(base_url, users[:count]))
                    times = [seconds for seconds, _ in answers]
                    synced = sum(1 for _, code in answers if code == 200)
                    errors = sum(1 for _, code in answers if code == 409)
                    print(
                        f"{count:>5} | {percentile(times, 0.5):6.2f} / "
                        f"{max(times):6.2f}             | {synced:>6} | {errors:>10}"
                    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", action="store_true", help="serve (env settings)")
    if parser.parse_args().serve:
        serve()
    else:
        demo()
