"""``sheetbridge sync`` beside workers of the server's: its result, whoever
runs the job."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from typer.testing import CliRunner

from sheetbridge import cli
from sheetbridge.queue.worker import WorkerPool
from sheetbridge.web.deps import Runtime


def test_a_sync_a_worker_elsewhere_took_first_is_told_once_it_has_run(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def slowly(handler: Any) -> Any:
        def run(context: Any) -> Any:
            time.sleep(0.5)
            return handler(context)

        return run

    class TakenElsewhere:
        """A worker of the server's claims the job before this process can."""

        def __init__(self, queue: Any, handlers: dict[str, Any]) -> None:
            slow = {kind: slowly(handler) for kind, handler in handlers.items()}
            self.elsewhere = WorkerPool(queue, slow)
            self.queue = queue

        def run_until_empty(self) -> None:
            threading.Thread(target=self.elsewhere.run_until_empty).start()
            deadline = time.monotonic() + 10
            while not self.queue.status(None)["running"]:
                assert time.monotonic() < deadline
                time.sleep(0.01)

    monkeypatch.setattr(cli, "_runtime", lambda: runtime)
    monkeypatch.setattr(cli, "WorkerPool", TakenElsewhere)

    answer = CliRunner().invoke(cli.app, ["sync", "alice", "to-sheet"])

    assert answer.exit_code == 0, answer.output
    assert answer.output.startswith("sync #1 succeeded: ")
