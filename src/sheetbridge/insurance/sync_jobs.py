"""Sync jobs: each user's book to and from their sheet target.

A job reads the sheet once, compares it with the app and the last-synced
snapshot (three-way), writes only what changed in one batch, and stores the new
snapshot. No database transaction is held while the sheet is read; when an
import creates records, their new IDs are written back before the import
commits, so a failed write-back leaves neither records without IDs nor IDs
without records.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from sheetbridge import clock
from sheetbridge.config import Settings
from sheetbridge.db import Database
from sheetbridge.insurance.mapping import (
    CUSTOMERS,
    ENTITY,
    MAPPINGS,
    POLICIES,
    customer_record,
    policy_record,
    to_python,
)
from sheetbridge.insurance.models import Customer, Policy, User
from sheetbridge.insurance.schemas import (
    CustomerCreate,
    CustomerUpdate,
    PolicyCreate,
    PolicyUpdate,
)
from sheetbridge.insurance.services import Book, DomainError, scoped
from sheetbridge.queue.errors import PermanentJobError, RetryableJobError
from sheetbridge.queue.store import Enqueued, JobQueue
from sheetbridge.queue.worker import Handler, JobContext
from sheetbridge.sheets.base import SheetBackend, TabChanges, TabData
from sheetbridge.sheets.errors import SheetError
from sheetbridge.sheets.xlsx import XlsxBackend
from sheetbridge.sync.engine import (
    FromSheetPlan,
    Issue,
    Record,
    TabMapping,
    plan_from_sheet,
    plan_to_sheet,
)
from sheetbridge.sync.models import SyncSnapshot, SyncTarget

log = logging.getLogger(__name__)

TO_SHEET = "to_sheet"
FROM_SHEET = "from_sheet"
MAX_REPORTED_ISSUES = 500


class SyncService:
    """Sync targets, enqueueing sync jobs, and the job handlers themselves."""

    def __init__(self, settings: Settings, db: Database, queue: JobQueue) -> None:
        self.settings = settings
        self.db = db
        self.queue = queue
        self._targets: dict[int, int] = {}

    # -- targets and enqueueing -------------------------------------------------

    def target_id_for(self, user: User) -> int:
        """The user's sync target, created on first use (a workbook per user)."""
        cached = self._targets.get(user.id)
        if cached is not None:
            return cached
        with self.db.session() as session:
            target = session.scalar(
                select(SyncTarget).where(SyncTarget.user_id == user.id)
            )
            if target is None:
                location = self.settings.workbook_dir / f"{user.username}.xlsx"
                target = SyncTarget(
                    user_id=user.id, backend="xlsx", location=str(location.resolve())
                )
                session.add(target)
                session.flush()
            target_id = target.id
        self._targets[user.id] = target_id
        return target_id

    def enqueue(self, user: User, kind: str) -> Enqueued:
        target_id = self.target_id_for(user)
        return self.queue.enqueue(
            kind,
            queue_key=f"user:{user.id}",
            resource_key=f"sheet:{target_id}",
            owner_id=user.id,
            payload={"target_id": target_id, "user_id": user.id},
        )

    @property
    def handlers(self) -> dict[str, Handler]:
        return {TO_SHEET: self.to_sheet, FROM_SHEET: self.from_sheet}

    def backend_for(self, target: SyncTarget) -> SheetBackend:
        if target.backend != "xlsx":
            raise PermanentJobError(f"unknown sheet backend {target.backend!r}")
        path = Path(target.location)
        path.parent.mkdir(parents=True, exist_ok=True)
        return XlsxBackend(path, latency_ms=self.settings.sheet_latency_ms)

    # -- handlers -------------------------------------------------------------

    def to_sheet(self, context: JobContext) -> dict[str, Any]:
        target, user = self._load(context)
        backend = self.backend_for(target)
        context.progress("reading")
        with _sheet_errors():
            tabs = backend.read_tabs([mapping.tab for mapping in MAPPINGS])
        context.progress("comparing")
        app, base = self._app_and_base(target, user)
        plans = {
            mapping.tab: plan_to_sheet(
                mapping,
                tabs[mapping.tab],
                app[mapping.tab],
                base[mapping.tab],
                delete_mode=target.delete_mode,
            )
            for mapping in MAPPINGS
        }
        changes = {
            tab: plan.changes
            for tab, plan in plans.items()
            if not plan.changes.is_empty()
        }
        context.progress("writing", total=sum(_size(c) for c in changes.values()))
        if changes:
            with _sheet_errors():
                backend.write(changes, expected_version=_version(tabs))
        with self.db.session() as session:
            for mapping in MAPPINGS:
                plan = plans[mapping.tab]
                self._store_snapshots(
                    session, target.id, mapping, plan.snapshots, plan.drop_snapshots
                )
        return _report(TO_SHEET, backend, plans)

    def from_sheet(self, context: JobContext) -> dict[str, Any]:
        target, user = self._load(context)
        backend = self.backend_for(target)
        context.progress("reading")
        with _sheet_errors():
            tabs = backend.read_tabs([mapping.tab for mapping in MAPPINGS])
        context.progress("comparing")
        app, base, versions = self._app_base_versions(target, user)
        plans = {
            mapping.tab: plan_from_sheet(
                mapping, tabs[mapping.tab], app[mapping.tab], base[mapping.tab]
            )
            for mapping in MAPPINGS
        }
        context.progress("importing")
        changed: dict[str, list[int]] = {}
        with self.db.session() as session:
            book = Book(session, user)
            writes: dict[str, TabChanges] = {}
            for mapping in MAPPINGS:
                plan = plans[mapping.tab]
                importer = _Importer(book, mapping, plan, versions[mapping.tab])
                importer.run()
                changed[ENTITY[mapping.tab]] = importer.changed
                self._store_snapshots(session, target.id, mapping, importer.snapshots)
                if importer.id_cells:
                    cells = {**plan.header_changes.cells, **importer.id_cells}
                    writes[mapping.tab] = TabChanges(
                        cells=cells, append=[], delete_rows=[]
                    )
            if writes:
                # No progress report in here: it would need a second write
                # transaction while this one holds the SQLite write lock.
                with _sheet_errors():
                    backend.write(writes, expected_version=_version(tabs))
        return {**_report(FROM_SHEET, backend, plans), "changed": changed}

    # -- loading and storing --------------------------------------------------

    def _load(self, context: JobContext) -> tuple[SyncTarget, User]:
        with self.db.read_session() as session:
            target = session.get(SyncTarget, context.payload["target_id"])
            user = session.get(User, context.payload["user_id"])
        if target is None or user is None:
            raise PermanentJobError("the sync target or its user no longer exists")
        return target, user

    def _app_and_base(
        self, target: SyncTarget, user: User
    ) -> tuple[dict[str, dict[int, Record]], dict[str, dict[int, Record]]]:
        app, base, _ = self._app_base_versions(target, user)
        return app, base

    def _app_base_versions(
        self, target: SyncTarget, user: User
    ) -> tuple[
        dict[str, dict[int, Record]],
        dict[str, dict[int, Record]],
        dict[str, dict[int, int]],
    ]:
        with self.db.read_session() as session:
            customers = session.scalars(
                scoped(select(Customer), Customer, user).order_by(Customer.id)
            ).unique()
            policies = session.scalars(
                scoped(select(Policy), Policy, user).order_by(Policy.id)
            ).unique()
            app: dict[str, dict[int, Record]] = {CUSTOMERS.tab: {}, POLICIES.tab: {}}
            versions: dict[str, dict[int, int]] = {CUSTOMERS.tab: {}, POLICIES.tab: {}}
            for customer in customers:
                app[CUSTOMERS.tab][customer.id] = customer_record(customer)
                versions[CUSTOMERS.tab][customer.id] = customer.version
            for policy in policies:
                app[POLICIES.tab][policy.id] = policy_record(policy)
                versions[POLICIES.tab][policy.id] = policy.version
            base: dict[str, dict[int, Record]] = {CUSTOMERS.tab: {}, POLICIES.tab: {}}
            snapshots = session.scalars(
                select(SyncSnapshot).where(SyncSnapshot.target_id == target.id)
            )
            tab_of = {entity: tab for tab, entity in ENTITY.items()}
            for snapshot in snapshots:
                base[tab_of[snapshot.entity]][snapshot.record_id] = dict(
                    snapshot.fields
                )
        return app, base, versions

    @staticmethod
    def _store_snapshots(
        session: Session,
        target_id: int,
        mapping: TabMapping,
        snapshots: dict[int, Record],
        dropped: set[int] | None = None,
    ) -> None:
        entity = ENTITY[mapping.tab]
        if dropped:
            session.execute(
                delete(SyncSnapshot).where(
                    SyncSnapshot.target_id == target_id,
                    SyncSnapshot.entity == entity,
                    SyncSnapshot.record_id.in_(dropped),
                )
            )
        if not snapshots:
            return
        existing = {
            row.record_id: row
            for row in session.scalars(
                select(SyncSnapshot).where(
                    SyncSnapshot.target_id == target_id, SyncSnapshot.entity == entity
                )
            )
        }
        now = clock.now()
        for record_id, fields in snapshots.items():
            row = existing.get(record_id)
            if row is None:
                session.add(
                    SyncSnapshot(
                        target_id=target_id,
                        entity=entity,
                        record_id=record_id,
                        fields=fields,
                        synced_at=now,
                    )
                )
            elif row.fields != fields:
                row.fields = fields
                row.synced_at = now


class _Importer:
    """Applies one tab's from-sheet plan to the app, row by row.

    Each row runs in a savepoint, so a row the domain rejects (a policy number
    already used, a customer that does not exist) is reported and skipped while
    the others import.
    """

    def __init__(
        self,
        book: Book,
        mapping: TabMapping,
        plan: FromSheetPlan,
        versions: dict[int, int],
    ) -> None:
        self.book = book
        self.mapping = mapping
        self.plan = plan
        self.versions = versions
        self.snapshots: dict[int, Record] = dict(plan.snapshots)
        self.id_cells: dict[tuple[int, int], Any] = {}
        self.changed: list[int] = []
        self.rows = {issue.row for issue in plan.issues if issue.row is not None}

    def run(self) -> None:
        # The plan counts what it intends; count what the app accepted instead.
        self.plan.counts["updated"] = 0
        self.plan.counts["created"] = 0
        for record_id, values in self.plan.updates.items():
            self._update(record_id, values)
        for new_row in self.plan.creates:
            self._create(new_row.row, new_row.values)

    def _update(self, record_id: int, values: Record) -> None:
        session = self.book.session
        fields = to_python(self.mapping, values)
        try:
            with session.begin_nested():
                if self.mapping is CUSTOMERS:
                    model: Any = Customer
                    self.book.update_customer(
                        record_id,
                        CustomerUpdate(version=self.versions[record_id], **fields),
                    )
                else:
                    model = Policy
                    self.book.update_policy(
                        record_id,
                        PolicyUpdate(version=self.versions[record_id], **fields),
                    )
        except (DomainError, ValidationError) as exc:
            self.snapshots.pop(record_id, None)
            self._reject(self._row_of(record_id), exc)
            return
        self.changed.append(record_id)
        self.plan.counts["updated"] += 1
        record = session.get(model, record_id)
        if record is not None:
            self.snapshots[record_id] = self._record(record)

    def _create(self, row: int, values: Record) -> None:
        session = self.book.session
        fields = to_python(self.mapping, values)
        try:
            with session.begin_nested():
                if self.mapping is CUSTOMERS:
                    created: Any = self.book.create_customer(CustomerCreate(**fields))
                else:
                    created = self.book.create_policy(PolicyCreate(**fields))
        except (DomainError, ValidationError) as exc:
            self._reject(row, exc)
            return
        self.changed.append(created.id)
        self.snapshots[created.id] = self._record(created)
        self.id_cells[(row, self.plan.id_column)] = created.id
        self.plan.counts["created"] += 1

    def _record(self, row: Any) -> Record:
        return customer_record(row) if self.mapping is CUSTOMERS else policy_record(row)

    def _row_of(self, record_id: int) -> int | None:
        return self.plan.rows.get(record_id)

    def _reject(self, row: int | None, exc: Exception) -> None:
        for field, reason in _reasons(exc):
            column = next(
                (c.header for c in self.mapping.columns if c.field == field), field
            )
            self.plan.issues.append(
                Issue(
                    tab=self.mapping.tab,
                    row=row,
                    column=column,
                    value=None,
                    reason=reason,
                    kind="error",
                )
            )
        self.plan.counts["errors"] = self.plan.counts.get("errors", 0) + 1


def _reasons(exc: Exception) -> list[tuple[str | None, str]]:
    if isinstance(exc, ValidationError):
        return [
            (str(error["loc"][0]) if error["loc"] else None, error["msg"])
            for error in exc.errors()
        ]
    field = getattr(exc, "field", None)
    return [(field, getattr(exc, "message", str(exc)))]


@contextmanager
def _sheet_errors() -> Iterator[None]:
    """Turn sheet failures into the queue's retry or fail signals."""
    try:
        yield
    except SheetError as exc:
        if exc.transient:
            raise RetryableJobError(str(exc)) from exc
        raise PermanentJobError(str(exc)) from exc
    except OSError as exc:
        raise RetryableJobError(f"workbook not accessible: {exc}") from exc


def _version(tabs: dict[str, TabData | None]) -> str:
    return next((tab.version for tab in tabs.values() if tab is not None), "")


def _size(changes: TabChanges) -> int:
    return len(changes.cells) + len(changes.append) + len(changes.delete_rows)


def _report(
    direction: str, backend: SheetBackend, plans: dict[str, Any]
) -> dict[str, Any]:
    """A job's result: counts, row-level issues and conflicts per tab."""
    return {
        "direction": direction,
        "workbook": backend.location,
        "tabs": {
            tab: {
                "counts": plan.counts,
                "issues": [asdict(i) for i in plan.issues[:MAX_REPORTED_ISSUES]],
                "conflicts": [asdict(c) for c in plan.conflicts],
            }
            for tab, plan in plans.items()
        },
        "summary": _summary(plans),
    }


def _summary(plans: dict[str, Any]) -> dict[str, int]:
    total: dict[str, int] = {}
    for plan in plans.values():
        for name, count in plan.counts.items():
            total[name] = total.get(name, 0) + count
        total["issues"] = total.get("issues", 0) + len(plan.issues)
    return total
