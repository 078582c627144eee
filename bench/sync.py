"""Sync benchmark (issue 5 item 12): big books to and from a sheet.

For 1,000 / 10,000 / 50,000 policies of one agent (plus a quarter as many
customers, both tabs sync), on the Google backend against the local Sheets
API emulator (127.0.0.1, latency 0) and on the xlsx workbook backend:

1. to-sheet into an empty spreadsheet / workbook,
2. the same to-sheet again with nothing changed,
3. from-sheet after 1 % of the policy rows had their premium edited in the
   sheet.

Each case runs as one sync job (``WorkerPool.run_until_empty``, the same code
the workers run) in a fresh subprocess, which reports the job's wall time, its
CPU time, and its peak memory: the peak resident set (``VmHWM``, what
``ru_maxrss`` reports) reset to the current RSS through ``/proc/self/
clear_refs`` just before the job, minus that RSS. So it is the high-water
mark of the job itself, C allocations (openpyxl's XML, SQLite) included,
without tracemalloc's slowdown, and not the ~60 MB transient peak of
importing the app. API calls are counted in the emulator's request log; the
emulator runs in this (parent) process, whose CPU time during the job is the
emulator's work. Figures are printed, never asserted::

    /work/venv/bin/python bench/sync.py [--sizes 1000 10000 50000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from seedbook import add_agents, add_book
from sqlalchemy import select

from sheetbridge.config import Settings
from sheetbridge.insurance.models import User
from sheetbridge.insurance.sync_jobs import FROM_SHEET, GOOGLE, TO_SHEET
from sheetbridge.queue.worker import WorkerPool
from sheetbridge.sheets.base import SheetBackend, TabChanges
from sheetbridge.sheets.xlsx import XlsxBackend
from sheetbridge.testing.emulator import EmulatorServer
from sheetbridge.testing.harness import GoogleHarness
from sheetbridge.web.app import build_runtime

AGENT = "bench-agent"
CUSTOMERS_PER_POLICY = 4  # one customer per four policies
EDIT_SHARE = 100  # every 100th policy row is edited: 1 %
CHILD_TIMEOUT_S = 240.0
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
TARGET_NOTES = {
    "to-sheet, empty": "10k: <= 4 calls, <= 2 s",
    "to-sheet, unchanged": "1 read (Google: get+batchGet=2), 0 writes",
    "from-sheet, 1 % edited": "10k rows, 100 edits: <= 1 s",
}


def settings_for(data_dir: Path, emulator_url: str) -> Settings:
    """The app's settings for one benchmark database (defaults otherwise)."""
    return Settings(
        data_dir=data_dir,
        database_url=f"sqlite:///{(data_dir / 'sheetbridge.db').resolve()}",
        demo=False,
        google_sheets_base_url=emulator_url,
        log_level="WARNING",
    )


def agent(runtime: Any) -> User:
    """The benchmark's one agent."""
    with runtime.db.read_session() as session:
        user: User = session.scalars(select(User).where(User.username == AGENT)).one()
    return user


# -- the child: one sync job, timed ---------------------------------------------


def rss_mb(field: str) -> float:
    """A ``Vm*`` figure of this process from /proc, in MB."""
    match = re.search(rf"^{field}:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def reset_peak_rss() -> bool:
    """Set this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def run_child(data_dir: Path, kind: str, emulator_url: str) -> None:
    """Run one sync job of the agent and print its figures as one JSON line."""
    runtime = build_runtime(settings_for(data_dir, emulator_url))
    queued = runtime.sync.enqueue(agent(runtime), kind)
    pool = WorkerPool(runtime.queue, runtime.sync.handlers)
    gc.collect()
    # Importing the app peaks ~60 MB above what stays resident; forget that
    # peak so the figure is the job's own high-water mark.
    peak_reset = reset_peak_rss()
    rss_before = rss_mb("VmRSS")
    started, cpu_started = time.perf_counter(), time.process_time()
    pool.run_until_empty()
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    peak = rss_mb("VmHWM") if peak_reset else float("nan")
    job = runtime.queue.get(queued.job_id)
    summary = (job.result or {}).get("summary", {})
    print(
        json.dumps(
            {
                "state": job.state,
                "error": job.error,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "rss_before_mb": rss_before,
                "rss_delta_mb": peak - rss_before,
                "summary": summary,
            }
        )
    )
    runtime.db.dispose()


# -- the parent: prepare, run children, count calls ------------------------------


@dataclass
class Row:
    """One line of the result table."""

    backend: str
    policies: int
    case: str
    seconds: float | None
    cpu: str
    calls: str
    rss_delta_mb: float | None
    detail: str


def child_env() -> dict[str, str]:
    """This environment without settings that would point the app elsewhere."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SHEETBRIDGE_") and key != "DATABASE_URL"
    }


def measure(
    data_dir: Path, kind: str, server: EmulatorServer, workdir: Path
) -> tuple[dict[str, Any], str]:
    """Run one job in a subprocess; its figures and the emulator calls it made."""
    before = len(server.state.log)
    emulator_cpu = time.process_time()
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(data_dir), kind, server.base_url],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        env=child_env(),
        cwd=workdir,
        check=False,
    )
    emulator_cpu = time.process_time() - emulator_cpu
    calls = server.state.log[before:]
    reads = sum(1 for call in calls if call.method == "GET")
    writes = len(calls) - reads
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"state": "crashed", "error": " / ".join(tail)}, "-"
    figures: dict[str, Any] = json.loads(lines[-1])
    figures["emulator_cpu_seconds"] = emulator_cpu
    return figures, f"{len(calls)} ({reads}R {writes}W)"


def seed_database(data_dir: Path, emulator_url: str, policies: int) -> None:
    """A migrated database with one agent owning ``policies`` policies."""
    runtime = build_runtime(settings_for(data_dir, emulator_url))
    runtime.db.upgrade()
    with runtime.db.session() as session:
        (agent_id,) = add_agents(session, [AGENT])
        add_book(
            session,
            agent_id,
            AGENT,
            customers=max(1, policies // CUSTOMERS_PER_POLICY),
            policies=policies,
        )
    runtime.db.dispose()


def edit_premiums(backend: SheetBackend) -> int:
    """Add 1.25 to the premium of every 100th policy row; return how many."""
    tab = backend.read_tabs(["Policies"])["Policies"]
    assert tab is not None, "the Policies tab is missing"
    header = [str(cell) for cell in tab.rows[0]]
    column = header.index("Premium") + 1
    cells: dict[tuple[int, int], Any] = {}
    for index in range(1, len(tab.rows), EDIT_SHARE):
        row = tab.rows[index]
        old = Decimal(str(row[column - 1]))
        cells[(index + 1, column)] = float(old + Decimal("1.25"))
    backend.write({"Policies": TabChanges(cells=cells)})
    return len(cells)


def bench_backend(
    name: str, seeded: Path, policies: int, server: EmulatorServer, workdir: Path
) -> list[Row]:
    """Copy the seeded database, point it at a new sheet, and run the three cases."""
    data_dir = workdir / f"{name}-{policies}"
    shutil.copytree(seeded, data_dir)
    runtime = build_runtime(settings_for(data_dir, server.base_url))
    user = agent(runtime)
    editor: SheetBackend
    if name == GOOGLE:
        book = server.state.create(f"bench {policies}")
        runtime.sync.update_target(
            user, backend=GOOGLE, spreadsheet_id=book.spreadsheet_id
        )
        editor = GoogleHarness(server).backend(book.spreadsheet_id)
    else:
        editor = XlsxBackend(Path(runtime.sync.target_for(user).location))
    runtime.db.dispose()
    label = "google (emulator)" if name == GOOGLE else "xlsx"
    rows: list[Row] = []
    for case, kind in (
        ("to-sheet, empty", TO_SHEET),
        ("to-sheet, unchanged", TO_SHEET),
        ("from-sheet, 1 % edited", FROM_SHEET),
    ):
        edited = edit_premiums(editor) if kind == FROM_SHEET else 0
        figures, calls = measure(data_dir, kind, server, workdir)
        cpu = f"{figures.get('cpu_seconds', float('nan')):.2f}"
        if name == GOOGLE:
            cpu += f" + {figures.get('emulator_cpu_seconds', float('nan')):.2f}"
        else:
            calls = "n/a"
        summary = figures.get("summary", {})
        if figures["state"] != "succeeded":
            detail = f"{figures['state']}: {figures.get('error')}"
        elif kind == FROM_SHEET:
            detail = f"{edited} edited, {summary.get('updated', 0)} imported"
        else:
            written = summary.get("appended", 0), summary.get("written_cells", 0)
            detail = f"{written[0]} rows appended, {written[1]} cells written"
        rows.append(
            Row(
                label,
                policies,
                case,
                figures.get("seconds"),
                cpu,
                calls,
                figures.get("rss_delta_mb"),
                detail,
            )
        )
        print(f"  {label:<18} {policies:>6,} {case:<22} done", flush=True)
    return rows


def print_table(rows: list[Row]) -> None:
    """The results, with the issue's targets beside them."""
    table = [
        [
            "backend",
            "policies",
            "case",
            "wall s",
            "CPU s app (+ emulator)",
            "API calls",
            "peak mem +MB",
            "result",
            "target",
        ]
    ]
    for row in rows:
        target = TARGET_NOTES[row.case]
        if row.case != "to-sheet, unchanged" and row.policies != 10_000:
            target = ""
        table.append(
            [
                row.backend,
                f"{row.policies:,}",
                row.case,
                "-" if row.seconds is None else f"{row.seconds:.2f}",
                row.cpu,
                row.calls,
                "-" if row.rss_delta_mb is None else f"{row.rss_delta_mb:.0f}",
                row.detail,
                target,
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for index, line in enumerate(table):
        print(
            " | ".join(
                cell.ljust(width) for cell, width in zip(line, widths, strict=True)
            )
        )
        if index == 0:
            print("-+-".join("-" * width for width in widths))


def main() -> None:
    """Run every size and backend and print one table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000, 10_000, 50_000])
    parser.add_argument(
        "--backends", nargs="*", default=[GOOGLE, "xlsx"], choices=[GOOGLE, "xlsx"]
    )
    args = parser.parse_args()
    rows: list[Row] = []
    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    with (
        tempfile.TemporaryDirectory(prefix="sheetbridge-bench-sync-") as folder,
        EmulatorServer() as server,
    ):
        workdir = Path(folder)
        for policies in args.sizes:
            seeded = workdir / f"seed-{policies}"
            seed_database(seeded, server.base_url, policies)
            for name in args.backends:
                rows += bench_backend(name, seeded, policies, server, workdir)
    print()
    print(
        "One agent's book: N policies + N/4 customers (two tabs). Each case is one "
        "sync job in a fresh subprocess; 'peak mem' = the job's peak RSS above the "
        "RSS before it (VmHWM reset via /proc/self/clear_refs). Emulator latency 0, "
        "quota knobs off; the app's own quota limiter at its defaults (never "
        "reached here). xlsx has no API: 'n/a'. Load average at start "
        f"{load_at_start:.1f}, at end {os.getloadavg()[0]:.1f} (2 cores)."
    )
    print_table(rows)
    print(f"\ntotal bench time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        run_child(Path(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        main()
