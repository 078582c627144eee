"""API calls and time to write and read 1,000 / 10,000 / 50,000-row tabs.

Runs the Google backend against the local emulator (127.0.0.1, never Google)
and the xlsx backend on a temporary workbook, and prints one table::

    /work/venv/bin/python bench/sheets.py [--rows 1000 10000 50000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sheetbridge.sheets.base import Cell, SheetBackend, TabChanges
from sheetbridge.sheets.xlsx import XlsxBackend
from sheetbridge.testing.emulator import EmulatorServer
from sheetbridge.testing.harness import GoogleHarness

HEADER = ["ID", "Customer", "Policy", "Premium", "Start", "Email", "Phone", "Notes"]


def rows_of(count: int) -> list[list[Cell]]:
    """``count`` policy-like rows of eight columns."""
    return [
        [
            n,
            f"Customer {n}",
            f"P-{n:06d}",
            100 + n % 900 + 0.5,
            43831 + n % 365,
            f"c{n}@example.com",
            f"+1555{n:07d}",
            "note" if n % 7 == 0 else None,
        ]
        for n in range(1, count + 1)
    ]


def measure(action: Callable[[], object]) -> float:
    """Seconds one call of ``action`` takes."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bench_backend(
    name: str, backend: SheetBackend, count: int, calls: Callable[[], int]
) -> list[str]:
    """Write then read one tab of ``count`` rows; return table cells."""
    changes = TabChanges(
        cells={(1, col): title for col, title in enumerate(HEADER, 1)},
        append=rows_of(count),
    )
    before = calls()
    write_s = measure(lambda: backend.write({"Policies": changes}))
    write_calls = calls() - before
    before = calls()
    data: dict[str, object] = {}
    read_s = measure(lambda: data.update(backend.read_tabs(["Policies"])))
    read_calls = calls() - before
    return [
        name,
        f"{count:,}",
        str(write_calls),
        f"{write_s:.2f}",
        str(read_calls),
        f"{read_s:.2f}",
    ]


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="*", default=[1000, 10_000, 50_000])
    args = parser.parse_args()
    table = [["backend", "rows", "write calls", "write s", "read calls", "read s"]]
    with EmulatorServer() as server, tempfile.TemporaryDirectory() as tmp:
        harness = GoogleHarness(server)
        for count in args.rows:
            google = harness.backend()
            table.append(
                bench_backend(
                    "google (emulator)",
                    google,
                    count,
                    lambda g=google: sum(g.client.calls.values()),  # type: ignore[misc]
                )
            )
            xlsx = XlsxBackend(Path(tmp) / f"bench-{count}.xlsx")
            table.append(bench_backend("xlsx", xlsx, count, lambda: 0))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for index, row in enumerate(table):
        print(
            " | ".join(
                cell.rjust(width) for cell, width in zip(row, widths, strict=True)
            )
        )
        if index == 0:
            print("-+-".join("-" * width for width in widths))
    print("xlsx has no API: its 'calls' are 0 (one file load and one atomic save).")


if __name__ == "__main__":
    main()
