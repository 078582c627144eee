"""Time the sync status of a book whose recent imports found many row errors.

Each of the admin's 20 recent imports (the demo book: 300 customers, 800
policies, every date cell made unreadable) lists 800 row errors. Side by
side: the status as it is read now (each result's stored brief) and reading
each whole result and briefing it, as listings did before.

Run: python bench/status.py   (figures are printed, not asserted)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from demobook import demo_runtime, timed_sync, user_named
from openpyxl import load_workbook
from sqlalchemy import select

from sheetbridge.insurance.sync_jobs import FROM_SHEET, TO_SHEET, brief_result
from sheetbridge.queue.models import FINAL_STATES, Job
from sheetbridge.web.deps import Runtime
from sheetbridge.web.sync_api import jobs_status

DATE_COLUMNS = {"Customers": "Date of Birth", "Policies": "Effective Date"}


def break_dates(path: Path) -> None:
    book = load_workbook(path)
    for tab, header in DATE_COLUMNS.items():
        sheet = book[tab]
        column = [cell.value for cell in sheet[1]].index(header) + 1
        for row in range(2, sheet.max_row + 1):
            sheet.cell(row, column).value = "not a date"
    book.save(path)


def whole_results(runtime: Runtime, owner: int, recent: int) -> None:
    """Listings before: every recent result read whole, then briefed."""
    with runtime.db.read_session() as session:
        jobs = session.scalars(
            select(Job)
            .where(Job.owner_id == owner, Job.state.in_(FINAL_STATES))
            .order_by(Job.id.desc())
            .limit(recent)
        ).all()
        for job in jobs:
            brief_result(job.result)


def timed(call: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imports", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runtime = demo_runtime(Path(tmp))
        admin = user_named(runtime, "admin")
        timed_sync(runtime, admin, TO_SHEET)
        break_dates(next(Path(tmp).rglob("admin.xlsx")))
        for _ in range(args.imports):
            timed_sync(runtime, admin, FROM_SHEET)
        (last,) = runtime.queue.finished(admin.id, before=None, limit=1)[0]
        errors = sum(tab["issues_listed"] for tab in last.result_brief["tabs"].values())
        print(f"{args.imports} imports of {errors} row errors listed each")
        recent = runtime.settings.recent_jobs
        for _ in range(2):  # alternating, twice
            for label, call in (
                ("status (stored briefs)", lambda: jobs_status(runtime, admin.id)),
                (
                    "whole results read and briefed",
                    lambda: whole_results(runtime, admin.id, recent),
                ),
            ):
                times = timed(call, args.repeat)
                print(
                    f"  {label:32} median {statistics.median(times):6.1f} ms"
                    f"  min {min(times):6.1f} ms"
                )
        runtime.db.dispose()


if __name__ == "__main__":
    main()
