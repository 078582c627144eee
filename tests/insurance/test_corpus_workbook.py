"""Corpus cases C13-C15 through the whole sync job, on the workbook backend."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook
from sqlalchemy import select

from sheetbridge.insurance.models import Policy, User
from sheetbridge.insurance.sync_jobs import TO_SHEET
from sheetbridge.queue.worker import WorkerPool
from sheetbridge.sheets.base import SheetBackend, TabChanges, TabData
from sheetbridge.sheets.errors import SheetPermissionDenied, SheetTransientError
from sheetbridge.sync.models import SyncTarget
from sheetbridge.web.app import create_app
from sheetbridge.web.deps import Runtime
from tests.conftest import bearer
from tests.insurance.test_workbook_sync import run_sync, workbook_path


class FailingWrites:
    """A backend whose writes fail with ``error`` after a normal read."""

    def __init__(self, inner: SheetBackend, error: Exception) -> None:
        self.inner = inner
        self.error = error
        self.location = inner.location
        self.cell_limit = inner.cell_limit

    def read_tabs(self, tabs: Any) -> dict[str, TabData | None]:
        return self.inner.read_tabs(tabs)

    def write(
        self, changes: Mapping[str, TabChanges], *, expected_version: str | None = None
    ) -> None:
        raise self.error


def policy_ids_in_sheet(runtime: Runtime) -> list[int]:
    sheet = load_workbook(workbook_path(runtime, "alice"))["Policies"]
    return [row[0] for row in sheet.iter_rows(min_row=2, values_only=True)]


def delete_policies(runtime: Runtime, count: int) -> list[int]:
    with runtime.db.session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
        doomed = list(
            session.scalars(
                select(Policy).where(Policy.agent_id == alice.id).limit(count)
            ).unique()
        )
        for policy in doomed:
            session.delete(policy)
        return [policy.id for policy in doomed]


def test_c13_rows_deleted_in_app_are_flagged_by_default_and_never_duplicated(
    runtime: Runtime,
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    deleted = delete_policies(runtime, 2)

    first = run_sync(runtime, "alice", TO_SHEET)
    second = run_sync(runtime, "alice", TO_SHEET)

    assert first["tabs"]["Policies"]["counts"]["deleted_in_app"] == 2
    ids = policy_ids_in_sheet(runtime)
    assert set(deleted) <= set(ids)
    assert len(ids) == len(set(ids))
    assert second["summary"]["appended"] == 0


def test_c13_delete_mode_removes_rows_deleted_in_app(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    with TestClient(create_app(runtime, workers=False)) as client:
        changed = client.patch(
            "/api/insurance/sync/target",
            json={"delete_mode": "delete"},
            headers=bearer(tokens["alice"]),
        )
        bad = client.patch(
            "/api/insurance/sync/target",
            json={"delete_mode": "shred"},
            headers=bearer(tokens["alice"]),
        )
    assert changed.json()["delete_mode"] == "delete"
    assert bad.status_code == 422
    run_sync(runtime, "alice", TO_SHEET)
    deleted = delete_policies(runtime, 2)

    run_sync(runtime, "alice", TO_SHEET)
    again = run_sync(runtime, "alice", TO_SHEET)

    ids = policy_ids_in_sheet(runtime)
    assert not set(deleted) & set(ids)
    assert len(ids) == len(set(ids))
    assert again["summary"]["appended"] == 0 and again["summary"]["deleted"] == 0


def test_c14_failed_write_leaves_the_sheet_as_it_was_and_the_next_run_converges(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    path = workbook_path(runtime, "alice")
    delete_policies(runtime, 1)
    with runtime.db.session() as session:
        policy = session.get(Policy, policy_ids_in_sheet(runtime)[-1])
        assert policy is not None
        policy.carrier = "Changed Before Failure"
    untouched = path.read_bytes()
    real = runtime.sync.backend_for

    def failing(target: SyncTarget, context: object = None) -> SheetBackend:
        return FailingWrites(real(target), SheetTransientError("service unavailable"))

    monkeypatch.setattr(runtime.sync, "backend_for", failing)
    with runtime.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
    job_id = runtime.sync.enqueue(alice, TO_SHEET).job_id
    WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty()

    waiting = runtime.queue.get(job_id)
    assert waiting.state == "queued" and waiting.attempts == 1
    assert "service unavailable" in (waiting.error or "")
    assert path.read_bytes() == untouched

    monkeypatch.setattr(runtime.sync, "backend_for", real)
    deadline = time.monotonic() + 30
    while runtime.queue.get(job_id).state == "queued":
        assert time.monotonic() < deadline, "the retry never ran"
        WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty()
        time.sleep(0.05)
    retried = runtime.queue.get(job_id)
    assert retried.state == "succeeded" and retried.attempts == 2
    assert retried.result is not None
    assert retried.result["summary"]["written_cells"] >= 1
    assert run_sync(runtime, "alice", TO_SHEET)["summary"]["written_cells"] == 0


def test_c15_a_job_whose_writes_failed_is_reported_failed_with_the_reason(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = runtime.sync.backend_for
    denied = SheetPermissionDenied("share the workbook with the sync service")
    monkeypatch.setattr(
        runtime.sync,
        "backend_for",
        lambda target, context=None: FailingWrites(real(target), denied),
    )
    with runtime.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
    job_id = runtime.sync.enqueue(alice, TO_SHEET).job_id
    WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty()

    job = runtime.queue.get(job_id)
    assert job.state == "failed"
    assert "share the workbook" in (job.error or "")
    assert job.result is None
