"""A real Sheetbridge server on a free localhost port, in a background thread."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from sheetbridge.web.app import create_app
from sheetbridge.web.deps import Runtime
from sheetbridge.web.server import StreamClosingServer


def free_port() -> int:
    """A free localhost port: any, or with SHEETBRIDGE_TEST_PORTS set (like
    18500-18599) one in that range, on a machine that hands out ports so."""
    span = os.environ.get("SHEETBRIDGE_TEST_PORTS", "")
    low, _, high = span.partition("-")
    candidates = range(int(low), int(high or low) + 1) if low else range(1)
    for candidate in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port: int = sock.getsockname()[1]
            return port
    raise RuntimeError(f"no free port in SHEETBRIDGE_TEST_PORTS={span}")


@contextmanager
def live_server(runtime: Runtime, *, workers: bool = True) -> Iterator[str]:
    """Serve the app with its in-process workers; yields the base URL."""
    port = free_port()
    app = create_app(runtime, workers=workers)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        limit_concurrency=500,
        backlog=512,
        timeout_graceful_shutdown=2,
    )
    server = StreamClosingServer(config, app)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
