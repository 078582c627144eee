"""Job events across processes: PostgreSQL LISTEN/NOTIFY.

Every transition's transaction also runs ``pg_notify`` on one channel, so the
event is delivered when, and only when, the transition commits. A listener
thread per process hands the other processes' events to the local queue,
which re-publishes them to its subscribers and wakes its idle workers: a job
enqueued by a web process starts at once on a ``sheetbridge worker`` process.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CHANNEL = "sheetbridge_jobs"
# pg_notify refuses payloads of 8000 bytes or more.
MAX_PAYLOAD_BYTES = 7900


def connect_args(url: str) -> dict[str, Any]:
    """psycopg keyword arguments for a SQLAlchemy PostgreSQL URL."""
    parsed = make_url(url)
    args: dict[str, Any] = {
        key: value
        for key, value in parsed.translate_connect_args(
            username="user", database="dbname"
        ).items()
        if value is not None
    }
    args.update(parsed.query)
    return args


class PgEventBridge:
    """A thread that LISTENs for job events and calls ``on_event`` for each.

    ``on_connect`` runs after every (re)connection: events sent while the
    connection was down are lost, so the queue treats a reconnect as "anything
    may have changed" and wakes its workers.
    """

    def __init__(
        self,
        url: str,
        on_event: Callable[[dict[str, Any]], None],
        on_connect: Callable[[], None],
    ) -> None:
        self._args = connect_args(url)
        self._on_event = on_event
        self._on_connect = on_connect
        self._stopping = threading.Event()
        self._listening = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = 5.0) -> None:
        """Start listening; return once LISTEN is in place (or the timeout)."""
        self._thread = threading.Thread(
            target=self._run, name="sheetbridge-job-events", daemon=True
        )
        self._thread.start()
        self._listening.wait(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._listen()
            except psycopg.Error as exc:
                self._listening.clear()
                log.warning(
                    "queue.listener_reconnecting",
                    extra={"action": "queue.listener_reconnecting", "error": str(exc)},
                )
                self._stopping.wait(1.0)

    def _listen(self) -> None:
        with psycopg.connect(**self._args, autocommit=True) as connection:
            connection.execute(f"LISTEN {CHANNEL}")
            self._listening.set()
            self._on_connect()
            while not self._stopping.is_set():
                # The timeout bounds how long stop() waits for this thread.
                for notify in connection.notifies(timeout=0.5):
                    self._deliver(notify.payload)

    def _deliver(self, payload: str) -> None:
        try:
            self._on_event(json.loads(payload))
        except Exception:
            log.exception("queue.event_failed", extra={"action": "queue.event"})
