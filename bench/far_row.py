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
from pathlib import Path

from demobook import demo_runtime, timed_sync, user_named
from openpyxl import load_workbook

from sheetbridge.insurance.models import User
from sheetbridge.insurance.sync_jobs import FROM_SHEET, TO_SHEET
from sheetbridge.web.deps import Runtime


def took(runtime: Runtime, user: User, kind: str) -> str:
    seconds, _ = timed_sync(runtime, user, kind)
    return f"{seconds:5.2f} s"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        runtime = demo_runtime(Path(tmp))
        alice = user_named(runtime, "alice")
        print("first to-sheet, empty workbook:", took(runtime, alice, TO_SHEET))
        path = next(Path(tmp).rglob("alice.xlsx"))
        book = load_workbook(path)
        book["Customers"]["B1048576"] = "oops"
        book.save(path)
        print(
            "import of the last row's new customer:",
            took(runtime, alice, FROM_SHEET),
        )
        print("to-sheet, last row used:", took(runtime, alice, TO_SHEET))
        print("import, last row used:", took(runtime, alice, FROM_SHEET))
        runtime.db.dispose()


if __name__ == "__main__":
    main()
