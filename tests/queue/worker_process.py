"""A standalone worker process for the queue's multi-process tests.

``python -m tests.queue.worker_process URL --lease-s S --concurrency N`` runs a
WorkerPool like ``sheetbridge worker`` does (SIGTERM drains) with handlers that
record every run in the ``queue_test_runs`` table, written outside the queue,
so the tests judge the queue by what the handlers saw.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from sheetbridge.db import Database
from sheetbridge.queue.errors import LeaseLost, RetryableJobError
from sheetbridge.queue.store import Backoff, JobQueue
from sheetbridge.queue.worker import JobContext, WorkerPool

RUNS_TABLE = """
CREATE TABLE IF NOT EXISTS queue_test_runs (
    id BIGSERIAL PRIMARY KEY,
    job_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    queue_key TEXT NOT NULL,
    resource_key TEXT,
    pid INTEGER NOT NULL,
    started_ns BIGINT NOT NULL,
    ended_ns BIGINT NOT NULL,
    outcome TEXT NOT NULL
)
"""


class Handlers:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.rng = random.Random(os.getpid())

    def record(self, context: JobContext, started_ns: int, outcome: str) -> None:
        job = context.job
        with self.db.engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO queue_test_runs (job_id, attempt, epoch, queue_key,"
                    " resource_key, pid, started_ns, ended_ns, outcome) VALUES"
                    " (:job, :attempt, :epoch, :key, :resource, :pid, :start,"
                    " :end, :outcome)"
                ),
                {
                    "job": job.id,
                    "attempt": job.attempts,
                    "epoch": job.epoch,
                    "key": job.queue_key,
                    "resource": job.resource_key,
                    "pid": os.getpid(),
                    "start": started_ns,
                    "end": time.time_ns(),
                    "outcome": outcome,
                },
            )

    def stress(self, context: JobContext) -> dict[str, Any]:
        """Sleeps a random time; fails its first ``fail_attempts`` attempts."""
        started_ns = time.time_ns()
        time.sleep(self.rng.uniform(0, context.payload["max_ms"]) / 1000)
        if context.job.attempts <= context.payload.get("fail_attempts", 0):
            self.record(context, started_ns, "retry")
            raise RetryableJobError("simulated 503", retry_after_s=0.01)
        self.record(context, started_ns, "ok")
        return {"pid": os.getpid()}

    def slow(self, context: JobContext) -> dict[str, Any]:
        """The first attempt hangs (to be killed); later ones succeed."""
        started_ns = time.time_ns()
        if context.job.attempts == 1:
            self.record(context, started_ns, "start")
            time.sleep(60)
        self.record(context, started_ns, "ok")
        return {"pid": os.getpid()}

    def fence(self, context: JobContext) -> dict[str, Any]:
        """The first attempt works on (to be paused) and reports what the queue
        refused once it resumes; later attempts succeed."""
        started_ns = time.time_ns()
        if context.job.attempts > 1:
            self.record(context, started_ns, "ok")
            return {"pid": os.getpid()}
        self.record(context, started_ns, "start")
        job, queue = context.job, context.queue
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.3)
            try:
                context.progress("working")
            except LeaseLost:
                self.record(context, started_ns, "progress_refused")
                break
        attempts: list[tuple[str, Callable[[], None]]] = [
            ("heartbeat", lambda: queue.heartbeat(job.id, job.epoch)),
            ("finish", lambda: queue.succeed(job.id, job.epoch, {"pid": -1})),
        ]
        for name, call in attempts:
            try:
                call()
            except LeaseLost:
                self.record(context, started_ns, f"{name}_refused")
        raise LeaseLost(f"job {job.id} was taken over")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--lease-s", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--drain-timeout-s", type=float, default=10.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    db = Database(args.url)
    queue = JobQueue(db, lease_s=args.lease_s, backoff=Backoff(base_s=0.01, cap_s=0.05))
    handlers = Handlers(db)
    pool = WorkerPool(
        queue,
        {"stress": handlers.stress, "slow": handlers.slow, "fence": handlers.fence},
        concurrency=args.concurrency,
        poll_interval_s=0.5,
        name=f"test-{os.getpid()}",
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    pool.start()
    print("ready", flush=True)
    stop.wait()
    pool.stop(args.drain_timeout_s)
    queue.close()


if __name__ == "__main__":
    main()
