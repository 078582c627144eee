"""How long the server spends on each request: a ``Server-Timing`` header on
every answer (browsers' developer tools and the load benchmark read it) and a
Prometheus histogram by method, route template and status."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Histogram
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_SECONDS = Histogram(
    "sheetbridge_http_request_seconds",
    "Time from a request reaching the app to its answer starting.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
UNMATCHED = "unmatched"


def route_label(scope: Scope) -> str:
    """The route template a request matched ("/jobs/{job_id}", not "/jobs/7"),
    so that labels stay few; a mount's prefix; or "unmatched"."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    if "app_root_path" in scope:  # inside a mount (the static files)
        mount = scope.get("root_path", "")[len(scope["app_root_path"]) :]
        return f"{mount}/{{path}}"
    if "endpoint" in scope:  # the framework's own fixed paths: /docs, /openapi.json
        return str(scope["path"])
    return UNMATCHED


class RequestTiming:
    """Pure ASGI middleware, so that it adds no task or thread to a request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered = False

        def observe(status: int) -> float:
            seconds = time.perf_counter() - started
            REQUEST_SECONDS.labels(
                scope["method"], route_label(scope), str(status)
            ).observe(seconds)
            return seconds

        async def send_timed(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                seconds = observe(message["status"])
                MutableHeaders(scope=message).append(
                    "Server-Timing", f"app;dur={seconds * 1000:.2f}"
                )
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        except Exception:
            if not answered:
                observe(500)  # the error middleware outside answers it
            raise
