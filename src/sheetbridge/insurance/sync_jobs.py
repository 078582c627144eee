"""Sync jobs: each user's book to and from their sheet target.

A job reads the sheet once, compares it with the app and the last-synced
snapshot (three-way), writes only what changed in one batch, and stores the new
snapshot. No database transaction is held while the sheet is read or written.
When an import creates records, their IDs are written into their rows after
it commits; until a sync sees them there, each such row is pending, and the
next sync finds it again and writes the ID (:mod:`~sheetbridge.sync.pending_ids`),
so a sync that stops in between neither creates a record twice nor leaves an
ID that names no record.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import itertools
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, Table, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from sqlalchemy.orm import Session

from sheetbridge import clock
from sheetbridge.config import Settings
from sheetbridge.db import Database
from sheetbridge.insurance.mapping import (
    CUSTOMERS,
    ENTITY,
    MAPPINGS,
    POLICIES,
    book_records,
    customer_record,
    policy_record,
    to_python,
)
from sheetbridge.insurance.models import (
    Customer,
    Policy,
    User,
    fold_number,
    is_file_name,
)
from sheetbridge.insurance.review import (
    CREATED,
    forget_sheet,
    import_done,
    record_conflicts,
)
from sheetbridge.insurance.schemas import (
    CustomerCreate,
    CustomerUpdate,
    PolicyCreate,
    PolicyUpdate,
    error_message,
)
from sheetbridge.insurance.services import (
    Book,
    DomainError,
    InvalidField,
    NumberTaken,
    StaleVersion,
)
from sheetbridge.queue.errors import PermanentJobError, RetryableJobError
from sheetbridge.queue.store import Enqueued, JobQueue
from sheetbridge.queue.worker import Handler, JobContext
from sheetbridge.sheets.base import Cell, SheetBackend, TabChanges, TabData
from sheetbridge.sheets.errors import SheetError
from sheetbridge.sheets.google import (
    GoogleSheetsBackend,
    google_problem,
)
from sheetbridge.sheets.quota import limiter_from_settings
from sheetbridge.sheets.xlsx import XlsxBackend
from sheetbridge.sync.columns import Canonical, Column, render_cell
from sheetbridge.sync.engine import (
    DELETE_MODES,
    LEFT_THE_BOOK,
    Conflict,
    FromSheetPlan,
    Issue,
    NewRow,
    Record,
    TabMapping,
    ToSheetPlan,
    merge_again,
    plan_from_sheet,
    plan_to_sheet,
    shown,
)
from sheetbridge.sync.models import ImportChange, PendingId, SyncSnapshot, SyncTarget
from sheetbridge.sync.pending_ids import PendingRow, find_rows, row_values

log = logging.getLogger(__name__)

XLSX = "xlsx"
GOOGLE = "google"
SPREADSHEET_ID = re.compile(r"[A-Za-z0-9_-]{10,128}")
TO_SHEET = "to_sheet"
FROM_SHEET = "from_sheet"
MAX_REPORTED_ISSUES = 500  # and conflicts, a tab
# Of the records an import changed, a result lists this many an entity (the
# dashboard patches those on screen; past it, it looks at all it shows).
MAX_REPORTED_CHANGED = 1_000
# A to-sheet's write-back of every record whose row was deleted from the sheet.
WRITE_BACK_ALL = "all"
# Told when writing new records' IDs fails after their import committed,
# and when it fails for records an earlier import created.
IMPORT_SAVED = (
    "; the import itself was saved: the records it created are in the app, "
    "and their IDs go into their rows with the next sync"
)
EARLIER_IDS = (
    "; this import changed nothing: the records an earlier import created are "
    "in the app, and their IDs go into their rows with the next sync"
)
_LOAD_BATCH = 500


class SyncService:
    """Sync targets, enqueueing sync jobs, and the job handlers themselves."""

    def __init__(self, settings: Settings, db: Database, queue: JobQueue) -> None:
        self.settings = settings
        self.db = db
        self.queue = queue
        self._keys: dict[int, tuple[int, str]] = {}

    # -- targets and enqueueing -------------------------------------------------

    def target_for(self, user: User) -> SyncTarget:
        """The user's sync target, created on first use (a workbook per user)."""
        found = self._stored_target(user)
        if found is not None:
            return found
        try:
            with self.db.session() as session:
                target = session.scalar(
                    select(SyncTarget).where(SyncTarget.user_id == user.id)
                )
                if target is None:
                    target = SyncTarget(
                        user_id=user.id,
                        backend=XLSX,
                        location=str(self._workbook_path(user)),
                    )
                    session.add(target)
                    session.flush()
                return target
        except IntegrityError:
            # Another request created it at the same moment (PostgreSQL).
            found = self._stored_target(user)
            if found is None:
                raise
            return found

    def _stored_target(self, user: User) -> SyncTarget | None:
        with self.db.read_session() as session:
            return session.scalar(
                select(SyncTarget).where(SyncTarget.user_id == user.id)
            )

    def update_target(
        self,
        user: User,
        *,
        delete_mode: str | None = None,
        backend: str | None = None,
        spreadsheet_id: str | None = None,
        by: User | None = None,
    ) -> SyncTarget:
        """Change where the user's book syncs to and how deletes are treated;
        ``by`` is who asks (the user, unless an admin does it for them).

        Pointing the target at another sheet forgets the last-synced snapshot
        and open conflicts: they describe the old sheet, not the new one. A
        spreadsheet another user's book syncs with is refused: each sync would
        report the other book's rows as IDs it does not know.
        """
        if delete_mode is not None and delete_mode not in DELETE_MODES:
            raise InvalidField(
                "delete_mode", f"must be one of {', '.join(DELETE_MODES)}"
            )
        current = self.target_for(user)
        location = current.location
        if spreadsheet_id is not None and backend is None and current.backend == GOOGLE:
            backend = GOOGLE  # another spreadsheet for a book already on Google
        if spreadsheet_id is not None and backend != GOOGLE:
            raise InvalidField(
                "spreadsheet_id", "goes with backend google; a workbook has none"
            )
        if backend == GOOGLE:
            problem = google_problem(self.settings)
            if problem is not None:
                raise InvalidField("backend", problem)
            if not spreadsheet_id or not SPREADSHEET_ID.fullmatch(spreadsheet_id):
                raise InvalidField(
                    "spreadsheet_id", "the ID from the spreadsheet's URL, after /d/"
                )
            location = spreadsheet_id
        elif backend == XLSX:
            location = str(self._workbook_path(user))
        elif backend is not None:
            raise InvalidField("backend", f"must be {XLSX} or {GOOGLE}")
        try:
            with self.db.session() as session:
                stored = session.get(SyncTarget, current.id)
                assert stored is not None
                if backend == GOOGLE:
                    _refuse_shared(session, stored, location, by or user)
                if delete_mode is not None:
                    stored.delete_mode = delete_mode
                if backend is not None and (backend, location) != (
                    stored.backend,
                    stored.location,
                ):
                    # The same workbook reached another way (a linked folder)
                    # is the same sheet: what its last sync agreed on stays.
                    same_workbook = backend == stored.backend == XLSX and (
                        os.path.realpath(location) == os.path.realpath(stored.location)
                    )
                    stored.backend, stored.location = backend, location
                    if not same_workbook:
                        forget_sheet(session, stored.id)
        except IntegrityError:
            # Another book took the spreadsheet after the look above: the
            # database's one-book-a-spreadsheet index refused this change.
            if backend == GOOGLE:
                with self.db.read_session() as session:
                    _refuse_shared(session, current, location, by or user)
            raise
        self._keys.pop(user.id, None)
        return self.target_for(user)

    def _workbook_path(self, user: User) -> Path:
        # Names are checked when users are added; one stored before that, or
        # by other means, that is no plain file name is never made a path.
        name = user.username if is_file_name(user.username) else f"user-{user.id}"
        # Absolute, but a link stays a link: each sync follows it anew.
        return Path(os.path.abspath(self.settings.workbook_dir / f"{name}.xlsx"))

    def enqueue(
        self,
        user: User,
        kind: str,
        *,
        write_back: dict[str, list[int]] | str | None = None,
    ) -> Enqueued:
        """Queue a sync of the user's book; ``write_back`` (a to-sheet's, by
        tab, or ``"all"``) names records whose rows were deleted from the
        sheet, to append again."""
        keys = self._keys.get(user.id)
        if keys is None:
            target = self.target_for(user)
            # Jobs of any users that write the same workbook never run at once.
            keys = (target.id, f"sheet:{target.backend}:{target.location}")
            self._keys[user.id] = keys
        target_id, resource_key = keys
        return self.queue.enqueue(
            kind,
            queue_key=f"user:{user.id}",
            resource_key=resource_key,
            owner_id=user.id,
            payload={
                "target_id": target_id,
                "user_id": user.id,
                **({"write_back": write_back} if write_back else {}),
            },
        )

    def write_back(
        self, user: User, wanted: dict[str, list[int]], *, every: bool = False
    ) -> tuple[Enqueued, dict[str, list[int]]]:
        """Queue a to-sheet that appends again the rows of records deleted from
        the sheet: ``wanted`` (record IDs by tab), or ``every`` such record the
        sync finds; not both, even with no IDs in ``wanted``. The job and the
        IDs left out (by tab): those not in the user's book, deleted since
        the sync that listed them, say. None of them in the book is refused.
        """
        if every and wanted:
            raise InvalidField("all", "give all or the records to write back, not both")
        wanted = {tab: sorted(set(ids)) for tab, ids in wanted.items() if ids}
        if every:
            return self.enqueue(user, TO_SHEET, write_back=WRITE_BACK_ALL), {}
        if not wanted:
            raise InvalidField("customers", "name at least one record to write back")
        kept: dict[str, list[int]] = {}
        left_out: dict[str, list[int]] = {}
        with self.db.read_session() as session:
            for tab, ids in wanted.items():
                model: type[Customer | Policy] = (
                    Customer if tab == CUSTOMERS.tab else Policy
                )
                mine = select(model.id)
                if not user.is_admin:
                    mine = mine.where(model.agent_id == user.id)
                known = set(session.scalars(mine))
                kept[tab] = [record_id for record_id in ids if record_id in known]
                left_out[tab] = [
                    record_id for record_id in ids if record_id not in known
                ]
        if not any(kept.values()):
            raise InvalidField(next(iter(left_out)).lower(), _not_in_books(left_out))
        queued = self.enqueue(
            user, TO_SHEET, write_back={tab: ids for tab, ids in kept.items() if ids}
        )
        return queued, {tab: ids for tab, ids in left_out.items() if ids}

    @property
    def handlers(self) -> dict[str, Handler]:
        return {
            TO_SHEET: _database_errors_retry(self.to_sheet),
            FROM_SHEET: _database_errors_retry(self.from_sheet),
        }

    def backend_for(
        self, target: SyncTarget, progress: _Progress | None = None
    ) -> SheetBackend:
        """The target's sheet; with ``progress``, quota waits and retries show in
        the job's progress."""
        if target.backend == GOOGLE:
            problem = google_problem(self.settings)
            if problem is not None:
                raise PermanentJobError(problem)
            engine = (
                self.db.engine
                if self.settings.sheets_quota_backend == "postgres"
                else None
            )
            return GoogleSheetsBackend.from_settings(
                self.settings,
                target.location,
                limiter=limiter_from_settings(self.settings, engine),
                on_wait=_quota_reporter(progress),
                on_retry=_retry_reporter(progress),
            )
        if target.backend != XLSX:
            raise PermanentJobError(f"unknown sheet backend {target.backend!r}")
        path = Path(target.location)
        path.parent.mkdir(parents=True, exist_ok=True)
        return XlsxBackend(
            path,
            latency_ms=self.settings.sheet_latency_ms,
            locked_retry_s=self.settings.workbook_locked_retry_s,
        )

    # -- handlers -------------------------------------------------------------

    def to_sheet(self, context: JobContext) -> dict[str, Any]:
        progress = _Progress(context)
        target, user = self._load(context)
        backend, tabs, pending = self._read_sheet(progress, target)
        sides = self._sides(target, user, pending)
        app, base = sides.app, sides.base
        write_back = context.payload.get("write_back", {})
        if write_back == WRITE_BACK_ALL:
            write_back = {tab: records.keys() for tab, records in app.items()}
        plans = {
            mapping.tab: plan_to_sheet(
                mapping,
                tabs[mapping.tab],
                app[mapping.tab],
                base[mapping.tab],
                delete_mode=target.delete_mode,
                cell_limit=backend.cell_limit,
                write_back=frozenset(write_back.get(mapping.tab, ())),
            )
            for mapping in MAPPINGS
        }
        elsewhere = self._numbers_elsewhere(plans[POLICIES.tab], app[POLICIES.tab])
        gone = _workbook_gone(backend)  # written whole again, as asked
        for mapping in MAPPINGS:
            _tell_refused(mapping, plans[mapping.tab], app, elsewhere)
            _tell_blocked_edits(plans[mapping.tab])
            _tell_gone_before_write_back(
                mapping, plans[mapping.tab], write_back.get(mapping.tab, ()), app
            )
            _tell_lost(mapping, plans[mapping.tab], pending.lost[mapping.tab])
            if tabs[mapping.tab] is None and base[mapping.tab] and not gone:
                _tell_written_anew(mapping, plans[mapping.tab])
        changes = {
            tab: changes
            for tab, plan in plans.items()
            if not (changes := pending.with_ids(tab, plan.changes)).is_empty()
        }
        cells, appended, deleted = _sizes(changes.values())
        total = cells + appended + deleted
        progress.report(
            "writing",
            total=total,
            rows_compared=sum(plan.compared for plan in plans.values()),
            cells_to_write=cells,
            rows_to_append=appended,
            rows_to_delete=deleted,
        )
        if changes:
            with _sheet_errors():
                backend.write(changes, expected_version=_version(tabs))
        progress.finished(
            "writing",
            done=total,
            total=total,
            cells_written=cells,
            rows_appended=appended,
            rows_deleted=deleted,
        )

        remembered = [
            _Remembered.of(
                target.id,
                mapping,
                plans[mapping.tab],
                plans[mapping.tab].snapshots,
                base[mapping.tab],
                pending.lost[mapping.tab],
            )
            for mapping in MAPPINGS
        ]

        def remember(connection: Connection) -> None:
            for tab in remembered:
                tab.store(connection, context.job.id)
            pending.settle(connection, context.job.id)

        # What both sides now agree on is stored as the job succeeds, in one
        # commit: a job that was taken over meanwhile stores nothing. It is
        # worked out before, so that commit holds the write turn only for
        # its statements.
        context.on_success(remember)
        return _report(TO_SHEET, backend, plans)

    def from_sheet(self, context: JobContext) -> dict[str, Any]:
        progress = _Progress(context)
        target, user = self._load(context)
        backend, tabs, pending = self._read_sheet(progress, target)
        sides = self._sides(target, user, pending)
        _require_tabs(backend, tabs, synced=any(sides.base.values()))
        plans = {
            mapping.tab: plan_from_sheet(
                mapping,
                tabs[mapping.tab],
                sides.app[mapping.tab],
                sides.base[mapping.tab],
            )
            for mapping in MAPPINGS
        }
        _refuse_numbers_given_twice(plans[POLICIES.tab])
        for mapping in MAPPINGS:
            _tell_lost(mapping, plans[mapping.tab], pending.lost[mapping.tab])
        compared = sum(plan.compared for plan in plans.values())
        to_import = sum(
            len(plan.updates) + len(plan.creates) for plan in plans.values()
        )
        progress.report(
            "importing",
            total=to_import,
            rows_compared=compared,
            rows_to_import=to_import,
        )
        changed, created, id_cells = self._import(
            context.job.id, target, user, sides, plans, tabs, pending
        )
        if context.job.attempts > 1:
            changed, created = self._over_all_attempts(context.job.id, plans)
        # The import has committed: its new records' IDs go into their rows
        # now, and until a sync sees them there each is a pending row.
        writes = {
            tab: changes
            for tab in tabs
            if not (
                changes := pending.with_ids(
                    tab,
                    TabChanges(
                        id_cells.get(tab, {}),
                        id_column=plans[tab].id_column,
                        known_columns=plans[tab].known_columns,
                    ),
                )
            ).is_empty()
        }
        # A tab written anyway gets its blank agent cells filled in too; an
        # import that has nothing else to write does not write for them (the
        # sheet may be shared with the app read-only).
        for tab, changes in writes.items():
            for cell, value in plans[tab].fill_ins.items():
                changes.cells.setdefault(cell, value)
        if writes:
            saved = IMPORT_SAVED if any(changed.values()) else EARLIER_IDS
            with _sheet_errors(saved):
                backend.write(writes, expected_version=_version(tabs))
        context.on_success(
            lambda connection: pending.settle(connection, context.job.id)
        )
        imported = sum(
            p.counts["updated"] + p.counts["created"] for p in plans.values()
        )
        with_errors = _rows_with_errors(plans.values())
        progress.finished(
            "importing",
            done=to_import,
            total=to_import,
            rows_imported=imported,
            rows_skipped=max(0, compared - imported - with_errors),
            rows_with_errors=with_errors,
            cells_written=_sizes(writes.values())[0],
        )
        return {
            **_report(FROM_SHEET, backend, plans),
            "changed": {
                entity: ids[:MAX_REPORTED_CHANGED] for entity, ids in changed.items()
            },
            "changed_cut": any(
                len(ids) > MAX_REPORTED_CHANGED for ids in changed.values()
            ),
            # Of those, the records it created (a page shows them as new).
            "created": {
                entity: ids[:MAX_REPORTED_CHANGED] for entity, ids in created.items()
            },
        }

    def _over_all_attempts(
        self, job_id: int, plans: dict[str, FromSheetPlan]
    ) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        """The records a retried import changed, and those it created, over
        all its attempts, its plans' counts set to match: the result tells
        what the import did. A record an earlier attempt changed, which this
        one found unchanged, counts as changed only."""
        with self.db.read_session() as session:
            done = import_done(session, job_id)
        changed: dict[str, list[int]] = {}
        created: dict[str, list[int]] = {}
        for mapping in MAPPINGS:
            entity = ENTITY[mapping.tab]
            new, updated = done.created[entity], done.updated[entity]
            counts = plans[mapping.tab].counts
            earlier = len(new | updated) - counts["created"] - counts["updated"]
            counts.update(
                created=len(new),
                updated=len(updated),
                unchanged=max(0, counts["unchanged"] - earlier),
            )
            changed[entity] = sorted(new | updated)
            created[entity] = sorted(new)
        return changed, created

    def _import(
        self,
        job_id: int,
        target: SyncTarget,
        user: User,
        sides: _Sides,
        plans: dict[str, FromSheetPlan],
        tabs: dict[str, TabData | None],
        pending: _Pending,
    ) -> tuple[
        dict[str, list[int]],
        dict[str, list[int]],
        dict[str, dict[tuple[int, int], Cell]],
    ]:
        """Apply the plans, store the new snapshots and the new records' rows
        as pending, in one transaction; the IDs of the records changed, of
        those created, and the cells that put the new records' IDs (and an ID
        header) in the sheet, by tab."""
        changed: dict[str, list[int]] = {}
        created: dict[str, list[int]] = {}
        id_cells: dict[str, dict[tuple[int, int], Cell]] = {}
        with self.db.session() as session:
            book = Book(session, user)
            policies = plans[POLICIES.tab]
            book.lock_numbers(
                str(values["policy_number"])
                for values in [*policies.updates.values()]
                + [new.values for new in policies.creates]
                if values.get("policy_number") is not None
            )
            for mapping in MAPPINGS:
                plan, app = plans[mapping.tab], sides.app[mapping.tab]
                entity = ENTITY[mapping.tab]
                importer = _Importer(
                    book,
                    mapping,
                    plan,
                    sides.versions[mapping.tab],
                    _Audit(target.id, job_id, entity, app),
                    sides.base[mapping.tab],
                )
                importer.run()
                changed[entity] = importer.changed
                created[entity] = importer.created
                session.flush()
                _Remembered.of(
                    target.id,
                    mapping,
                    plan,
                    importer.snapshots,
                    sides.base[mapping.tab],
                    pending.lost[mapping.tab],
                ).store(session.connection(), job_id)
                if importer.id_cells:
                    rows = tabs[mapping.tab]
                    assert rows is not None  # rows were created from it
                    session.add_all(
                        PendingId(
                            target_id=target.id,
                            entity=entity,
                            record_id=record_id,
                            row=row,
                            id_column=column,
                            values=row_values(
                                mapping, rows.rows[0], rows.rows[row - 1]
                            ),
                            job_id=job_id,
                        )
                        for (row, column), record_id in importer.id_cells.items()
                    )
                if importer.id_cells or plan.id_cell_changes.cells:
                    id_cells[mapping.tab] = {
                        **plan.id_cell_changes.cells,
                        **importer.filled_in,
                        **importer.id_cells,
                    }
        return changed, created, id_cells

    # -- loading and storing --------------------------------------------------

    def _numbers_elsewhere(
        self, plan: ToSheetPlan, policies: dict[int, Record]
    ) -> set[str]:
        """The policy numbers that sheet edits and new rows give, which
        policies outside the book have, in no case (:func:`fold_number`)."""
        wanted = {fold_number(number) for number in _numbers_given(plan)}
        if not wanted:
            return set()
        with self.db.read_session() as session:
            holders = session.execute(
                select(Policy.id, Policy.policy_number_key).where(
                    Policy.policy_number_key.in_(wanted)
                )
            )
            return {
                key for record_id, key in holders if key and record_id not in policies
            }

    def _read_sheet(
        self, progress: _Progress, target: SyncTarget
    ) -> tuple[SheetBackend, dict[str, TabData | None], _Pending]:
        """One read of every tab the sync needs, as it reads once the IDs an
        import may not have written are in their rows (see
        :mod:`~sheetbridge.sync.pending_ids`)."""
        backend = self.backend_for(target, progress)
        progress.report("reading")
        with _sheet_errors():
            tabs = backend.read_tabs([mapping.tab for mapping in MAPPINGS])
        rows = sum(len(tab.rows[1:]) for tab in tabs.values() if tab is not None)
        progress.report("comparing", rows_read=rows)
        pending = _Pending()
        with self.db.read_session() as session:
            stored = session.scalars(
                select(PendingId).where(PendingId.target_id == target.id)
            ).all()
        for mapping in MAPPINGS:
            entries = [
                PendingRow(p.id, p.record_id, p.row, p.id_column, p.values)
                for p in stored
                if p.entity == ENTITY[mapping.tab]
            ]
            found = find_rows(mapping, tabs[mapping.tab], entries)
            tabs[mapping.tab] = found.tab
            pending.cells[mapping.tab] = found.cells
            pending.lost[mapping.tab] = found.lost
            pending.unsure[mapping.tab] = found.unsure
            pending.settled += found.settled
        return backend, tabs, pending

    def _load(self, context: JobContext) -> tuple[SyncTarget, User]:
        with self.db.read_session() as session:
            target = session.get(SyncTarget, context.payload["target_id"])
            user = session.get(User, context.payload["user_id"])
        if target is None or user is None:
            raise PermanentJobError("the sync target or its user no longer exists")
        return target, user

    def _sides(self, target: SyncTarget, user: User, pending: _Pending) -> _Sides:
        """The book as the app has it and as last synced; a record created by
        an import whose row was not found again counts as never synced, and
        one whose row cannot be recognised this time is left out."""
        with self.db.read_session() as session:
            app, versions = book_records(session, user)
            base: dict[str, dict[int, Record]] = {CUSTOMERS.tab: {}, POLICIES.tab: {}}
            # Plain rows: a big book has a snapshot per record, and ORM objects
            # for each would cost more than the rest of the comparison.
            snapshots = session.execute(
                select(
                    SyncSnapshot.entity, SyncSnapshot.record_id, SyncSnapshot.fields
                ).where(SyncSnapshot.target_id == target.id)
            )
            tab_of = {entity: tab for tab, entity in ENTITY.items()}
            left_out = {tab: pending.lost[tab] | pending.unsure[tab] for tab in base}
            for entity, record_id, fields in snapshots:
                tab = tab_of[entity]
                if record_id not in left_out[tab]:
                    base[tab][record_id] = dict(fields)
        for tab, unsure in pending.unsure.items():
            for record_id in unsure:
                app[tab].pop(record_id, None)
        return _Sides(app, base, versions)


_SNAPSHOTS: Table = SyncSnapshot.__table__  # type: ignore[assignment]
_OF_TAB = (
    _SNAPSHOTS.c.target_id == bindparam("of_target"),
    _SNAPSHOTS.c.entity == bindparam("of_entity"),
)
_DROP_SNAPSHOTS = delete(_SNAPSHOTS).where(
    *_OF_TAB, _SNAPSHOTS.c.record_id.in_(bindparam("records", expanding=True))
)
_CHANGE_SNAPSHOT = (
    update(_SNAPSHOTS)
    .where(*_OF_TAB, _SNAPSHOTS.c.record_id == bindparam("of_record"))
    .values(fields=bindparam("new_fields"), synced_at=bindparam("at"))
)


_PENDING: Table = PendingId.__table__  # type: ignore[assignment]
_SETTLE = delete(_PENDING).where(
    _PENDING.c.id.in_(bindparam("settled", expanding=True))
    | (_PENDING.c.job_id == bindparam("job"))
)


@dataclass(frozen=True)
class _Remembered:
    """What a sync stores of one tab as it ends, worked out before its write
    transaction: the snapshots that differ from the ones it read (a big book
    changes a few records a sync, not thousands), and the conflicts it found."""

    target_id: int
    entity: str
    dropped: list[int]
    new: list[dict[str, Any]]
    changed: list[dict[str, Any]]
    conflicts: list[Conflict]
    seen: frozenset[int]

    @classmethod
    def of(
        cls,
        target_id: int,
        mapping: TabMapping,
        plan: ToSheetPlan | FromSheetPlan,
        snapshots: dict[int, Record],
        base: dict[int, Record],
        lost: set[int],
    ) -> _Remembered:
        """What both sides now agree on (``snapshots``) against what the sync
        read (``base``); the snapshots of ``lost`` records are forgotten
        (created by an import, their rows not found again: see
        :mod:`~sheetbridge.sync.pending_ids`)."""
        entity = ENTITY[mapping.tab]
        dropped = set(lost)
        if isinstance(plan, ToSheetPlan):
            dropped |= plan.drop_snapshots
        now = clock.now()
        return cls(
            target_id=target_id,
            entity=entity,
            dropped=sorted(dropped),
            new=[
                {
                    "target_id": target_id,
                    "entity": entity,
                    "record_id": record_id,
                    "fields": fields,
                    "synced_at": now,
                }
                for record_id, fields in snapshots.items()
                if record_id not in base
            ],
            changed=[
                {
                    "of_target": target_id,
                    "of_entity": entity,
                    "of_record": record_id,
                    "new_fields": fields,
                    "at": now,
                }
                for record_id, fields in snapshots.items()
                if record_id in base and base[record_id] != fields
            ],
            conflicts=plan.conflicts,
            seen=frozenset(snapshots),
        )

    def store(self, connection: Connection, job_id: int) -> None:
        """Store it, with the conflicts that remain, in the caller's
        transaction."""
        tab = {"of_target": self.target_id, "of_entity": self.entity}
        if self.dropped:
            connection.execute(_DROP_SNAPSHOTS, tab | {"records": self.dropped})
        if self.new:
            connection.execute(insert(_SNAPSHOTS), self.new)
        if self.changed:
            connection.execute(_CHANGE_SNAPSHOT, self.changed)
        record_conflicts(
            connection, self.target_id, self.entity, self.conflicts, self.seen, job_id
        )


@dataclass
class _Audit:
    """Records what an import changed, field by field, so it can be undone.

    The changes are kept in order and written in one batch by :meth:`save`,
    in the import's transaction.
    """

    target_id: int
    job_id: int
    entity: str
    before: dict[int, Record]
    changes: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def updated(self, record_id: int, after: Record, fields: Record) -> None:
        before = self.before.get(record_id, {})
        for name in fields:
            if before.get(name) != after.get(name):
                self._add(record_id, name, before.get(name), after.get(name))

    def created(self, record_id: int, values: Record) -> None:
        """A new record, with the values it was created with: an undo deletes
        it only while it holds them (and this import's later changes)."""
        self._add(record_id, CREATED, None, values)

    def save(self, session: Session) -> None:
        if self.changes:
            session.execute(insert(ImportChange), self.changes)

    def _add(self, record_id: int, name: str, before: Any, after: Any) -> None:
        self.changes.append(
            {
                "job_id": self.job_id,
                "target_id": self.target_id,
                "entity": self.entity,
                "record_id": record_id,
                "field": name,
                "before": before,
                "after": after,
            }
        )


class _Importer:
    """Applies one tab's from-sheet plan to the app, row by row.

    Each row runs in a savepoint, so a row the domain rejects (a policy number
    already used, a customer not in the book) is reported and skipped while
    the others import.
    """

    def __init__(
        self,
        book: Book,
        mapping: TabMapping,
        plan: FromSheetPlan,
        versions: dict[int, int],
        audit: _Audit,
        base: dict[int, Record],
    ) -> None:
        self.book = book
        self.mapping = mapping
        self.plan = plan
        self.versions = versions
        self.audit = audit
        self.base = base  # the records' last-synced values
        self.snapshots: dict[int, Record] = dict(plan.snapshots)
        self.id_cells: dict[tuple[int, int], Any] = {}
        # The new rows' blank cells of columns the app fills in (an agent).
        self.filled_in: dict[tuple[int, int], Cell] = {}
        self.changed: list[int] = []
        self.created: list[int] = []
        self.rows = {issue.row for issue in plan.issues if issue.row is not None}
        self._loaded: list[Any] = []

    def run(self) -> None:
        # The plan counts what it intends; count what the app accepted instead.
        self.plan.counts["updated"] = 0
        self.plan.counts["created"] = 0
        # The session holds records only while something else does.
        self._loaded = self._load(self.plan.updates)
        moving = self._numbers_moving()
        for record_id, values in self.plan.updates.items():
            if record_id not in moving:
                self._update(record_id, values)
        if moving:
            self._update_together(moving)
        for new_row in self.plan.creates:
            self._create(new_row)
        self.audit.save(self.book.session)

    def _load(self, record_ids: Iterable[int]) -> list[Any]:
        """Load the records to update in a few queries instead of one each,
        locked until the import ends (on PostgreSQL; SQLite has one writer at
        a time): a save arriving from elsewhere meanwhile waits, so the
        versions checked here are the ones the import writes over."""
        model: Any = Customer if self.mapping is CUSTOMERS else Policy
        ids = sorted(record_ids)
        loaded: list[Any] = []
        for start in range(0, len(ids), _LOAD_BATCH):
            batch = ids[start : start + _LOAD_BATCH]
            loaded += self.book.session.scalars(
                select(model)
                .where(model.id.in_(batch))
                .order_by(model.id)
                .with_for_update(of=model)
            ).unique()
        return loaded

    def _numbers_moving(self) -> list[int]:
        """Policies taking a number another policy of this import gives up
        (rows that swap their numbers, or pass them along), and those giving
        it up: they are updated together, in the order of the plan."""
        if self.mapping is not POLICIES:
            return []
        wanted = {
            record_id: values["policy_number"]
            for record_id, values in self.plan.updates.items()
            if "policy_number" in values
        }
        if len(wanted) < 2:
            return []
        held = {p.id: p.policy_number for p in self._loaded if p.id in wanted}
        moving = Book.trading_numbers(wanted, held)
        return [record_id for record_id in wanted if record_id in moving]

    def _update_together(self, moving: list[int]) -> None:
        """Update the policies ``moving`` numbers among themselves all at once;
        if any of them cannot be, each alone, which tells why."""
        updates = self.plan.updates
        done: dict[int, Customer | Policy] = {}
        try:
            with self.book.session.begin_nested():
                self.book.free_policy_numbers(moving)
                for record_id in moving:
                    done[record_id] = self._apply(record_id, updates[record_id])
        except (DomainError, ValidationError, IntegrityError):
            for record_id in moving:
                self._update(record_id, updates[record_id], trading=set(moving))
            return
        for record_id, record in done.items():
            self._updated(record_id, record, updates[record_id])

    def _update(
        self,
        record_id: int,
        values: Record,
        *,
        trading: Collection[int] = (),
        merged_again: bool = False,
    ) -> None:
        """Update one record, or tell why not. ``trading``: policies whose
        numbers move among themselves in this import, which could not all
        be updated together. ``merged_again``: ``values`` are what is left
        once an app edit since the plan was merged in."""
        try:
            record = self._apply(record_id, values)
        except StaleVersion as stale:
            if stale.current is None or merged_again:
                self.snapshots.pop(record_id, None)
                self._edited_meanwhile(record_id)
            else:
                self._merge_again(record_id, values, stale.current, trading)
            return
        except (DomainError, ValidationError) as exc:
            self.snapshots.pop(record_id, None)
            self._reject(
                self._row_of(record_id),
                exc,
                values,
                _held_back(exc, trading, self.plan.rows),
            )
            return
        self._updated(record_id, record, values)

    def _merge_again(
        self,
        record_id: int,
        values: Record,
        current: Customer | Policy,
        trading: Collection[int],
    ) -> None:
        """The app changed the record after the plan read it: import what the
        app left alone, and report each field both changed as a conflict now
        rather than leave the whole record to the next sync."""
        old = self.base.get(record_id)
        take, conflicted = merge_again(
            self.plan,
            self.mapping,
            record_id,
            values,
            (self.audit.before.get(record_id, {}), self._record(current)),
            old,
        )
        # A field in conflict keeps its last-synced value, to be found again.
        snapshot = self.snapshots[record_id] = dict(self.snapshots[record_id])
        for name in conflicted:
            if old is not None and name in old:
                snapshot[name] = old[name]
            else:
                snapshot.pop(name, None)
        self.versions[record_id] = current.version
        if take:
            self._update(record_id, take, trading=trading, merged_again=True)

    def _apply(self, record_id: int, values: Record) -> Customer | Policy:
        """Update the record in a savepoint of its own; raises what refused it."""
        fields = to_python(self.mapping, values)
        version = self.versions[record_id]
        with self.book.session.begin_nested():
            if self.mapping is CUSTOMERS:
                return self.book.update_customer(
                    record_id, CustomerUpdate(version=version, **fields)
                )
            return self.book.update_policy(
                record_id, PolicyUpdate(version=version, **fields)
            )

    def _updated(
        self, record_id: int, record: Customer | Policy, values: Record
    ) -> None:
        self.changed.append(record_id)
        self.plan.counts["updated"] += 1
        after = self._record(record)
        # Only the imported fields now agree with the sheet; an app edit still
        # waiting to be written there keeps its old base, or the next import
        # would take the sheet's stale value for a sheet edit.
        agreed = self.snapshots.get(record_id, {})
        self.snapshots[record_id] = {
            **agreed,
            **{name: after.get(name) for name in values},
        }
        self.audit.updated(record_id, after, values)

    def _create(self, new_row: NewRow) -> None:
        session = self.book.session
        row, values = new_row.row, new_row.values
        fields = to_python(self.mapping, values)
        try:
            with session.begin_nested():
                if self.mapping is CUSTOMERS:
                    created: Any = self.book.create_customer(CustomerCreate(**fields))
                else:
                    created = self.book.create_policy(PolicyCreate(**fields))
        except (DomainError, ValidationError) as exc:
            self._reject(row, exc, values)
            return
        self.changed.append(created.id)
        self.created.append(created.id)
        self.snapshots[created.id] = self._record(created)
        self.audit.created(created.id, self.snapshots[created.id])
        self.id_cells[(row, self.plan.id_column)] = created.id
        for name, column in new_row.blank.items():
            value = self.snapshots[created.id].get(name)
            if value is not None:
                self.filled_in[(row, column)] = render_cell(self._column(name), value)
        self.plan.counts["created"] += 1

    def _column(self, name: str) -> Column:
        return next(c for c in self.mapping.columns if c.field == name)

    def _record(self, row: Any) -> Record:
        return customer_record(row) if self.mapping is CUSTOMERS else policy_record(row)

    def _row_of(self, record_id: int) -> int | None:
        return self.plan.rows.get(record_id)

    def _edited_meanwhile(self, record_id: int) -> None:
        self.plan.issues.append(
            Issue(
                tab=self.mapping.tab,
                row=self._row_of(record_id),
                column=None,
                value=None,
                reason="edited in the app while this sync ran; left as it is and "
                "compared again on the next sync",
                kind="conflict",
            )
        )
        self.plan.counts["conflicts"] = self.plan.counts.get("conflicts", 0) + 1

    def _reject(
        self, row: int | None, exc: Exception, values: Record, why: str = ""
    ) -> None:
        for field, reason in _reasons(exc):
            column = next(
                (c.header for c in self.mapping.columns if c.field == field), field
            )
            self.plan.issues.append(
                Issue(
                    tab=self.mapping.tab,
                    row=row,
                    column=column,
                    value=_text_of(values.get(field or "")),
                    reason=f"{reason}{why}; nothing of this row was imported",
                    kind="error",
                )
            )
        self.plan.counts["errors"] = self.plan.counts.get("errors", 0) + 1


def _held_back(exc: Exception, trading: Collection[int], rows: dict[int, int]) -> str:
    """Why a number another policy of the same import gives up is still
    taken: that policy's row could not be imported."""
    if not isinstance(exc, NumberTaken) or exc.holder not in trading:
        return ""
    row = rows.get(exc.holder)
    where = f" (row {row})" if row is not None else ""
    return (
        f", whose row{where} gives it up in the sheet but could not be imported "
        "itself: fix that row"
    )


# Why the import would refuse a record: the field named (if any), in words.
Refusal = tuple[str | None, str]


@dataclass
class _Pending:
    """Rows of records an import created, found again in the sheet read:
    the cells that put their IDs in, by tab; the records found nowhere, and
    those whose rows cannot be recognised this time, by tab; and the stored
    entries done with once the sync succeeds."""

    cells: dict[str, dict[tuple[int, int], Cell]] = dataclasses.field(
        default_factory=dict
    )
    lost: dict[str, set[int]] = dataclasses.field(
        default_factory=lambda: defaultdict(set)
    )
    unsure: dict[str, set[int]] = dataclasses.field(
        default_factory=lambda: defaultdict(set)
    )
    settled: list[int] = dataclasses.field(default_factory=list)

    def with_ids(self, tab: str, changes: TabChanges) -> TabChanges:
        """``changes`` and the cells that write the found rows' IDs."""
        cells = self.cells.get(tab)
        if not cells:
            return changes
        return dataclasses.replace(changes, cells={**cells, **changes.cells})

    def settle(self, connection: Connection, job_id: int) -> None:
        """Forget the entries this sync found, and those the job stored: its
        writes, IDs included, are done."""
        connection.execute(_SETTLE, {"settled": self.settled, "job": job_id})


@dataclass(frozen=True)
class _Sides:
    """A user's book by tab, as the app has it and as last synced: record ID
    to fields, and the app's record versions."""

    app: dict[str, dict[int, Record]]
    base: dict[str, dict[int, Record]]
    versions: dict[str, dict[int, int]]


def _refuse_shared(
    session: Session, target: SyncTarget, spreadsheet_id: str, by: User
) -> None:
    """Refuse a spreadsheet another user's book syncs with, naming that user
    to an admin only."""
    owner = session.scalar(
        select(User.username)
        .join(SyncTarget, SyncTarget.user_id == User.id)
        .where(
            SyncTarget.backend == GOOGLE,
            SyncTarget.location == spreadsheet_id,
            SyncTarget.id != target.id,
        )
        .limit(1)
    )
    if owner is None:
        return
    whose = f"{owner}'s" if by.is_admin else "another user's"
    raise InvalidField(
        "spreadsheet_id",
        f"is already the sheet of {whose} book; each book needs a spreadsheet "
        "of its own",
    )


def _require_tabs(
    backend: SheetBackend, tabs: dict[str, TabData | None], *, synced: bool
) -> None:
    """Refuse an import from a workbook or tabs that are not there; a book
    never ``synced`` to its workbook is told to write it first."""
    if _workbook_gone(backend):
        if not synced:
            raise PermanentJobError(
                f"{backend.location} does not exist yet: this book was never "
                "synced to it. Run Sync to sheet first to write it. Nothing was "
                "imported."
            )
        raise PermanentJobError(
            f"{backend.location} does not exist: was the workbook moved or "
            "deleted? Put it back, or run Sync to sheet to write it anew. "
            "Nothing was imported."
        )
    missing = [mapping.tab for mapping in MAPPINGS if tabs[mapping.tab] is None]
    if not missing:
        return
    names = " and ".join(repr(tab) for tab in missing)
    tab, it, was = (
        ("tabs", "they", "were") if len(missing) > 1 else ("tab", "it", "was")
    )
    them = "them" if len(missing) > 1 else "it"
    if not synced:
        raise PermanentJobError(
            f"{backend.location} has no {tab} {names} yet: this book was never "
            f"synced to it. Run Sync to sheet first to write {them}. Nothing was "
            "imported."
        )
    raise PermanentJobError(
        f"{backend.location} has no {tab} {names}: {was} {it} renamed or "
        f"deleted? Rename {them} back, or run Sync to sheet to write {them} anew "
        f"(edits made in a renamed tab are then not imported). Nothing was "
        "imported."
    )


def _workbook_gone(backend: SheetBackend) -> bool:
    return isinstance(backend, XlsxBackend) and not backend.path.exists()


def _text_of(value: object) -> str | None:
    return None if value is None else str(value)


def _tell_refused(
    mapping: TabMapping,
    plan: ToSheetPlan,
    app: dict[str, dict[int, Record]],
    elsewhere: set[str],
) -> None:
    """Sheet edits and new rows still to import that the import would refuse
    are errors to fix in the sheet, not changes waiting for a sync from the
    sheet, which would only refuse them again. ``elsewhere`` are the policy
    numbers they give that policies outside the book have, in no case."""
    customers = app[CUSTOMERS.tab]
    _tell_refused_edits(mapping, plan)
    _tell_refused_records(mapping, plan, app[mapping.tab], customers)
    taken = (
        _tell_numbers_taken(plan, app[POLICIES.tab], elsewhere)
        if mapping is POLICIES
        else {}
    )
    _tell_refused_new_rows(mapping, plan, customers, taken)


def _refuse_numbers_given_twice(plan: FromSheetPlan) -> None:
    """Refuse, before importing any, every row of an import that gives a policy
    number another row of it gives too (a new row, or a number edited), each
    naming the others: importing the first would make the rest refused in
    favour of a policy the same import made, by order of rows."""
    # Rows by the number they give, in no case: "ab-1" is "AB-1".
    rows: dict[str, list[tuple[int, Canonical]]] = defaultdict(list)
    for record_id, fields in plan.updates.items():
        number = fields.get("policy_number")
        if number is not None:
            rows[fold_number(str(number))].append((plan.rows[record_id], number))
    for new in plan.creates:
        number = new.values.get("policy_number")
        if number is not None:
            rows[fold_number(str(number))].append((new.row, number))
    refused: dict[int, tuple[str, str]] = {}
    for given in rows.values():
        if len(given) < 2:
            continue
        for row, number in given:
            others = ", ".join(f"row {other}" for other, _ in given if other != row)
            refused[row] = (
                str(number),
                f"policy number {shown(number)} is already used by {others}; "
                "nothing of this row was imported",
            )
    if not refused:
        return
    for record_id in [r for r in plan.updates if plan.rows[r] in refused]:
        del plan.updates[record_id]
        plan.snapshots.pop(record_id, None)  # still as last synced
        plan.counts["updated"] -= 1
    creates = [new for new in plan.creates if new.row not in refused]
    plan.counts["created"] -= len(plan.creates) - len(creates)
    plan.creates[:] = creates
    for row, (number, why) in sorted(refused.items()):
        plan.issues.append(
            Issue(POLICIES.tab, row, _NUMBER_HEADER, number, why, kind="error")
        )
        plan.counts["errors"] += 1


_NUMBER_HEADER = next(c.header for c in POLICIES.columns if c.field == "policy_number")


def _tell_blocked_edits(plan: ToSheetPlan) -> None:
    """A sheet edit in a row with errors waits for them to be fixed: the
    import skips the row as a whole."""
    rows = {issue.row for issue in plan.issues if issue.kind == "error"}
    for index, issue in enumerate(plan.issues):
        if issue.kind == "pending_import" and issue.column and issue.row in rows:
            plan.issues[index] = dataclasses.replace(
                issue,
                reason="edited in the sheet; imported once the errors in this "
                "row are fixed (an import skips a row with errors)",
            )


@dataclass
class _PendingEdit:
    """A sheet edit waiting for the import: its issue, record, column and value
    as the import will read it."""

    index: int
    record_id: int
    column: Column
    value: Canonical


def _pending_edits(mapping: TabMapping, plan: ToSheetPlan) -> list[_PendingEdit]:
    by_header = {column.header: column for column in mapping.columns}
    record_of = {row: record_id for record_id, row in plan.rows.items()}
    pending = []
    for index, issue in enumerate(plan.issues):
        column = by_header.get(issue.column or "")
        record_id = record_of.get(issue.row or 0)
        if issue.kind != "pending_import" or column is None or record_id is None:
            continue
        edits = plan.edits.get(record_id, {})
        if column.field in edits:
            pending.append(_PendingEdit(index, record_id, column, edits[column.field]))
    return pending


def _tell_refused_edits(mapping: TabMapping, plan: ToSheetPlan) -> None:
    """Each edited cell checked alone, as the record's schema checks it (a
    state "12", a negative premium)."""
    schema = CustomerUpdate if mapping is CUSTOMERS else PolicyUpdate
    for edit in _pending_edits(mapping, plan):
        try:
            schema.model_validate(
                {"version": 1, **to_python(mapping, {edit.column.field: edit.value})}
            )
        except ValidationError as exc:
            reason = "; ".join(why for _, why in _reasons(exc))
        else:
            continue
        _pending_to_error(plan, edit.index, f"cannot be imported: {reason}")


def _tell_refused_records(
    mapping: TabMapping,
    plan: ToSheetPlan,
    records: dict[int, Record],
    customers: Collection[int],
) -> None:
    """A row's edits, which pass one by one, checked together with the rest of
    their record (an expiration date before the effective date, a customer
    that is not in the book)."""
    schema = CustomerCreate if mapping is CUSTOMERS else PolicyCreate
    by_record: dict[int, list[_PendingEdit]] = defaultdict(list)
    for edit in _pending_edits(mapping, plan):
        by_record[edit.record_id].append(edit)
    for record_id, edits in by_record.items():
        record = records.get(record_id)
        if record is None:
            continue
        edited = record | {edit.column.field: edit.value for edit in edits}
        refusals = _record_refusals(schema, mapping, edited, customers)
        if refusals:
            _refuse_pending(plan, edits, refusals)


def _tell_numbers_taken(
    plan: ToSheetPlan, policies: dict[int, Record], elsewhere: set[str]
) -> dict[int, list[Refusal]]:
    """A policy number a sheet edit or a new row gives a policy while another
    policy has it (in any case), or will after the import: one of the book
    (named) or of another (not named). Edits are told at once; the new rows'
    refusals are returned by row."""
    holders: dict[str, list[str]] = defaultdict(list)

    def key(number: Canonical) -> str:
        return "" if number is None else fold_number(str(number))

    for record_id, record in policies.items():
        number = plan.edits.get(record_id, {}).get(
            "policy_number", record.get("policy_number")
        )
        row = plan.rows.get(record_id)
        holders[key(number)].append(f"row {row}" if row else f"policy {record_id}")
    for new in plan.new_rows:
        holders[key(new.values.get("policy_number"))].append(f"row {new.row}")

    def used(number: Canonical, here: str) -> str | None:
        others = [where for where in holders[key(number)] if where != here]
        if number is None or not (others or key(number) in elsewhere):
            return None
        if not others:
            return f"policy number {shown(number)} is already used"
        return f"policy number {shown(number)} is already used by {', '.join(others)}"

    for edit in _pending_edits(POLICIES, plan):
        if edit.column.field == "policy_number":
            why = used(edit.value, f"row {plan.rows[edit.record_id]}")
            if why:
                _pending_to_error(plan, edit.index, f"cannot be imported: {why}")
    taken: dict[int, list[Refusal]] = {}
    for new in plan.new_rows:
        why = used(new.values.get("policy_number"), f"row {new.row}")
        if why:
            taken[new.row] = [("policy_number", why)]
    return taken


def _tell_refused_new_rows(
    mapping: TabMapping,
    plan: ToSheetPlan,
    customers: Collection[int],
    taken: dict[int, list[Refusal]],
) -> None:
    """Rows typed into the sheet, checked as the records they would create."""
    schema = CustomerCreate if mapping is CUSTOMERS else PolicyCreate
    header = {column.field: column.header for column in mapping.columns}
    for new in plan.new_rows:
        refusals = _record_refusals(schema, mapping, new.values, customers)
        refusals += taken.get(new.row, [])
        if not refusals:
            continue
        plan.issues = [
            issue
            for issue in plan.issues
            if not (issue.kind == "pending_import" and issue.row == new.row)
        ]
        plan.issues.extend(
            Issue(
                tab=mapping.tab,
                row=new.row,
                column=header.get(field or "", field),
                value=_text_of(new.values.get(field or "")),
                reason=f"a new row that cannot be imported: {reason}; "
                "fix it in the sheet",
                kind="error",
            )
            for field, reason in refusals
        )
        plan.counts["pending_import"] -= 1
        plan.counts["errors"] += 1


def _record_refusals(
    schema: type[CustomerCreate] | type[PolicyCreate],
    mapping: TabMapping,
    record: Record,
    customers: Collection[int],
) -> list[Refusal]:
    try:
        schema.model_validate(to_python(mapping, record))
    except ValidationError as exc:
        return _reasons(exc)
    customer_id = record.get("customer_id")
    if mapping is POLICIES and customer_id not in customers:
        return [("customer_id", f"there is no customer {customer_id} in your book")]
    return []


def _refuse_pending(
    plan: ToSheetPlan, edits: list[_PendingEdit], refusals: list[Refusal]
) -> None:
    """Tell a row's pending edits as errors: those of the fields refused, or
    all of them when the refusal names a field the sheet did not edit."""
    refused = {field for field, _ in refusals}
    named = [edit for edit in edits if edit.column.field in refused]
    reason = "; ".join(why for _, why in refusals)
    for edit in named or edits:
        _pending_to_error(plan, edit.index, f"the record cannot take it: {reason}")


def _pending_to_error(plan: ToSheetPlan, index: int, why: str) -> None:
    """Tell a pending sheet edit as an error the import would make of it."""
    plan.issues[index] = dataclasses.replace(
        plan.issues[index],
        reason=f"edited in the sheet, but {why}; fix it in the sheet",
        kind="error",
    )
    plan.counts["pending_import"] -= 1
    plan.counts["errors"] += 1


def _reasons(exc: Exception) -> list[Refusal]:
    if isinstance(exc, ValidationError):
        return [
            (
                str(error["loc"][0]) if error["loc"] else None,
                error_message(error),
            )
            for error in exc.errors()
        ]
    field = getattr(exc, "field", None)
    return [(field, getattr(exc, "message", str(exc)))]


def _tell_lost(
    mapping: TabMapping, plan: ToSheetPlan | FromSheetPlan, lost: Iterable[int]
) -> None:
    """A record an import created whose row, its ID never written there, was
    not found again: the record stays, and the user may want to merge it with
    a row's new record (see :mod:`~sheetbridge.sync.pending_ids`)."""
    entity = ENTITY[mapping.tab]
    for record_id in sorted(lost):
        plan.issues.append(
            Issue(
                mapping.tab,
                None,
                mapping.id_header,
                str(record_id),
                f"{entity} {record_id} was created from a row whose ID an earlier "
                "import could not write, and that row could not be found again "
                "(changed past recognition or deleted since): the record stays "
                "as it was, and a sync to the sheet writes it as a new row. If a "
                "row imported as a new record is this one, edited, keep one of "
                "the two",
                "warning",
            )
        )


def _tell_written_anew(mapping: TabMapping, plan: ToSheetPlan) -> None:
    """A tab synced before was gone, and is written whole again: a renamed
    one keeps its edits, which no import takes from there."""
    plan.issues.append(
        Issue(
            mapping.tab,
            None,
            None,
            None,
            f"tab {mapping.tab!r} was synced before but was not in the sheet: it "
            "was written anew. If it was renamed, edits made in it since the "
            "last sync are not imported from there: type them into this tab, "
            "then delete the renamed one",
            "warning",
        )
    )


def _tell_gone_before_write_back(
    mapping: TabMapping,
    plan: ToSheetPlan,
    asked: Iterable[int],
    app: dict[str, dict[int, Record]],
) -> None:
    """A record asked to be written back that left the book since the ask:
    told first, as the answer to the ask (a result lists 500 issues a tab)."""
    told = []
    for record_id in sorted(set(asked) - app[mapping.tab].keys()):
        told.append(
            Issue(
                mapping.tab,
                None,
                None,
                str(record_id),
                f"record {record_id} {LEFT_THE_BOOK} before it could be written "
                "back; nothing was written for it",
                "deleted_in_app",
            )
        )
    plan.issues[:0] = told
    plan.counts["deleted_in_app"] += len(told)


def left_out_message(left_out: dict[str, list[int]]) -> str:
    """What a write-back that left records out says of them."""
    return f"{_not_in_books(left_out)}; the rest will be written back"


def _not_in_books(left_out: dict[str, list[int]]) -> str:
    return "; ".join(_not_in_book(ENTITY[tab], ids) for tab, ids in left_out.items())


def _not_in_book(entity: str, unknown: list[int]) -> str:
    if len(unknown) == 1:
        return f"{entity} {unknown[0]} is not in your book"
    shown = ", ".join(str(record_id) for record_id in unknown[:5])
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    return f"{entity} records {shown}{more} are not in your book"


def _database_errors_retry(handler: Handler) -> Handler:
    """A database that is briefly unreachable or busy is worth another attempt."""

    @functools.wraps(handler)
    def run(context: JobContext) -> dict[str, Any]:
        try:
            return handler(context)
        except (OperationalError, SATimeoutError) as exc:
            raise RetryableJobError(f"database busy or unreachable: {exc}") from exc

    return run


@contextmanager
def _sheet_errors(also: str = "") -> Iterator[None]:
    """Turn sheet failures into the queue's retry or fail signals, their
    message followed by ``also``."""
    try:
        yield
    except SheetError as exc:
        if exc.transient:
            retry_after_s = getattr(exc, "retry_after", None)
            raise RetryableJobError(
                f"{exc}{also}", retry_after_s=retry_after_s
            ) from exc
        raise PermanentJobError(f"{exc}{also}") from exc
    except OSError as exc:
        if (reason := _UNUSABLE_PATH.get(exc.errno or 0)) is not None:
            where = f" {exc.filename}" if exc.filename else ""
            raise PermanentJobError(
                f"the workbook{where} cannot be used: {reason}{also}"
            ) from exc
        raise RetryableJobError(f"workbook not accessible: {exc}{also}") from exc


# Paths no retry mends: a person has to change the path or its links.
_UNUSABLE_PATH = {
    errno.ELOOP: "its links lead round in a loop; point the link at the workbook",
    errno.ENOTDIR: "a folder on its path is a file",
    errno.EISDIR: "it is a folder, not a workbook",
    errno.ENAMETOOLONG: "its path is too long",
}


class _Progress:
    """A sync job's progress reports: the phase and every count so far.

    Each report repeats the counts of the phases before it, so the status
    endpoint shows all of them whatever phase the job is in.
    """

    def __init__(self, context: JobContext) -> None:
        self.context = context
        self.counts: dict[str, Any] = {}
        self.phase: tuple[str, int, int] | None = None  # with its done and total

    def report(self, phase: str, done: int = 0, total: int = 0, **counts: Any) -> None:
        """Report at a safe point: a cancel requested meanwhile stops the job."""
        self.counts.update(counts)
        self.phase = (phase, done, total)
        self.context.progress(phase, done, total, **self.counts)

    def note(self, phase: str, **details: Any) -> None:
        """Report a passing state (a quota wait, a retry) without keeping it:
        the phase it came ``during`` stays where an attempt ended there
        stopped."""
        if self.phase is None:
            self.context.progress(phase, **{**self.counts, **details})
            return
        during, done, total = self.phase
        self.context.progress(
            phase, done, total, during=during, **{**self.counts, **details}
        )

    def finished(self, phase: str, done: int, total: int, **counts: Any) -> None:
        """Report work that is done and cannot be taken back: a cancel requested
        now comes too late to stop anything, so it is not acted on here."""
        self.counts.update(counts)
        self.phase = (phase, done, total)
        self.context.progress(
            phase, done, total, stop_if_cancelled=False, **self.counts
        )


def _quota_reporter(progress: _Progress | None) -> Callable[[float], None] | None:
    if progress is None:
        return None
    return lambda wait_s: progress.note("waiting for quota", wait_s=round(wait_s, 1))


def _retry_reporter(
    progress: _Progress | None,
) -> Callable[[int, float, BaseException], None] | None:
    """Each retry of a call to the sheet, counted over the whole attempt: the
    write's first retry after two of the read's is its third."""
    if progress is None:
        return None
    retries = itertools.count(1)
    return lambda attempt, delay_s, error: progress.note(
        "retrying", retries=next(retries), reason=str(error), delay_s=round(delay_s, 1)
    )


def _numbers_given(plan: ToSheetPlan) -> list[str]:
    """The policy numbers that a plan's sheet edits and new rows give."""
    given = [edit.get("policy_number") for edit in plan.edits.values()]
    given += [new.values.get("policy_number") for new in plan.new_rows]
    return [str(number) for number in given if number is not None]


def _version(tabs: dict[str, TabData | None]) -> str:
    return next((tab.version for tab in tabs.values() if tab is not None), "")


def _sizes(changes: Iterable[TabChanges]) -> tuple[int, int, int]:
    """Cells, appended rows and deleted rows in ``changes``."""
    cells = appended = deleted = 0
    for tab in changes:
        cells += len(tab.cells)
        appended += len(tab.append)
        deleted += len(tab.delete_rows)
    return cells, appended, deleted


def _rows_with_errors(plans: Iterable[ToSheetPlan | FromSheetPlan]) -> int:
    """Sheet rows with at least one error (the header row aside)."""
    return len(
        {
            (issue.tab, issue.row)
            for plan in plans
            for issue in plan.issues
            if issue.kind == "error" and issue.row is not None and issue.row > 1
        }
    )


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
                "issues": [
                    _issue_shown(issue)
                    for issue in _most_pressing_first(plan.issues)[:MAX_REPORTED_ISSUES]
                ],
                "issues_cut": len(plan.issues) > MAX_REPORTED_ISSUES,
                "conflicts": [
                    _conflict_shown(c) for c in plan.conflicts[:MAX_REPORTED_ISSUES]
                ],
                "conflicts_cut": len(plan.conflicts) > MAX_REPORTED_ISSUES,
                "write_back": plan.can_write_back[:MAX_REPORTED_ISSUES],
                "write_back_cut": len(plan.can_write_back) > MAX_REPORTED_ISSUES,
            }
            for tab, plan in plans.items()
        },
        "summary": _summary(plans),
    }


# The order of a result's issues: what needs a person first, so that a list
# cut short keeps it; each kind in the order the sync found them.
_PRESSING = {"error": 0, "conflict": 1, "warning": 2}


def _most_pressing_first(issues: list[Issue]) -> list[Issue]:
    return sorted(issues, key=lambda issue: _PRESSING.get(issue.kind, len(_PRESSING)))


def brief_result(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """A job's result without its tabs' lists of issues and conflicts, which
    it counts instead: what a list of jobs carries (the status answer, the
    event stream's opening state). One job's own view has the lists."""
    if result is None or "tabs" not in result:
        return result
    tabs = {
        tab: {
            **{k: v for k, v in data.items() if k not in ("issues", "conflicts")},
            "issues_listed": len(data.get("issues", ())),
            "conflicts_listed": len(data.get("conflicts", ())),
        }
        for tab, data in result["tabs"].items()
    }
    return {**result, "tabs": tabs, "brief": True}


def _issue_shown(issue: Issue) -> dict[str, Any]:
    """An issue as a job's result keeps it: its value cut as every value shown
    (the status endpoint and the event stream send each recent job's result)."""
    value = None if issue.value is None else shown(issue.value)
    return asdict(dataclasses.replace(issue, value=value))


def _conflict_shown(conflict: Conflict) -> dict[str, Any]:
    """A conflict as a job's result keeps it: long text cut. The stored
    conflict, which is resolved, keeps its values whole."""
    return {
        **asdict(conflict),
        **{
            side: shown(value) if isinstance(value, str) else value
            for side, value in (
                ("app", conflict.app),
                ("sheet", conflict.sheet),
                ("base", conflict.base),
            )
        },
    }


def _summary(plans: dict[str, Any]) -> dict[str, int]:
    total: dict[str, int] = {}
    for plan in plans.values():
        for name, count in plan.counts.items():
            total[name] = total.get(name, 0) + count
        total["issues"] = total.get("issues", 0) + len(plan.issues)
    return total
