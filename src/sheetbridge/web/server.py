"""The HTTP server ``serve`` runs the app in: uvicorn, stopping promptly."""

from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI

# Past this, requests still running when the server is asked to stop are cut
# off (a page's event stream is ended at once: see OpenStreams).
SHUTDOWN_GRACE_S = 10


class StreamClosingServer(uvicorn.Server):
    """uvicorn's server, ending the app's event streams as it stops: each
    lasts as long as its page is open, and the server would wait for every
    page to close before it exits."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.app.state.open_streams.close_all()
        await super().shutdown(sockets)


def run_server(
    app: FastAPI, host: str, port: int, log_level: str, forwarded_allow_ips: str = ""
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM. A client's address is the one it
    connects from, or the one a proxy of ``forwarded_allow_ips`` forwards:
    sign-in limits count by it, so no other sender may name it."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        proxy_headers=bool(forwarded_allow_ips),
        forwarded_allow_ips=forwarded_allow_ips or None,
    )
    StreamClosingServer(config, app).run()
