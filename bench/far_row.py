"""Time syncs of a tab used down to its last row (1,048,576).

A value typed into a workbook's last row (Ctrl+Down, then typing) makes the
tab a million rows long, nearly all of them empty. alice's demo book (94
customers, 232 policies) with "oops" in the Customers tab's last row: the
import that brings it in as a new customer, then a to-sheet and an import
with that row still there.

Run: python bench/far_row.py   (figures are printed, not asserted)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from openpyxl import load_workbook
from sqlalchemy import select

from sheetbridge.config import Settings
from sheetbridge.insurance.demo import seed_demo
from sheetbridge.insurance.models import User
from sheetbridge.insurance.sync_jobs import FROM_SHEET, TO_SHEET
from sheetbridge.queue.worker import WorkerPool
from sheetbridge.web.app import build_runtime
from sheetbridge.web.deps import Runtime
from sheetbridge.web.security import hash_password


def timed_sync(runtime: Runtime, user: User, kind: str) -> str:
    queued = runtime.sync.enqueue(user, kind)
    started = time.perf_counter()
    WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty()
    elapsed = time.perf_counter() - started
    job = runtime.queue.get(queued.job_id)
    assert job.state == "succeeded", job.error
    return f"{elapsed:5.2f} s"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        runtime = build_runtime(Settings(data_dir=Path(tmp), demo=False))
        runtime.db.upgrade()
        with runtime.db.session() as session:
            seed_demo(session, password_hasher=hash_password)
        with runtime.db.read_session() as session:
            alice = session.scalars(select(User).where(User.username == "alice")).one()
        print("first to-sheet, empty workbook:", timed_sync(runtime, alice, TO_SHEET))
        path = next(Path(tmp).rglob("alice.xlsx"))
        book = load_workbook(path)
        book["Customers"]["B1048576"] = "oops"
        book.save(path)
        print(
            "import of the last row's new customer:",
            timed_sync(runtime, alice, FROM_SHEET),
        )
        print("to-sheet, last row used:", timed_sync(runtime, alice, TO_SHEET))
        print("import, last row used:", timed_sync(runtime, alice, FROM_SHEET))
        runtime.db.dispose()


if __name__ == "__main__":
    main()
