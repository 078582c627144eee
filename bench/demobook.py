"""The demo agency in a temporary folder, and syncs timed against it, for
the benchmarks that measure the demo book (``seed_demo``) rather than a
generated one (``seedbook``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from sheetbridge.config import Settings
from sheetbridge.insurance.demo import seed_demo
from sheetbridge.insurance.models import User
from sheetbridge.queue.worker import WorkerPool
from sheetbridge.web.app import build_runtime
from sheetbridge.web.deps import Runtime
from sheetbridge.web.security import hash_password


def demo_runtime(data_dir: Path) -> Runtime:
    """A runtime on a new database in ``data_dir``, seeded with the demo agency."""
    runtime = build_runtime(Settings(data_dir=data_dir, demo=False))
    runtime.db.upgrade()
    with runtime.db.session() as session:
        seed_demo(session, password_hasher=hash_password)
    return runtime


def user_named(runtime: Runtime, username: str) -> User:
    with runtime.db.read_session() as session:
        return session.scalars(select(User).where(User.username == username)).one()


def timed_sync(runtime: Runtime, user: User, kind: str) -> tuple[float, dict[str, Any]]:
    """Run one sync to its end in this process: its seconds and its result."""
    queued = runtime.sync.enqueue(user, kind)
    started = time.perf_counter()
    WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty()
    elapsed = time.perf_counter() - started
    job = runtime.queue.get(queued.job_id)
    assert job.state == "succeeded", job.error
    assert job.result is not None
    return elapsed, job.result
