"""Load benchmark (issue 6 item 6): many users syncing, polling and editing.

``sheetbridge serve`` runs as a subprocess (its own interpreter, configured
by ``SHEETBRIDGE_*`` variables, the realistic deployment), on SQLite in a
temporary folder (the default) and again on a scratch PostgreSQL database (the
scale-out path), every user's sync target an own Google spreadsheet on the
Sheets API emulator, which runs in another subprocess with 300 ms latency on
every API call and its quota knobs off. The app's own quota limiter is off too
(``SHEETBRIDGE_SHEETS_*_PER_MINUTE_* = 0``): with its defaults and one shared
principal, 60 reads a minute would cap all users together at about 30 syncs a
minute and the figures would measure the quota, not the queue. Each user
owns a small book (50 policies, 20 customers), so the API latency dominates.
Logging at WARNING. Seeding and every user's first sync into their empty
spreadsheet happen from this process before the server starts, so every
measured sync is the everyday kind: read the sheet, write one changed cell
(5 API calls, 1.5 s of latency; the last reads back the row it wrote).

For each server configuration (Sheetbridge with several worker counts, or
its worker process at several CPU priorities, then the naive baseline from
``bench/naive_baseline.py`` under the same load):

1. bursts: 1, 2, 10 and 100 users each edit one policy and press "Sync to
   sheet" at the same moment; per user the enqueue latency and the sync wall
   time (Sheetbridge: the job's enqueue → finish timestamps, while each user
   polls its job once a second; naive: the blocking request's duration, or
   its 409); the server process's CPU time per finished sync;
2. mixed: all users for a bounded time, each looping "press Sync, then poll
   the status and edit records about once a second until the sync is done,
   then think"; latencies of every request kind and the syncs' wall times.
   Beside the users, one client asks for ``/healthz`` 20 times a second: a
   request that does nothing, whose latency is the floor under the others
   (the server's own work and the wait for a turn on this machine's two
   cores, shared by the server, the emulator and this client).

Figures are printed, never asserted::

    python bench/load.py [--users 100] [--seconds 20] [--databases sqlite postgres]
                         [--concurrency 32] [--worker-nice 0 10] [--no-naive]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from loadkit import (
    Emulator,
    Samples,
    SimUser,
    app_settings,
    clean_env,
    cpu_seconds,
    edit_one,
    emulator_process,
    free_port,
    job_seconds,
    load_average,
    percentile,
    postgres_database,
    prepare,
    process,
    sqlite_url,
    timed,
    user_client,
)

from sheetbridge.config import Settings

SB = "sheetbridge"
NAIVE = "naive"
SYNC = "sync request (POST to-sheet)"
EDIT = "edit (PATCH policy)"
STATUS = "status poll (GET status)"
FLOOR = "floor (GET /healthz)"
FLOOR_EVERY_S = 0.05
ENQUEUE_TARGET_MS = 10.0
BURST_DEADLINE_S = 150.0
DRAIN_S = 60.0
DEFAULT_CONCURRENCY: int = Settings.model_fields["worker_concurrency"].default
DEFAULT_NICE: int = Settings.model_fields["worker_nice"].default
SQLITE = "sqlite"
POSTGRES = "postgres"
POLL_S = 1.0  # like a page polling its status; wall times use job timestamps


@dataclass
class Config:
    """One server under test."""

    label: str
    kind: str
    concurrency: int
    database: str = SQLITE
    nice: int = 0


@dataclass
class Burst:
    """N users pressing Sync at the same moment."""

    users: int
    enqueue_ms: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    errors: int = 0
    api_calls: int = 0
    server_cpu_s: float = 0.0

    @property
    def slowest_s(self) -> float:
        return max(self.wall_s) if self.wall_s else float("nan")


@dataclass
class Mixed:
    """Everything measured in the mixed run."""

    seconds: float
    samples: Samples = field(default_factory=Samples)
    wall_s: list[float] = field(default_factory=list)
    sync_failed: int = 0
    unfinished: int = 0
    api_calls: int = 0
    server_cpu_s: float = 0.0


@dataclass
class Result:
    """All figures of one configuration."""

    config: Config
    bursts: dict[int, list[Burst]] = field(default_factory=dict)
    mixed: Mixed | None = None


# -- bursts ----------------------------------------------------------------------


async def wait_for_job(
    client: httpx.AsyncClient, job_id: int, deadline: float
) -> dict[str, Any] | None:
    """Poll one job until it is finished (None if the deadline passes)."""
    while time.monotonic() < deadline:
        answer = await client.get(f"/api/insurance/sync/jobs/{job_id}")
        job: dict[str, Any] = answer.json()
        if job.get("state") in ("succeeded", "failed", "cancelled"):
            return job
        await asyncio.sleep(POLL_S)
    return None


async def burst(
    kind: str, base_url: str, users: list[SimUser], emulator: Emulator, pid: int
) -> Burst:
    """Each user edits a policy; then all press Sync to sheet at once."""
    result = Burst(len(users))
    clients = [user_client(base_url, user) for user in users]
    edits = Samples()
    try:
        await asyncio.gather(
            *(edit_one(c, u, edits) for c, u in zip(clients, users, strict=True))
        )
        before = await asyncio.to_thread(emulator.calls)
        cpu_before = cpu_seconds(pid)
        deadline = time.monotonic() + BURST_DEADLINE_S

        async def press(client: httpx.AsyncClient) -> None:
            started = time.perf_counter()
            answer = await client.post("/api/insurance/sync/to-sheet")
            seconds = time.perf_counter() - started
            result.enqueue_ms.append(seconds * 1000)
            if kind == NAIVE:
                if answer.status_code == 200:
                    result.wall_s.append(seconds)
                else:
                    result.errors += 1
                return
            if answer.status_code != 202:
                result.errors += 1
                return
            job = await wait_for_job(client, answer.json()["job_id"], deadline)
            wall = job_seconds(job) if job else None
            if job is None or job["state"] != "succeeded" or wall is None:
                result.errors += 1
            else:
                result.wall_s.append(wall)

        await asyncio.gather(*(press(c) for c in clients))
        result.server_cpu_s = cpu_seconds(pid) - cpu_before
        after = await asyncio.to_thread(emulator.calls)
        result.api_calls = after["total"] - before["total"]
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    return result


# -- mixed load ------------------------------------------------------------------


def find_job(status: dict[str, Any], job_id: int) -> dict[str, Any] | None:
    """The job in a status answer (running, queued or recent), if listed."""
    for group in ("running", "queued", "recent"):
        for job in status.get(group, []):
            if job.get("id") == job_id:
                found: dict[str, Any] = job
                return found
    return None


async def mixed_user(
    kind: str,
    client: httpx.AsyncClient,
    user: SimUser,
    mixed: Mixed,
    deadline: float,
) -> None:
    """Press Sync, poll and edit ~1/s until the sync is done, think, repeat."""
    rng = random.Random(user.username)
    hard_deadline = deadline + DRAIN_S
    samples = mixed.samples
    await asyncio.sleep(rng.uniform(0, 1.5))
    while time.monotonic() < deadline:
        started = time.perf_counter()
        answer = await timed(
            samples,
            SYNC,
            lambda: client.post("/api/insurance/sync/to-sheet"),
            lambda a: a.status_code == (200 if kind == NAIVE else 202),
        )
        job_id: int | None = None
        if answer is not None and kind == NAIVE and answer.status_code == 200:
            mixed.wall_s.append(time.perf_counter() - started)
        elif answer is not None and answer.status_code == 202:
            job_id = int(answer.json()["job_id"])
        rounds = 0
        while time.monotonic() < hard_deadline and (job_id is not None or rounds < 2):
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            status = await timed(
                samples,
                STATUS,
                lambda: client.get("/api/insurance/sync/status"),
                lambda a: a.status_code == 200,
            )
            if rng.random() < 0.5:
                await edit_one(client, user, samples)
            rounds += 1
            if job_id is None or status is None or status.status_code != 200:
                continue
            job = find_job(status.json(), job_id)
            if job is None:
                job = (await client.get(f"/api/insurance/sync/jobs/{job_id}")).json()
            if job.get("state") in ("succeeded", "failed", "cancelled"):
                wall = job_seconds(job)
                if job["state"] == "succeeded" and wall is not None:
                    mixed.wall_s.append(wall)
                else:
                    mixed.sync_failed += 1
                job_id = None
        if job_id is not None:
            mixed.unfinished += 1
        await asyncio.sleep(rng.uniform(1.0, 3.0))


async def floor_probe(base_url: str, samples: Samples, deadline: float) -> None:
    """The least any request costs under this load: ``/healthz`` takes the
    same path through the server as every request (middleware, a threadpool
    thread) but reads nothing, so its latency is the floor beneath the
    others."""
    async with httpx.AsyncClient(base_url=base_url) as client:
        while time.monotonic() < deadline:
            await timed(
                samples,
                FLOOR,
                lambda: client.get("/healthz"),
                lambda a: a.status_code == 200,
            )
            await asyncio.sleep(FLOOR_EVERY_S)


async def mixed_load(
    kind: str,
    base_url: str,
    users: list[SimUser],
    seconds: float,
    emulator: Emulator,
    pid: int,
) -> Mixed:
    """All users at once for ``seconds`` (then their last syncs may finish)."""
    mixed = Mixed(seconds)
    clients = [user_client(base_url, user) for user in users]
    before = await asyncio.to_thread(emulator.calls)
    cpu_before = cpu_seconds(pid)
    deadline = time.monotonic() + seconds
    try:
        await asyncio.gather(
            floor_probe(base_url, mixed.samples, deadline),
            *(
                mixed_user(kind, c, u, mixed, deadline)
                for c, u in zip(clients, users, strict=True)
            ),
        )
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    mixed.server_cpu_s = cpu_seconds(pid) - cpu_before
    after = await asyncio.to_thread(emulator.calls)
    mixed.api_calls = after["total"] - before["total"]
    return mixed


# -- running a configuration -----------------------------------------------------


def run_config(
    config: Config,
    emulator: Emulator,
    work: Path,
    args: argparse.Namespace,
) -> Result:
    """Seed, start the server, run the bursts and the mixed load, stop."""
    name = f"{config.kind}-{config.database}-{config.concurrency}-{config.nice}"
    data_dir = work / name
    if config.database == POSTGRES:
        with postgres_database(args.pg_url, name.replace("-", "_")) as url:
            return run_server(config, emulator, work, data_dir, url, args)
    return run_server(config, emulator, work, data_dir, sqlite_url(data_dir), args)


def run_server(
    config: Config,
    emulator: Emulator,
    work: Path,
    data_dir: Path,
    database_url: str,
    args: argparse.Namespace,
) -> Result:
    """Seed the database, start the server, run the bursts and the mixed load."""
    result = Result(config)
    started = time.monotonic()
    users = prepare(
        data_dir,
        database_url,
        emulator,
        users=args.users,
        customers=args.customers,
        policies=args.policies,
    )
    # Seeding left a large heap here; set it aside so that this process's
    # full garbage collections (measured: up to 260 ms) do not pause the
    # simulated users and add to every latency they record.
    gc.collect()
    gc.freeze()
    port = free_port()
    env = clean_env(
        app_settings(
            data_dir, database_url, emulator.base_url, port, config.concurrency
        )
        | {"SHEETBRIDGE_WORKER_NICE": str(config.nice)}
    )
    if config.kind == SB:
        command = [str(Path(sys.executable).parent / "sheetbridge"), "serve"]
    else:
        command = [sys.executable, str(Path(__file__).parent / "naive_baseline.py")]
        command.append("--serve")
    base_url = f"http://127.0.0.1:{port}"
    log = work / f"{data_dir.name}.log"
    with process(command, env, f"{base_url}/healthz", log) as server:
        print(
            f"[{config.label}] ready after {time.monotonic() - started:.0f} s "
            f"(load average {load_average()})",
            flush=True,
        )
        for count in args.bursts:
            count = min(count, len(users))
            repeats = 3 if count == 1 else 1
            for _ in range(repeats):
                one = asyncio.run(
                    burst(config.kind, base_url, users[:count], emulator, server.pid)
                )
                result.bursts.setdefault(count, []).append(one)
            print(f"[{config.label}] burst of {count} done", flush=True)
        result.mixed = asyncio.run(
            mixed_load(config.kind, base_url, users, args.seconds, emulator, server.pid)
        )
        print(
            f"[{config.label}] mixed load done (load average {load_average()})",
            flush=True,
        )
    return result


# -- printing --------------------------------------------------------------------


def fmt(value: float, digits: int = 1) -> str:
    """A number, or '-' for NaN."""
    return "-" if value != value else f"{value:.{digits}f}"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """A plain text table."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print(
        " | ".join(
            cell.ljust(width) for cell, width in zip(header, widths, strict=True)
        )
    )
    print("-+-".join("-" * width for width in widths))
    for row in rows:
        print(
            " | ".join(
                cell.ljust(width) for cell, width in zip(row, widths, strict=True)
            )
        )


def per_sync_ms(cpu_s: float, walls: list[float]) -> str:
    """Server CPU per finished sync, in ms."""
    return f"{cpu_s / len(walls) * 1000:.0f}" if walls else "-"


def median_burst(bursts: list[Burst]) -> Burst:
    """The repeat with the median slowest sync."""
    ordered = sorted(bursts, key=lambda b: b.slowest_s)
    return ordered[len(ordered) // 2]


def print_bursts(results: list[Result]) -> None:
    """Sync wall time for N users at once, per configuration."""
    print("\nN users press 'Sync to sheet' at the same moment (each edited 1 policy)")
    print(
        "sync wall = enqueue -> finished (Sheetbridge: job timestamps; naive: the "
        "blocking request). 1-user rows: median of 3 runs."
    )
    rows = []
    for result in results:
        one = median_burst(result.bursts.get(1, [Burst(1)])).slowest_s
        for count, bursts in sorted(result.bursts.items()):
            b = median_burst(bursts)
            rows.append(
                [
                    result.config.label,
                    str(count),
                    f"{fmt(percentile(b.enqueue_ms, 0.5))} / "
                    f"{fmt(percentile(b.enqueue_ms, 0.99))}",
                    f"{fmt(percentile(b.wall_s, 0.5), 2)} / {fmt(b.slowest_s, 2)}",
                    f"{len(b.wall_s)}/{count}",
                    str(b.errors),
                    fmt(b.slowest_s / one, 2) if b.wall_s else "-",
                    str(b.api_calls),
                    f"{b.server_cpu_s:.1f} ({per_sync_ms(b.server_cpu_s, b.wall_s)})",
                ]
            )
    print_table(
        [
            "server",
            "users",
            "sync request ms p50/p99",
            "sync wall s p50/max",
            "synced",
            "errors",
            "max / 1 user",
            "API calls",
            "server CPU s (ms/sync)",
        ],
        rows,
    )


def print_mixed(results: list[Result], users: int) -> None:
    """Latencies under the mixed load."""
    rows = []
    for result in results:
        mixed = result.mixed
        if mixed is None:
            continue
        samples = mixed.samples
        line = [result.config.label]
        for action in (SYNC, EDIT, STATUS, FLOOR):
            ms = samples.ms.get(action, [])
            inside = samples.server_ms.get(action, [])
            line.append(
                f"{len(ms)} | {fmt(percentile(ms, 0.5))} / "
                f"{fmt(percentile(ms, 0.99))} ({fmt(percentile(inside, 0.5))} / "
                f"{fmt(percentile(inside, 0.99))}) | {samples.errors.get(action, 0)}"
            )
        line.append(
            f"{len(mixed.wall_s)} | {fmt(percentile(mixed.wall_s, 0.5), 2)} / "
            f"{fmt(percentile(mixed.wall_s, 0.99), 2)} | "
            f"{mixed.sync_failed + mixed.unfinished}"
        )
        line.append(str(mixed.api_calls))
        line.append(f"{mixed.server_cpu_s:.1f}")
        rows.append(line)
    seconds = results[0].mixed.seconds if results[0].mixed else 0.0
    print(
        f"\nMixed load: {users} users for {seconds:.0f} s (then up to "
        f"{DRAIN_S:.0f} s for their last syncs); cells: count | p50 / p99 ms "
        "(inside the server, from its Server-Timing header: p50 / p99) | errors"
    )
    print_table(
        [
            "server",
            SYNC,
            EDIT,
            STATUS,
            FLOOR,
            "sync wall s: done | p50 / p99 | failed",
            "API calls",
            "server CPU s",
        ],
        rows,
    )


def print_before_after(results: list[Result]) -> None:
    """The request's table, measured."""
    naive = next((r for r in results if r.config.kind == NAIVE), None)
    after = next(
        (r for r in results if r.config.kind == SB and r.config.concurrency >= 10), None
    )
    print("\nThe request's before/after table, measured (300 ms per API call):")
    rows = [["request claimed (before)", "30 s", "1st waits, 2nd error", "9 errors"]]
    rows.append(["request claimed (after)", "30 s", "both ~30 s", "all ~30 s"])
    for label, result in (
        ("measured before: naive", naive),
        ("measured after: Sheetbridge", after),
    ):
        if result is None:
            continue
        cells = [f"{label} ({result.config.label})"]
        for count in (1, 2, 10):
            bursts = result.bursts.get(count)
            if not bursts:
                cells.append("-")
                continue
            b = median_burst(bursts)
            cells.append(
                f"{fmt(b.slowest_s, 2)} s, {len(b.wall_s)} synced, {b.errors} errors; "
                f"request {fmt(percentile(b.enqueue_ms, 0.99), 0)} ms"
            )
        rows.append(cells)
    print_table(["", "1 user", "2 users", "10 users"], rows)


def print_targets(results: list[Result]) -> None:
    """The issue's targets beside the measured figures."""
    print("\nTargets:")
    for result in results:
        if result.config.kind != SB:
            continue
        mixed = result.mixed
        enqueues = mixed.samples.ms.get(SYNC, []) if mixed else []
        floor = mixed.samples.ms.get(FLOOR, []) if mixed else []
        over = sum(1 for ms in enqueues if ms > ENQUEUE_TARGET_MS)
        one = median_burst(result.bursts.get(1, [Burst(1)])).slowest_s
        ten = median_burst(result.bursts.get(10, [Burst(10)])).slowest_s
        print(
            f"  {result.config.label}: enqueue p99 under mixed load "
            f"{fmt(percentile(enqueues, 0.99))} ms (target <= "
            f"{ENQUEUE_TARGET_MS:.0f} ms), {over} of {len(enqueues)} over "
            f"{ENQUEUE_TARGET_MS:.0f} ms; the floor (GET /healthz) p99 "
            f"{fmt(percentile(floor, 0.99))} ms; 10 users' syncs {fmt(ten, 2)} s "
            f"vs 1 user {fmt(one, 2)} s = {fmt(ten / one, 2)}x (target <= 1.2x)"
        )


def main() -> None:
    """Run every configuration and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0, help="mixed load")
    parser.add_argument("--policies", type=int, default=50)
    parser.add_argument("--customers", type=int, default=20)
    parser.add_argument("--bursts", type=int, nargs="*", default=[1, 2, 10, 100])
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="*",
        default=[DEFAULT_CONCURRENCY],
        help="SHEETBRIDGE_WORKER_CONCURRENCY values to run",
    )
    parser.add_argument(
        "--worker-nice",
        type=int,
        nargs="*",
        default=[DEFAULT_NICE],
        help="SHEETBRIDGE_WORKER_NICE values to run (0 = the web's priority)",
    )
    parser.add_argument(
        "--databases",
        nargs="*",
        choices=[SQLITE, POSTGRES],
        default=[SQLITE, POSTGRES],
        help="databases to run Sheetbridge on (the naive baseline uses SQLite)",
    )
    parser.add_argument(
        "--pg-url",
        default="postgresql+psycopg://root@127.0.0.1:5432/postgres",
        help="a PostgreSQL server to create a scratch database on",
    )
    parser.add_argument("--no-naive", action="store_true")
    args = parser.parse_args()
    configs = [
        Config(
            f"Sheetbridge, {database}, {n} workers"
            + (" (default)" if n == DEFAULT_CONCURRENCY else "")
            + (f", nice {nice}" if len(args.worker_nice) > 1 else ""),
            SB,
            n,
            database,
            nice,
        )
        for database in args.databases
        for n in args.concurrency
        for nice in args.worker_nice
    ]
    if not args.no_naive:
        configs.append(Config("naive baseline (global lock)", NAIVE, 1))
    started = time.monotonic()
    print(
        f"{args.users} users, {args.policies} policies + {args.customers} customers "
        f"each; emulator 300 ms per call, quotas off; load average {load_average()}"
    )
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="sheetbridge-bench-load-") as folder:
        work = Path(folder)
        with emulator_process(300, work) as emulator:
            for config in configs:
                results.append(run_config(config, emulator, work, args))
    print_bursts(results)
    print_mixed(results, args.users)
    print_before_after(results)
    print_targets(results)
    print(
        f"\ntotal {time.monotonic() - started:.0f} s, load average now "
        f"{load_average()} (2 cores; other work on the machine inflates latencies)"
    )


if __name__ == "__main__":
    main()
