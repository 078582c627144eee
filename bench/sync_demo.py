"""Time a to-sheet of the demo book and the enqueue latency of concurrent users.

Run: python bench/sync_demo.py   (figures are printed, not asserted)
"""

from __future__ import annotations

import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import uvicorn
from demobook import demo_runtime, timed_sync, user_named

from sheetbridge.config import Settings
from sheetbridge.insurance.sync_jobs import FROM_SHEET, TO_SHEET
from sheetbridge.web.app import build_runtime, create_app
from sheetbridge.web.security import add_user, issue_token


def demo_book(data_dir: Path) -> None:
    runtime = demo_runtime(data_dir)
    admin = user_named(runtime, "admin")
    print("demo book (admin: 300 customers + 800 policies), xlsx backend")
    for label, kind in (
        ("to-sheet, empty workbook", TO_SHEET),
        ("to-sheet, unchanged", TO_SHEET),
        ("from-sheet, unchanged", FROM_SHEET),
    ):
        seconds, result = timed_sync(runtime, admin, kind)
        summary = result["summary"]
        written = summary.get("written_cells", 0) + summary.get("appended", 0)
        print(f"  {label:<28} {seconds * 1000:8.0f} ms   rows/cells written {written}")
    runtime.db.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def enqueue_latency(data_dir: Path, users: int, rounds: int) -> None:
    settings = Settings(
        data_dir=data_dir, demo=False, worker_concurrency=users, sheet_latency_ms=300
    )
    runtime = build_runtime(settings)
    runtime.db.upgrade()
    with runtime.db.session() as session:
        tokens = [
            issue_token(session, add_user(session, f"u{n}", "password-1", role="agent"))
            for n in range(users)
        ]
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(runtime), port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    base = f"http://127.0.0.1:{port}"

    def click(token: str) -> float:
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}
        ) as c:
            c.get("/api/insurance/sync/status")
            started = time.perf_counter()
            answer = c.post("/api/insurance/sync/to-sheet")
            assert answer.status_code == 202
            return (time.perf_counter() - started) * 1000

    samples: list[float] = []
    with ThreadPoolExecutor(users) as pool:
        for _ in range(rounds):
            samples += pool.map(click, tokens)
            time.sleep(0.5)
    server.should_exit = True
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(0.99 * len(samples)))]
    print(
        f"enqueue (POST to-sheet), {users} users at once x {rounds} rounds, "
        f"workers busy: p50 {statistics.median(samples):.1f} ms, p99 {p99:.1f} ms"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        demo_book(Path(folder) / "demo")
        enqueue_latency(Path(folder) / "load", users=10, rounds=5)


if __name__ == "__main__":
    main()
