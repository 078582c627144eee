"""Shared parts of the load benchmarks: processes, seeding, simulated users.

Everything listens on 127.0.0.1 only. Three kinds of process take part:

- the Sheets API emulator, in its own process (``python bench/loadkit.py
  emulator --port N --latency-ms 300``) so its work never shares a GIL with
  the app or the simulated users; a small extra route ``/_bench/...`` creates
  spreadsheets without API latency and reports how many API calls it served;
- the app under test (``sheetbridge serve`` or the naive baseline), started
  as a subprocess with ``SHEETBRIDGE_*`` settings in its environment;
- this process, which seeds the database and runs the users with asyncio and
  httpx. Every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from seedbook import add_agents, add_book
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from sheetbridge.config import Settings
from sheetbridge.insurance.models import User
from sheetbridge.insurance.sync_jobs import GOOGLE, TO_SHEET
from sheetbridge.queue.worker import WorkerPool
from sheetbridge.web.app import build_runtime
from sheetbridge.web.security import issue_token

HERE = Path(__file__).resolve().parent
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_S = 120.0
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment minus app settings, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SHEETBRIDGE_") and key != "DATABASE_URL"
    }
    env.update(extra)
    return env


def percentile(samples: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (``share`` in 0..1); NaN for no samples."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), math.ceil(share * len(ordered))))
    return ordered[rank - 1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    """The machine's 1-minute load average, to judge how noisy figures are."""
    return f"{os.getloadavg()[0]:.1f}"


# -- processes -------------------------------------------------------------------


def wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll ``url`` until it answers 200 (bounded by START_TIMEOUT_S)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited early: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {START_TIMEOUT_S:.0f} s")


@contextmanager
def process(
    command: list[str], env: dict[str, str], ready_url: str, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` until the block ends; then SIGTERM it (SIGKILL if stuck)."""
    with log.open("wb") as out:
        child = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent
        )
        try:
            wait_until_up(ready_url, child, log)
            yield child
        finally:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(STOP_TIMEOUT_S)


@dataclass
class Emulator:
    """The emulator process's address and its bench-only routes."""

    base_url: str

    def create(self, count: int) -> list[str]:
        """IDs of ``count`` new, empty spreadsheets (no API latency)."""
        answer = httpx.post(
            f"{self.base_url}/_bench/create", params={"count": count}, timeout=30
        )
        answer.raise_for_status()
        ids: list[str] = answer.json()["ids"]
        return ids

    def calls(self) -> dict[str, int]:
        """API calls served so far: ``total``, ``reads``, ``writes``, ``errors``."""
        answer = httpx.get(f"{self.base_url}/_bench/stats", timeout=30)
        answer.raise_for_status()
        counts: dict[str, int] = answer.json()
        return counts


@contextmanager
def emulator_process(latency_ms: float, folder: Path) -> Iterator[Emulator]:
    """The Sheets API emulator in a subprocess, every call delayed by latency."""
    port = free_port()
    command = [
        sys.executable,
        str(HERE / "loadkit.py"),
        "emulator",
        "--port",
        str(port),
        "--latency-ms",
        str(latency_ms),
    ]
    base_url = f"http://127.0.0.1:{port}"
    with process(
        command, clean_env({}), f"{base_url}/_bench/stats", folder / "emulator.log"
    ):
        yield Emulator(base_url)


def serve_emulator(port: int, latency_ms: float) -> None:
    """The emulator app plus ``/_bench/create`` and ``/_bench/stats``."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    from sheetbridge.testing.emulator import EmulatorState, Knobs, build_app

    # Quota knobs stay off (None): the API latency is what this bench measures.
    state = EmulatorState(knobs=Knobs(latency_ms=latency_ms))

    async def create(request: Request) -> JSONResponse:
        count = min(int(request.query_params.get("count", "1")), 1000)
        ids = [state.create(f"bench {n}").spreadsheet_id for n in range(count)]
        return JSONResponse({"ids": ids})

    async def stats(request: Request) -> JSONResponse:
        log = list(state.log)
        reads = sum(1 for entry in log if entry.method == "GET")
        errors = sum(1 for entry in log if entry.status >= 400)
        return JSONResponse(
            {
                "total": len(log),
                "reads": reads,
                "writes": len(log) - reads,
                "errors": errors,
            }
        )

    app = Starlette(
        routes=[
            Route("/_bench/create", create, methods=["POST"]),
            Route("/_bench/stats", stats, methods=["GET"]),
            Mount("", app=build_app(state)),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# -- seeding ---------------------------------------------------------------------


@dataclass
class SimUser:
    """One simulated user: API token and the policies they may edit."""

    username: str
    token: str
    versions: dict[int, int] = field(default_factory=dict)


def sqlite_url(data_dir: Path) -> str:
    """The app's default database in ``data_dir``."""
    return f"sqlite:///{(data_dir / 'sheetbridge.db').resolve()}"


@contextmanager
def postgres_database(server_url: str, label: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server of ``server_url``,
    dropped afterwards; yields its URL."""
    name = f"sheetbridge_bench_{label}_{os.getpid()}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield (
            make_url(server_url)
            .set(database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def app_settings(
    data_dir: Path, database_url: str, emulator_url: str, port: int, concurrency: int
) -> dict[str, str]:
    """The app's environment: the database, Google on the emulator, the app's
    own quota limiter off (0 = no limit), no demo data."""
    return {
        "SHEETBRIDGE_DATA_DIR": str(data_dir),
        "SHEETBRIDGE_DATABASE_URL": database_url,
        "SHEETBRIDGE_DEMO": "false",
        "SHEETBRIDGE_HOST": "127.0.0.1",
        "SHEETBRIDGE_PORT": str(port),
        "SHEETBRIDGE_WORKER_CONCURRENCY": str(concurrency),
        "SHEETBRIDGE_GOOGLE_SHEETS_BASE_URL": emulator_url,
        "SHEETBRIDGE_SHEETS_READS_PER_MINUTE_PROJECT": "0",
        "SHEETBRIDGE_SHEETS_WRITES_PER_MINUTE_PROJECT": "0",
        "SHEETBRIDGE_SHEETS_READS_PER_MINUTE_USER": "0",
        "SHEETBRIDGE_SHEETS_WRITES_PER_MINUTE_USER": "0",
        "SHEETBRIDGE_SECRET_KEY": "bench-only-secret-key",
        "SHEETBRIDGE_LOG_LEVEL": "WARNING",
    }


def prepare(
    data_dir: Path,
    database_url: str,
    emulator: Emulator,
    *,
    users: int,
    customers: int,
    policies: int,
) -> list[SimUser]:
    """Seed ``users`` agents with a book each, point each at an own Google
    spreadsheet on the emulator, and sync every book there once (from here,
    before any server starts), so later syncs are the everyday kind."""
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        demo=False,
        google_sheets_base_url=emulator.base_url,
        sheets_reads_per_minute_project=0,
        sheets_writes_per_minute_project=0,
        sheets_reads_per_minute_user=0,
        sheets_writes_per_minute_user=0,
        log_level="WARNING",
    )
    runtime = build_runtime(settings)
    runtime.db.upgrade()
    names = [f"user{n:03d}" for n in range(users)]
    sims: list[SimUser] = []
    with runtime.db.session() as session:
        for agent_id, name in zip(add_agents(session, names), names, strict=True):
            book = add_book(
                session, agent_id, name, customers=customers, policies=policies
            )
            user = session.get(User, agent_id)
            assert user is not None
            sims.append(
                SimUser(
                    name, issue_token(session, user), dict.fromkeys(book.policy_ids, 1)
                )
            )
    with runtime.db.read_session() as session:
        rows = list(session.scalars(select(User).where(User.username.in_(names))))
    for user, sheet in zip(rows, emulator.create(len(rows)), strict=True):
        runtime.sync.update_target(user, backend=GOOGLE, spreadsheet_id=sheet)
    for user in rows:
        runtime.sync.enqueue(user, TO_SHEET)
    pool = WorkerPool(runtime.queue, runtime.sync.handlers, concurrency=25)
    pool.start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and (
        runtime.queue.status(None, recent=1)["queued"]
        or runtime.queue.status(None, recent=1)["running"]
    ):
        time.sleep(0.2)
    pool.stop(10)
    runtime.db.dispose()
    return sims


# -- simulated users -------------------------------------------------------------


@dataclass
class Samples:
    """Latencies in ms per action, with error counts.

    ``server_ms`` holds what the server itself says it spent (its
    ``Server-Timing`` header): the rest of ``ms`` is time on the wire, in the
    server's and this client's event loops, and waiting for a CPU.
    """

    ms: dict[str, list[float]] = field(default_factory=dict)
    server_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    codes: dict[str, dict[int, int]] = field(default_factory=dict)

    def add(
        self,
        action: str,
        seconds: float,
        status: int,
        ok: bool,
        server_ms: float | None = None,
    ) -> None:
        """Record one request."""
        self.ms.setdefault(action, []).append(seconds * 1000)
        if server_ms is not None:
            self.server_ms.setdefault(action, []).append(server_ms)
        codes = self.codes.setdefault(action, {})
        codes[status] = codes.get(status, 0) + 1
        if not ok:
            self.errors[action] = self.errors.get(action, 0) + 1


async def timed(
    samples: Samples,
    action: str,
    call: Callable[[], Awaitable[httpx.Response]],
    ok: Callable[[httpx.Response], bool],
) -> httpx.Response | None:
    """Send one request and record how long it took and whether it worked."""
    started = time.perf_counter()
    try:
        answer = await call()
    except httpx.HTTPError:
        samples.add(action, time.perf_counter() - started, 0, False)
        return None
    seconds = time.perf_counter() - started
    samples.add(action, seconds, answer.status_code, ok(answer), server_ms(answer))
    return answer


def server_ms(answer: httpx.Response) -> float | None:
    """The server's own time for an answer, from ``Server-Timing: app;dur=N``."""
    for metric in answer.headers.get("server-timing", "").split(","):
        name, _, duration = metric.strip().partition(";dur=")
        if name == "app" and duration:
            return float(duration)
    return None


async def edit_one(client: httpx.AsyncClient, user: SimUser, samples: Samples) -> None:
    """Change the premium of one of the user's policies (with its version)."""
    policy_id = random.choice(list(user.versions))
    body = {
        "version": user.versions[policy_id],
        "premium": f"{random.randint(200, 9000)}.{random.randint(0, 99):02d}",
    }
    answer = await timed(
        samples,
        "edit (PATCH policy)",
        lambda: client.patch(f"/api/policies/{policy_id}", json=body),
        lambda a: a.status_code == 200,
    )
    if answer is not None and answer.status_code == 200:
        user.versions[policy_id] = int(answer.json()["version"])
    elif answer is not None and answer.status_code == 409:
        current = answer.json().get("current") or {}
        if "version" in current:
            user.versions[policy_id] = int(current["version"])


def parse_time(text: str | None) -> datetime | None:
    """An ISO timestamp from the API, or None."""
    return datetime.fromisoformat(text) if text else None


def job_seconds(job: dict[str, Any]) -> float | None:
    """Server-side enqueue → finish time of a finished job."""
    enqueued, finished = (
        parse_time(job.get("enqueued_at")),
        parse_time(job.get("finished_at")),
    )
    if enqueued is None or finished is None:
        return None
    return (finished - enqueued).total_seconds()


def user_client(base_url: str, user: SimUser) -> httpx.AsyncClient:
    """An HTTP client signed in as ``user`` with its API token."""
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {user.token}"},
        timeout=REQUEST_TIMEOUT_S,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bench helper processes")
    commands = parser.add_subparsers(dest="command", required=True)
    emulator = commands.add_parser("emulator", help="serve the Sheets API emulator")
    emulator.add_argument("--port", type=int, required=True)
    emulator.add_argument("--latency-ms", type=float, default=300.0)
    arguments = parser.parse_args()
    serve_emulator(arguments.port, arguments.latency_ms)
