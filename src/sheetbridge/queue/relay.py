"""Job events from a worker process to the process that started it, over a pipe.

On PostgreSQL every process hears every transition through LISTEN/NOTIFY.
SQLite has no such channel, so ``serve`` hands its worker process the write
end of a pipe: the child writes each transition there as one JSON line, and
the parent publishes it to its own subscribers (the dashboard's live stream).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from queue import SimpleQueue
from typing import BinaryIO

from sheetbridge.queue.models import Job
from sheetbridge.queue.store import JobQueue

log = logging.getLogger(__name__)


class EventSender:
    """Writes every transition of ``queue`` to ``stream``, one JSON line each.

    Workers publish from their own threads; a line is handed to a writer thread
    so a slow reader never holds up a job.
    """

    def __init__(self, queue: JobQueue, stream: BinaryIO) -> None:
        self._queue = queue
        self._stream = stream
        self._lines: SimpleQueue[bytes | None] = SimpleQueue()
        self._unsubscribe = queue.subscribe(self._on_event)
        self._writer = threading.Thread(
            target=self._write, name="event-sender", daemon=True
        )
        self._writer.start()

    def _on_event(self, event: str, job: Job) -> None:
        message = self._queue.event_message(event, job)
        self._lines.put(json.dumps(message, default=str).encode() + b"\n")

    def _write(self) -> None:
        while (line := self._lines.get()) is not None:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                return  # the parent is gone; nobody is left to tell

    def close(self) -> None:
        """Send what is pending, then stop."""
        self._unsubscribe()
        self._lines.put(None)
        self._writer.join(5.0)
        with contextlib.suppress(BrokenPipeError):
            self._stream.close()


def receive_events(queue: JobQueue, stream: BinaryIO) -> None:
    """Publish each transition read from ``stream`` on ``queue``, until it ends."""
    with stream:
        for line in stream:
            try:
                message = json.loads(line)
            except ValueError:
                log.warning("worker.bad_event_line", extra={"action": "relay"})
                continue
            queue.receive_event(message)
