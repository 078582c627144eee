"""``sheetbridge serve | worker | sync | users | db | demo``."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from pydantic_core import to_json
from sqlalchemy import select
from sqlalchemy.exc import ArgumentError

from sheetbridge.config import Settings, get_settings, setting_problems
from sheetbridge.db import (
    DATABASE_UNAVAILABLE_ERRORS,
    MigrationRefused,
    is_sqlite,
    unavailable_reason,
)
from sheetbridge.heap import settle_after_startup
from sheetbridge.insurance.demo import has_any_user, seed_demo
from sheetbridge.insurance.models import User
from sheetbridge.insurance.sync_jobs import FROM_SHEET, TO_SHEET
from sheetbridge.logs import configure_logging
from sheetbridge.queue.errors import LeaseLost
from sheetbridge.queue.relay import EventSender, receive_events
from sheetbridge.queue.worker import WorkerPool
from sheetbridge.web.app import build_runtime, create_app, worker_pool
from sheetbridge.web.deps import Runtime
from sheetbridge.web.security import UserError, add_user, hash_password, issue_token
from sheetbridge.web.sync_api import job_views

log = logging.getLogger(__name__)
app = typer.Typer(help="Sheetbridge: the agency's book, in sync with its sheets.")
db_app = typer.Typer(help="Database schema.")
users_app = typer.Typer(help="Users and API tokens.")
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")


def _settings() -> Settings:
    """The settings, or one line on stderr for each bad one."""
    try:
        return get_settings()
    except ValidationError as exc:
        _refuse("\n".join(setting_problems(exc)))


def _runtime(settings: Settings | None = None) -> Runtime:
    """The app's parts, with the database schema brought up to date; a
    database that cannot be reached is one line on stderr, not a traceback."""
    settings = settings or _settings()
    configure_logging(settings.log_level)
    try:
        runtime = build_runtime(settings)
        runtime.db.upgrade()
    except DATABASE_UNAVAILABLE_ERRORS as exc:
        reason = unavailable_reason(exc)
        _refuse(f"cannot use the database {_redacted(settings)}: {reason}")
    except (ArgumentError, ModuleNotFoundError) as exc:
        _refuse(
            f"cannot use the database {_redacted(settings)}: {unavailable_reason(exc)}"
            " (Sheetbridge uses sqlite:///<file> or postgresql+psycopg://…)"
        )
    except MigrationRefused as exc:
        _refuse(f"cannot upgrade the database {_redacted(settings)}: {exc}")
    except OSError as exc:
        # A folder it must make is a file, or may not be written.
        where = Path(exc.filename) if exc.filename else None
        if where is None or where.is_relative_to(settings.data_dir):
            _refuse(f"cannot use the data folder {settings.data_dir}: {exc.strerror}")
        _refuse(f"cannot use {where}: {exc.strerror}")
    return runtime


def _refuse(message: str) -> NoReturn:
    """End the command with one line on stderr, not a traceback."""
    typer.echo(message, err=True)
    raise typer.Exit(1)


def _seed_if_empty(runtime: Runtime) -> list[tuple[str, str, str]]:
    with runtime.db.session() as session:
        if has_any_user(session):
            return []
        return seed_demo(session, password_hasher=hash_password)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port to listen on")
    ] = None,
    workers: Annotated[bool, typer.Option(help="Run sync workers in-process")] = True,
) -> None:
    """Upgrade the database, seed the demo agency if empty, and serve the app."""
    from sheetbridge.web.server import run_server

    settings = _settings()
    host = host or settings.host
    port = port or settings.port
    _can_listen_on(host, port)
    runtime = _runtime(settings)
    logins = _seed_if_empty(runtime) if settings.demo else []
    typer.echo(f"Sheetbridge is at http://{_url_host(host)}:{port}/")
    typer.echo(f"Database: {_redacted(settings)}; workbooks in {settings.workbook_dir}")
    for username, password, role in logins:
        typer.echo(f"  demo {role:<5} {username} / {password}")
    child = WorkerProcess(runtime) if workers and settings.worker_process else None
    web_app = create_app(runtime, workers=workers and child is None)
    settle_after_startup()
    # uvicorn stops on SIGTERM, then raises it again once it has stopped:
    # as an exit here, not the default kill, so that the worker process is
    # stopped and waited for (its running syncs finish) before serve ends.
    signal.signal(signal.SIGTERM, _exit_after_stopping)
    try:
        run_server(
            web_app, host, port, settings.log_level, settings.forwarded_allow_ips
        )
    finally:
        if child is not None:
            child.stop()
        runtime.queue.close()
        runtime.db.dispose()


def _can_listen_on(host: str, port: int) -> None:
    """Refuse, in one line, an address serve could not listen on: a name that
    is none, an address not this machine's, a port in use."""
    where = f"{_url_host(host)}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except UnicodeError:  # a name no resolver takes ("not..a..host")
        _refuse(
            f"cannot listen on {where} (SHEETBRIDGE_HOST or --host): not a host "
            "name or address"
        )
    except OSError as exc:
        setting = (
            "SHEETBRIDGE_PORT or --port"
            if exc.errno == errno.EADDRINUSE
            else "SHEETBRIDGE_HOST or --host"
        )
        _refuse(f"cannot listen on {where} ({setting}): {exc.strerror or exc}")


def _url_host(host: str) -> str:
    """A host as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _exit_after_stopping(signum: int, frame: object) -> None:
    raise SystemExit(0)


@app.command()
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1, max=256, help="Jobs at once [default: worker_concurrency setting]"
        ),
    ] = None,
    until_empty: Annotated[
        bool, typer.Option("--until-empty", help="Stop when nothing is runnable")
    ] = False,
    drain_timeout_s: Annotated[
        float,
        typer.Option(min=0, help="On SIGTERM, how long running jobs may finish"),
    ] = 30.0,
    nice: Annotated[
        int,
        typer.Option(
            min=0,
            max=19,
            help="Lower this process's CPU priority by this much (beside a web server)",
        ),
    ] = 0,
    wake_on_stdin: Annotated[
        bool,
        typer.Option(
            "--wake-on-stdin",
            hidden=True,
            help="Each line on stdin wakes idle workers; end of input drains",
        ),
    ] = False,
    events_fd: Annotated[
        int | None,
        typer.Option(
            "--events-fd",
            hidden=True,
            help="Write every job transition to this pipe, one JSON line each",
        ),
    ] = None,
) -> None:
    """Run sync workers without the web server (scale-out on PostgreSQL).

    SIGTERM or SIGINT drains: no new job is claimed, running jobs get
    ``--drain-timeout-s`` to finish, and the rest are handed back to the queue
    at once (another worker retries them; none is lost).
    """
    os.nice(nice)
    runtime = _runtime()
    if until_empty:
        pool = WorkerPool(runtime.queue, runtime.sync.handlers)
        typer.echo(f"ran {pool.run_until_empty()} jobs")
        return
    concurrency = concurrency or runtime.settings.worker_concurrency
    pool = worker_pool(runtime, concurrency)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if wake_on_stdin:
        threading.Thread(
            target=_wake_on_lines, args=(runtime, stop), daemon=True
        ).start()
    sender = None
    if events_fd is not None:
        sender = EventSender(runtime.queue, os.fdopen(events_fd, "wb"))
    settle_after_startup()
    pool.start()
    typer.echo(f"worker {pool.name} running {concurrency} slots; SIGTERM drains")
    stop.wait()
    typer.echo(f"draining for up to {drain_timeout_s:g} s")
    released = pool.stop(drain_timeout_s)
    if released:
        typer.echo(f"handed back unfinished jobs {released}")
    if sender is not None:
        sender.close()
    runtime.queue.close()


def _wake_on_lines(runtime: Runtime, stop: threading.Event) -> None:
    """``serve`` writes a line here whenever it queues a job.

    Read from the descriptor, not through ``sys.stdin``: a daemon thread
    waiting inside the buffered reader holds its lock, and the interpreter
    aborts at exit when it cannot take that lock to close stdin.
    """
    fd = sys.stdin.fileno()
    while chunk := os.read(fd, 4096):
        for _ in range(chunk.count(b"\n")):
            runtime.queue.nudge()
    stop.set()  # the server went away: drain and exit


@app.command()
def sync(
    username: str,
    direction: Annotated[str, typer.Argument(help="to-sheet or from-sheet")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the job as the API shows it")
    ] = False,
) -> None:
    """Run one sync for a user now, in this process, and print its result."""
    kinds = {"to-sheet": TO_SHEET, "from-sheet": FROM_SHEET}
    if direction not in kinds:
        raise typer.BadParameter("direction must be to-sheet or from-sheet")
    runtime = _runtime()
    with runtime.db.read_session() as session:
        user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise typer.BadParameter(f"no user {username!r}")
    queued = runtime.sync.enqueue(user, kinds[direction])
    WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty()
    job = runtime.queue.get(queued.job_id)
    while job.state == "running":  # taken by a worker elsewhere: its result
        time.sleep(0.2)
        job = runtime.queue.get(queued.job_id)
    if as_json:
        (view,) = job_views(runtime, [job])
        typer.echo(to_json(view, indent=2).decode())
    else:
        waiting = runtime.queue.waiting_for(job) if job.state == "queued" else None
        for line in _told(job.id, job.state, job.result, job.error, waiting):
            typer.echo(line)
    if job.state != "succeeded":
        raise typer.Exit(1)


# How a sync's counts read, as the dashboard words them.
_COUNT_WORDS = (
    ("written_cells", "cell written", "cells written"),
    ("appended", "row appended", "rows appended"),
    ("updated_rows", "row updated in the sheet", "rows updated in the sheet"),
    ("created", "record created", "records created"),
    ("updated", "record updated", "records updated"),
    ("deleted", "row deleted", "rows deleted"),
    ("skipped", "row skipped", "rows skipped"),
    ("conflicts", "conflict", "conflicts"),
    ("errors", "error", "errors"),
    (
        "pending_import",
        "sheet edit waiting for import",
        "sheet edits waiting for import",
    ),
    (
        "pending_export",
        "app change waiting for export",
        "app changes waiting for export",
    ),
    ("deleted_in_sheet", "row deleted in the sheet", "rows deleted in the sheet"),
    ("deleted_in_app", "record deleted in the app", "records deleted in the app"),
    ("readonly", "read-only column edit ignored", "read-only column edits ignored"),
)


def _told(
    job_id: int,
    state: str,
    result: dict[str, Any] | None,
    error: str | None,
    waiting: str | None = None,
) -> list[str]:
    """A sync in words: what it did, then each issue it listed; or, still
    queued (behind another, or to be tried again), what it waits for."""
    summary = (result or {}).get("summary", {})
    counts = [
        f"{summary[key]:,} {one if summary[key] == 1 else many}"
        for key, one, many in _COUNT_WORDS
        if summary.get(key)
    ]
    done = ", ".join(counts) or ("no changes needed" if result else "")
    if waiting:
        done = f"waiting for {waiting}; the server's workers run it"
    lines = [f"sync #{job_id} {state}" + (f": {done}" if done else "")]
    for tab, data in (result or {}).get("tabs", {}).items():
        for issue in data.get("issues", []):
            place = tab if issue.get("row") is None else f"{tab} row {issue['row']}"
            column = f", {issue['column']}" if issue.get("column") else ""
            lines.append(f"  {place}{column}: {issue['reason']}")
    if error:
        lines.append(f"  {error}")
    return lines


@app.command()
def emulator(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1")] = 8090,
    latency_ms: Annotated[float, typer.Option(help="Added to every call")] = 0.0,
    quota_per_user: Annotated[
        int | None, typer.Option(help="Reads and writes per minute per user")
    ] = None,
    quota_per_project: Annotated[
        int | None, typer.Option(help="Reads and writes per minute per project")
    ] = None,
    error_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Share of calls answered 500/503")
    ] = 0.0,
    token: Annotated[str | None, typer.Option(help="Required bearer token")] = None,
) -> None:
    """Run the local Google Sheets API emulator (for tests and demos)."""
    from sheetbridge.testing.emulator import Knobs, serve

    typer.echo(f"Sheets API emulator at http://127.0.0.1:{port}/")
    serve(
        port,
        knobs=Knobs(
            latency_ms=latency_ms,
            read_quota_per_user=quota_per_user,
            write_quota_per_user=quota_per_user,
            read_quota_per_project=quota_per_project,
            write_quota_per_project=quota_per_project,
            error_rate=error_rate,
            required_token=token,
        ),
    )


@app.command()
def demo() -> None:
    """Seed the demo agency into an empty database."""
    runtime = _runtime()
    logins = _seed_if_empty(runtime)
    if not logins:
        typer.echo("the database already has users; nothing seeded")
    for username, password, role in logins:
        typer.echo(f"{role:<5} {username} / {password}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration."""
    runtime = _runtime()
    typer.echo(f"database at the newest schema: {_redacted(runtime.settings)}")


@users_app.command("add")
def users_add(
    username: str,
    role: Annotated[str, typer.Option(help="admin or agent")] = "agent",
    full_name: Annotated[str, typer.Option()] = "",
    password: Annotated[
        str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)
    ] = "",
) -> None:
    """Add a user who signs in with a password."""
    runtime = _runtime()
    try:
        with runtime.db.session() as session:
            add_user(session, username, password, role=role, full_name=full_name)
    except UserError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"added {role} {username}")


@users_app.command("token")
def users_token(
    username: str, name: Annotated[str, typer.Option(help="What it is for")] = ""
) -> None:
    """Issue an API token for scripts (shown once)."""
    runtime = _runtime()
    with runtime.db.session() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise typer.BadParameter(f"no user {username!r}")
        token = issue_token(session, user, name)
    typer.echo(token)


WATCH_INTERVAL_S = 0.5


class WorkerProcess:
    """``sheetbridge worker`` as a child of ``serve``.

    Sync jobs spend CPU (parsing, comparing, building workbooks); in their own
    process they do not compete with web requests for one interpreter lock.
    Every job queued here is announced on the child's stdin, so it starts at
    once rather than at the next poll. On SQLite the child sends its job
    transitions back over a pipe, for the dashboard's live stream (PostgreSQL
    carries them to every process already). A child that dies is started again.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._process = self._spawn()
        runtime.queue.subscribe(self._on_event)
        threading.Thread(target=self._watch, daemon=True).start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        concurrency = str(self.runtime.settings.worker_concurrency)
        command = [sys.executable, "-m", "sheetbridge", "worker", "--wake-on-stdin"]
        command += ["--concurrency", concurrency]
        command += ["--nice", str(self.runtime.settings.worker_nice)]
        if not is_sqlite(self.runtime.db.engine):
            return subprocess.Popen(command, stdin=subprocess.PIPE)
        events, child_end = os.pipe()
        try:
            child = subprocess.Popen(
                [*command, "--events-fd", str(child_end)],
                stdin=subprocess.PIPE,
                pass_fds=(child_end,),
            )
        except BaseException:
            os.close(events)
            raise
        finally:
            os.close(child_end)
        threading.Thread(
            target=receive_events,
            args=(self.runtime.queue, os.fdopen(events, "rb")),
            name="worker-events",
            daemon=True,
        ).start()
        return child

    def _on_event(self, event: str, _job: object) -> None:
        if event != "queued":
            return
        with self._lock:
            stdin = self._process.stdin
            try:
                if stdin is not None:
                    stdin.write(b"\n")
                    stdin.flush()
            except (BrokenPipeError, ValueError):
                pass  # restarting; the new child finds the job on its first look

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_INTERVAL_S):
            if self._process.poll() is not None:
                self._hand_back_jobs_of(self._process.pid)
                with self._lock:
                    if not self._stopping.is_set():
                        self._process = self._spawn()

    def _hand_back_jobs_of(self, pid: int) -> None:
        """Queue again at once the jobs a dead child was running, rather than
        leave them to wait out their leases (the child's workers are named
        ``<host>-<pid>-<n>``)."""
        prefix = f"{socket.gethostname()}-{pid}-"
        queue = self.runtime.queue
        try:
            running = queue.status(None, recent=0)["running"]
            for job in running:
                if (job.lease_owner or "").startswith(prefix):
                    with contextlib.suppress(LeaseLost):
                        queue.release(
                            job.id, job.epoch, "the worker process died", crashed=True
                        )
        except Exception:
            log.exception("worker.hand_back_failed", extra={"action": "worker"})

    def stop(self, timeout_s: float = 30.0) -> None:
        """Close the child's stdin, so it drains and exits; kill it if it hangs."""
        self._stopping.set()
        with self._lock:
            if self._process.stdin is not None:
                self._process.stdin.close()
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()


def _redacted(settings: Settings) -> str:
    url = settings.effective_database_url
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


logging.captureWarnings(True)
