"""Queue benchmark: no-op jobs with per-key locking, Sheetbridge vs Procrastinate.

    python bench/queue_bench.py [--pg-url URL] [--scale 1.0] [--concurrency 8]

For 1, 100 and 10,000 keys it measures, on SQLite and on PostgreSQL for the
Sheetbridge queue and on the same PostgreSQL for Procrastinate (``lock=`` per
key, its default settings: 5 s fetch polling, LISTEN/NOTIFY on):

- jobs/s: all jobs are enqueued first, then the workers start; the time until
  the last job has run;
- enqueue→start p50/p99 with idle workers: jobs enqueued one at a time, each
  after the previous one started, spread over the keys.

Figures are printed, not asserted. Job counts are scaled so that the run takes
about three minutes on a 2-core machine (see ``JOBS``): Procrastinate with one
hot lock runs a job per poll, so it gets only a handful of jobs there. The
PostgreSQL database (default ``sheetbridge_bench``) is wiped and re-created.
Needs the ``bench`` extra (Procrastinate).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import text

from sheetbridge.db import Database
from sheetbridge.queue.events import connect_args
from sheetbridge.queue.store import JobQueue
from sheetbridge.queue.worker import JobContext, WorkerPool

KEYS = (1, 100, 10_000)
# Jobs per throughput run, by system and key count, before --scale.
JOBS = {
    "sheetbridge": {1: 300, 100: 2000, 10_000: 10_000},
    "procrastinate": {1: 4, 100: 2000, 10_000: 10_000},
}
LATENCY_JOBS = 100
DEFAULT_PG_URL = "postgresql+psycopg://root@127.0.0.1:5432/sheetbridge_bench"


@dataclass
class Result:
    system: str
    keys: int
    jobs: int
    enqueue_per_s: float
    jobs_per_s: float
    p50_ms: float
    p99_ms: float


class Recorder:
    """Start times of jobs by number, and a signal when ``expected`` ran."""

    def __init__(self) -> None:
        self.starts: dict[int, float] = {}
        self.expected = 0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def reset(self, expected: int) -> None:
        with self._lock:
            self.starts.clear()
            self.expected = expected
            self.done.clear()

    def started(self, number: int) -> None:
        with self._lock:
            self.starts[number] = time.perf_counter()
            if len(self.starts) >= self.expected:
                self.done.set()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


def trickle(
    enqueue: Callable[[int, str], None], recorder: Recorder, keys: int
) -> list[float]:
    """Enqueue→start latencies (ms) of jobs sent one at a time to idle workers."""
    latencies = []
    for number in range(LATENCY_JOBS):
        recorder.reset(1)
        sent = time.perf_counter()
        enqueue(number, f"k{number % keys}")
        if not recorder.done.wait(30):
            raise RuntimeError("a job did not start within 30 s")
        latencies.append((recorder.starts[number] - sent) * 1000)
    return latencies


# -- Sheetbridge ------------------------------------------------------------


def bench_sheetbridge(
    system: str, url: str, keys: int, jobs: int, concurrency: int
) -> Result:
    db = Database(url)
    if url.startswith("postgresql"):
        with db.engine.begin() as connection:
            connection.execute(text("TRUNCATE jobs RESTART IDENTITY"))
    queue = JobQueue(db)
    recorder = Recorder()

    def noop(context: JobContext) -> dict[str, Any]:
        recorder.started(context.payload["n"])
        return {}

    def enqueue(number: int, key: str) -> None:
        queue.enqueue("noop", queue_key=key, payload={"n": number})

    recorder.reset(jobs)
    began = time.perf_counter()
    for number in range(jobs):
        enqueue(number, f"k{number % keys}")
    enqueue_per_s = jobs / (time.perf_counter() - began)
    pool = WorkerPool(
        queue, {"noop": noop}, concurrency=concurrency, poll_interval_s=1.0
    )
    began = time.perf_counter()
    pool.start()
    recorder.done.wait(600)
    jobs_per_s = jobs / (time.perf_counter() - began)
    time.sleep(0.2)  # let the last jobs commit before the latency phase
    latencies = trickle(enqueue, recorder, keys)
    pool.stop()
    queue.close()
    db.dispose()
    return Result(
        system,
        keys,
        jobs,
        enqueue_per_s,
        jobs_per_s,
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
    )


# -- Procrastinate ----------------------------------------------------------


async def bench_procrastinate(
    url: str, keys: int, jobs: int, concurrency: int
) -> Result:
    import procrastinate

    args = connect_args(url)
    connector = procrastinate.PsycopgConnector(kwargs=args)
    app = procrastinate.App(connector=connector)
    recorder = Recorder()

    @app.task(name="noop")
    async def noop(n: int) -> None:
        recorder.started(n)

    async with app.open_async():
        with psycopg.connect(**args, autocommit=True) as connection:
            connection.execute("TRUNCATE procrastinate_jobs CASCADE")
        recorder.reset(jobs)
        began = time.perf_counter()
        for number in range(jobs):
            await noop.configure(lock=f"k{number % keys}").defer_async(n=number)
        enqueue_per_s = jobs / (time.perf_counter() - began)
        began = time.perf_counter()
        worker = asyncio.create_task(
            app.run_worker_async(concurrency=concurrency, install_signal_handlers=False)
        )
        await asyncio.to_thread(recorder.done.wait, 600)
        jobs_per_s = jobs / (time.perf_counter() - began)
        await asyncio.sleep(0.2)
        latencies = []
        for number in range(LATENCY_JOBS):
            recorder.reset(1)
            sent = time.perf_counter()
            await noop.configure(lock=f"k{number % keys}").defer_async(n=number)
            await asyncio.to_thread(recorder.done.wait, 30)
            latencies.append((recorder.starts[number] - sent) * 1000)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    return Result(
        "procrastinate PostgreSQL",
        keys,
        jobs,
        enqueue_per_s,
        jobs_per_s,
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
    )


def prepare_postgres(url: str) -> None:
    """Re-create the bench database's schema: our migrations, then Procrastinate's."""
    import procrastinate

    args = connect_args(url)
    with psycopg.connect(**args, autocommit=True) as connection:
        connection.execute("DROP SCHEMA public CASCADE")
        connection.execute("CREATE SCHEMA public")
    database = Database(url)
    database.upgrade()
    database.dispose()
    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(kwargs=args))
    with app.open():
        app.schema_manager.apply_schema()


def ensure_database(url: str) -> None:
    args = connect_args(url)
    name = args.pop("dbname")
    with psycopg.connect(**args, dbname="postgres", autocommit=True) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if not exists:
            connection.execute(f'CREATE DATABASE "{name}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--keys", type=int, nargs="*", default=list(KEYS))
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    ensure_database(options.pg_url)
    prepare_postgres(options.pg_url)
    sqlite_url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    Database(sqlite_url).upgrade()

    def count(system: str, keys: int) -> int:
        return max(int(JOBS[system][keys] * options.scale), 4)

    results = []
    for keys in options.keys:
        for system, url in (
            ("sheetbridge SQLite", sqlite_url),
            ("sheetbridge PostgreSQL", options.pg_url),
        ):
            jobs = count("sheetbridge", keys)
            results.append(
                bench_sheetbridge(system, url, keys, jobs, options.concurrency)
            )
            print_row(results[-1])
        jobs = count("procrastinate", keys)
        results.append(
            asyncio.run(
                bench_procrastinate(options.pg_url, keys, jobs, options.concurrency)
            )
        )
        print_row(results[-1])
    print()
    print_table(results)


def print_row(result: Result) -> None:
    print(
        f"  {result.system}: {result.keys} keys, {result.jobs} jobs:"
        f" {result.jobs_per_s:.1f} jobs/s",
        flush=True,
    )


def print_table(results: list[Result]) -> None:
    print(
        "| keys | system | jobs | enqueue/s | jobs/s | enqueue→start p50 ms"
        " | p99 ms | vs Procrastinate |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    baseline = {r.keys: r.jobs_per_s for r in results if "procrastinate" in r.system}
    for r in results:
        ratio = r.jobs_per_s / baseline[r.keys] if baseline.get(r.keys) else 0
        print(
            f"| {r.keys:,} | {r.system} | {r.jobs:,} | {r.enqueue_per_s:.0f}"
            f" | {r.jobs_per_s:.1f} | {r.p50_ms:.1f} | {r.p99_ms:.1f}"
            f" | {ratio:.1f}x |"
        )
    median = statistics.median(r.p50_ms for r in results)
    print(f"\n(median enqueue→start p50 over all rows: {median:.1f} ms)")


if __name__ == "__main__":
    main()
