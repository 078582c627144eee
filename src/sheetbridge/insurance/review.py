"""What people review after a sync: conflicts to resolve, imports to undo."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy import (
    Connection,
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session

from sheetbridge import clock
from sheetbridge.insurance.mapping import (
    CUSTOMERS,
    ENTITY,
    POLICIES,
    customer_record,
    policy_record,
    to_python,
)
from sheetbridge.insurance.models import Customer, Policy, User
from sheetbridge.insurance.schemas import CustomerUpdate, PolicyUpdate, error_message
from sheetbridge.insurance.services import (
    RECORD_DELETED,
    Book,
    DomainError,
    InvalidField,
    RecordNotFound,
    StaleVersion,
    close_conflicts_of,
)
from sheetbridge.sync.columns import Canonical
from sheetbridge.sync.engine import Conflict, Record, TabMapping, shown
from sheetbridge.sync.models import (
    ImportChange,
    PendingId,
    SyncConflict,
    SyncSnapshot,
    SyncTarget,
)

CHOICES = ("app", "sheet", "edit")
CREATED = "__created__"
_MAPPING = {ENTITY[m.tab]: m for m in (CUSTOMERS, POLICIES)}


class ReviewError(DomainError):
    """A conflict or import that cannot be acted on as asked."""


class ConflictOutdated(ReviewError):
    """The app's side of a conflict changed after the conflict was found:
    settling it for the sheet or an edit would overwrite what nobody saw."""

    def __init__(self, row: SyncConflict, current: Canonical) -> None:
        super().__init__(
            f"the app's {row.column or row.field} changed after this conflict was "
            f"found: it is now {shown(current)!r}. Nothing was changed; look at "
            "the conflict again and choose."
        )
        self.conflict_id = row.id
        self.current = current


_CONFLICTS: Table = SyncConflict.__table__  # type: ignore[assignment]
# A sync's end runs these while it holds the database's write turn: built once,
# they cost no statement building there.
_OPEN_CONFLICTS = select(
    _CONFLICTS.c.id, _CONFLICTS.c.record_id, _CONFLICTS.c.field
).where(
    _CONFLICTS.c.target_id == bindparam("target"),
    _CONFLICTS.c.entity == bindparam("entity"),
    _CONFLICTS.c.resolved_at.is_(None),
)
# What a conflict found again takes from the sync that found it.
_FOUND = ("column", "row", "app_value", "sheet_value", "base_value", "base_known")
_FOUND_AGAIN = (
    update(_CONFLICTS)
    .where(_CONFLICTS.c.id == bindparam("conflict"))
    .values({name: bindparam(f"new_{name}") for name in (*_FOUND, "job_id")})
)
_CONVERGED = (
    update(_CONFLICTS)
    .where(_CONFLICTS.c.id.in_(bindparam("conflicts", expanding=True)))
    .values(resolved_at=bindparam("at"), resolution="converged")
)


def record_conflicts(
    connection: Connection,
    target_id: int,
    entity: str,
    found: list[Conflict],
    seen: Collection[int],
    job_id: int,
) -> None:
    """Store the conflicts a sync found (one found again keeps its row and
    takes the newest values); close the open ones of the records ``seen``
    that it did not find again: their sides now agree."""
    open_ids = {
        (row.record_id, row.field): row.id
        for row in connection.execute(
            _OPEN_CONFLICTS, {"target": target_id, "entity": entity}
        )
    }
    now = clock.now()
    new: list[dict[str, Any]] = []
    again: list[dict[str, Any]] = []
    for conflict in found:
        values = {
            "column": conflict.column,
            "row": conflict.row,
            "app_value": conflict.app,
            "sheet_value": conflict.sheet,
            "base_value": conflict.base,
            "base_known": conflict.base_known,
            "job_id": job_id,
        }
        conflict_id = open_ids.pop((conflict.record_id, conflict.field), None)
        if conflict_id is None:
            new.append(
                values
                | {
                    "target_id": target_id,
                    "entity": entity,
                    "record_id": conflict.record_id,
                    "field": conflict.field,
                    "detected_at": now,
                }
            )
        else:
            again.append(
                {"conflict": conflict_id}
                | {f"new_{name}": value for name, value in values.items()}
            )
    if new:
        connection.execute(insert(_CONFLICTS), new)
    if again:
        connection.execute(_FOUND_AGAIN, again)
    converged = [
        conflict_id
        for (record_id, _), conflict_id in open_ids.items()
        if record_id in seen
    ]
    if converged:
        connection.execute(_CONVERGED, {"conflicts": converged, "at": now})


def forget_sheet(session: Session, target_id: int) -> None:
    """Drop what a target remembered of its old sheet: snapshots, conflicts,
    and rows whose new records' IDs may not be there."""
    session.execute(delete(SyncSnapshot).where(SyncSnapshot.target_id == target_id))
    session.execute(delete(PendingId).where(PendingId.target_id == target_id))
    session.execute(
        update(SyncConflict)
        .where(SyncConflict.target_id == target_id, SyncConflict.resolved_at.is_(None))
        .values(resolved_at=clock.now(), resolution="target changed")
    )


def conflict_view(row: SyncConflict) -> dict[str, Any]:
    return {
        "id": row.id,
        "entity": row.entity,
        "record_id": row.record_id,
        "field": row.field,
        "column": row.column,
        "row": row.row,
        "app": row.app_value,
        "sheet": row.sheet_value,
        "base": row.base_value,
        "base_known": row.base_known,
        "job_id": row.job_id,
        "detected_at": clock.iso(row.detected_at),
        "resolution": row.resolution,
        # The value the record was left with when the conflict was resolved.
        "kept": row.resolved_value if row.resolved_at else None,
    }


def open_conflicts(session: Session, user: User) -> list[dict[str, Any]]:
    """The open conflicts the user may settle (an admin: every book's), each
    naming whose book it is in (``book``)."""
    statement = (
        select(SyncConflict, User.username)
        .join(SyncTarget, SyncTarget.id == SyncConflict.target_id)
        .join(User, User.id == SyncTarget.user_id)
        .where(SyncConflict.resolved_at.is_(None))
    )
    if not user.is_admin:
        statement = statement.where(SyncTarget.user_id == user.id)
    rows = session.execute(statement.order_by(SyncConflict.id))
    return [{**conflict_view(row), "book": book} for row, book in rows]


def resolve_conflict(
    session: Session, user: User, conflict_id: int, choice: str, value: Any = None
) -> SyncConflict:
    """Settle a conflict; the next sync carries the choice to the other side.

    The stored base becomes the sheet's value, so "keep app" (or an edited
    value) reads as an app change that the next sync to the sheet writes, and
    "keep sheet" is applied to the app at once.
    """
    row = _own_conflict(session, user, conflict_id)
    if choice not in CHOICES:
        raise InvalidField("choice", f"must be one of {', '.join(CHOICES)}")
    mapping = _MAPPING[row.entity]
    try:
        current = _app_value(session, user, mapping, row)
    except RecordNotFound:
        # Deleted or moved to another agent's book since the sync found it:
        # no choice about its fields is left to make (see close_gone).
        raise RecordGone(row) from None
    if choice != "app" and current != row.app_value:
        raise ConflictOutdated(row, current)
    row.app_value = current  # "keep app" keeps the value the app has now
    if choice == "app":
        row.resolved_value = current
    elif choice == "sheet":
        row.resolved_value = _set_app_value(
            session, user, mapping, row, row.sheet_value, asked="choice"
        )
    else:
        # Typed by a person in the dashboard, so read as the record API reads
        # what a person types there (dates YYYY-MM-DD, amounts like 1234.50),
        # not with the allowances made for what a sheet program stores.
        row.resolved_value = _store(
            session, user, mapping, row, {row.field: value}, value, asked="value"
        )
    snapshot = session.scalar(
        select(SyncSnapshot).where(
            SyncSnapshot.target_id == row.target_id,
            SyncSnapshot.entity == row.entity,
            SyncSnapshot.record_id == row.record_id,
        )
    )
    if snapshot is not None:
        snapshot.fields = {**snapshot.fields, row.field: row.sheet_value}
    row.resolution = choice
    row.resolved_at = clock.now()
    row.resolved_by = user.id
    return row


class RecordGone(ReviewError):
    """A conflict's record is no longer in the book: its conflicts there are
    to be closed, in a transaction of its own (:func:`close_gone`)."""

    def __init__(self, row: SyncConflict) -> None:
        super().__init__(
            f"{row.entity} {row.record_id} is no longer in the book; the conflict "
            "is closed and nothing was changed"
        )
        self.entity = row.entity
        self.record_id = row.record_id
        self.target_id = row.target_id


def close_gone(session: Session, gone: RecordGone) -> None:
    """Close the conflicts of a record gone from the book (after
    :class:`RecordGone`), in the sheet where it was found."""
    close_conflicts_of(session, gone.entity, gone.record_id, target_id=gone.target_id)


def show_app_value(session: Session, conflict_id: int, current: Canonical) -> None:
    """Let the conflict show the app's value as it is now (after a refusal)."""
    session.execute(
        update(SyncConflict)
        .where(SyncConflict.id == conflict_id, SyncConflict.resolved_at.is_(None))
        .values(app_value=current)
    )


def _app_value(
    session: Session, user: User, mapping: TabMapping, row: SyncConflict
) -> Canonical:
    book = Book(session, user)
    if mapping is CUSTOMERS:
        return customer_record(book.get_customer(row.record_id))[row.field]
    return policy_record(book.get_policy(row.record_id))[row.field]


def _own_conflict(session: Session, user: User, conflict_id: int) -> SyncConflict:
    # Locked until this transaction ends: a choice made at the same moment in
    # another window (another web process) waits, then finds it settled.
    row = session.get(SyncConflict, conflict_id, with_for_update=True)
    target = session.get(SyncTarget, row.target_id) if row else None
    if (
        row is None
        or target is None
        or not (user.is_admin or target.user_id == user.id)
    ):
        raise RecordNotFound("conflict", conflict_id)
    if row.resolved_at is not None:
        raise ReviewError(
            f"conflict {conflict_id} was already resolved: {_how_settled(session, row)}"
            "; your choice was not applied"
        )
    return row


def _how_settled(session: Session, row: SyncConflict) -> str:
    """How a resolved conflict was settled, in the words of the dashboard's
    buttons (a person with it open in two windows chose in the other)."""
    value = repr(shown(row.resolved_value))
    how = {
        "app": f"the app's value, {value}, was kept",
        "sheet": f"the sheet's value, {value}, was kept",
        "edit": f"a new value, {value}, was saved",
        "converged": "a later sync found both sides agreeing",
        "target changed": "the book was pointed at another sheet",
        RECORD_DELETED: "its record was deleted or left the book",
    }.get(row.resolution or "", "it was settled")
    person = session.get(User, row.resolved_by) if row.resolved_by else None
    return f"{how} by {person.username}" if person is not None else how


def _set_app_value(
    session: Session,
    user: User,
    mapping: TabMapping,
    row: SyncConflict,
    value: Any,
    *,
    asked: str,
) -> Canonical:
    """Store the canonical ``value`` (a sheet's, already read by its column)
    and return it as stored."""
    fields = to_python(mapping, {row.field: value})
    return _store(session, user, mapping, row, fields, value, asked=asked)


def _store(
    session: Session,
    user: User,
    mapping: TabMapping,
    row: SyncConflict,
    fields: dict[str, Any],
    value: Any,
    *,
    asked: str,
) -> Canonical:
    """Update the conflict's record with ``fields`` as the record API does and
    return the field's stored value, canonical. One the record refuses is an
    error of the request's ``asked`` field, and the conflict stays open."""
    book = Book(session, user)
    try:
        if mapping is CUSTOMERS:
            customer = book.get_customer(row.record_id)
            updated = customer_record(
                book.update_customer(
                    row.record_id, CustomerUpdate(version=customer.version, **fields)
                )
            )
        else:
            policy = book.get_policy(row.record_id)
            updated = policy_record(
                book.update_policy(
                    row.record_id, PolicyUpdate(version=policy.version, **fields)
                )
            )
    except StaleVersion:
        # Saved by someone else between the read and this write (another web
        # process): what the person chose over may be gone.
        raise ReviewError(
            f"{row.entity} {row.record_id} was changed in the app while you chose; "
            "nothing was changed: look at the conflict again and choose"
        ) from None
    except ValidationError as exc:
        reasons = "; ".join(error_message(error) for error in exc.errors())
        what = (
            f"{row.field}: an empty value"
            if value is None or value == ""
            else f"{row.field} {shown(value)!r}"
        )
        raise InvalidField(asked, f"{what} is refused: {reasons}") from exc
    return updated[row.field]


@dataclass
class UndoReport:
    restored: list[dict[str, Any]] = field(default_factory=list)
    left_alone: list[dict[str, Any]] = field(default_factory=list)
    # Records the import created, deleted by the undo: their rows stay.
    removed: int = 0

    @property
    def note(self) -> str | None:
        """What is left to do in the sheet, if anything."""
        if not self.removed:
            return None
        one = self.removed == 1
        records = "1 record" if one else f"{self.removed:,} records"
        rows, them = ("its row stays", "it") if one else ("their rows stay", "them")
        return (
            f"{records} the import created {'was' if one else 'were'} deleted; "
            f"{rows} in the sheet: delete {them} there, or a sync to the sheet "
            f"removes {them} where rows deleted on one side are deleted on the "
            "other"
        )


def saved_changes(session: Session, job_ids: Collection[int]) -> dict[int, int]:
    """How many records each of these imports changed that are not undone
    (what one that failed or was stopped after it committed left, or what an
    undo may still take back)."""
    if not job_ids:
        return {}
    changed = (
        select(ImportChange.job_id, ImportChange.entity, ImportChange.record_id)
        .where(ImportChange.job_id.in_(job_ids), ImportChange.undone_at.is_(None))
        .distinct()
        .subquery()
    )
    counts = session.execute(
        select(changed.c.job_id, func.count()).group_by(changed.c.job_id)
    )
    return {job_id: 0 for job_id in job_ids} | {job_id: n for job_id, n in counts}


@dataclass
class ImportDone:
    """The records an import created and updated, by entity, not undone."""

    created: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    updated: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))


def import_done(session: Session, job_id: int) -> ImportDone:
    """What an import changed over all its attempts: one that died after its
    commit left its changes, which the next attempt finds already made."""
    rows = session.execute(
        select(ImportChange.entity, ImportChange.record_id, ImportChange.field)
        .where(ImportChange.job_id == job_id, ImportChange.undone_at.is_(None))
        .distinct()
    )
    done = ImportDone()
    for entity, record_id, name in rows:
        (done.created if name == CREATED else done.updated)[entity].add(record_id)
    for entity, created in done.created.items():
        done.updated[entity] -= created
    return done


def undo_import(session: Session, user: User, job_id: int) -> UndoReport:
    """Put back what one import changed. A record whose imported values were
    edited since is left alone; edits to its other fields stay beside the
    restored values, so nothing typed since is lost."""
    changes = list(
        session.scalars(
            select(ImportChange)
            .where(ImportChange.job_id == job_id, ImportChange.undone_at.is_(None))
            .order_by(ImportChange.id)
        )
    )
    if not changes:
        raise ReviewError(f"job {job_id} changed nothing that can still be undone")
    target = session.get(SyncTarget, changes[0].target_id)
    if target is None or not (user.is_admin or target.user_id == user.id):
        raise ReviewError(f"job {job_id} changed nothing that can still be undone")
    by_record: dict[tuple[str, int], list[ImportChange]] = defaultdict(list)
    for change in changes:
        by_record[(change.entity, change.record_id)].append(change)
    report = UndoReport()
    book = Book(session, user)
    together = _undone_together(book, by_record)
    # Policies first: a customer the import created can go only after its policies.
    for (entity, record_id), record_changes in sorted(
        by_record.items(), key=lambda item: item[0][0] != "policy"
    ):
        if (entity, record_id) in together:
            outcome = None
        else:
            outcome = _undo_record(book, entity, record_id, record_changes)
        target_list = report.restored if outcome is None else report.left_alone
        entry = {"entity": entity, "record_id": record_id}
        target_list.append(entry if outcome is None else {**entry, "reason": outcome})
        if outcome is None:
            for change in record_changes:
                change.undone_at = clock.now()
            if any(change.field == CREATED for change in record_changes):
                report.removed += 1
    if not report.restored:
        raise ReviewError(_nothing_undone(job_id, report.left_alone))
    return report


MAX_NAMED = 5


def _nothing_undone(job_id: int, left_alone: list[dict[str, Any]]) -> str:
    named = [
        f"{item['entity']} {item['record_id']} ({item['reason']})"
        for item in left_alone[:MAX_NAMED]
    ]
    more = len(left_alone) - len(named)
    if more:
        named.append(f"and {more:,} more")
    return f"nothing of sync #{job_id} could be undone: " + ", ".join(named)


class _NotTogether(Exception):
    """One of the policies undone together could not be."""


def _undone_together(
    book: Book, by_record: dict[tuple[str, int], list[ImportChange]]
) -> set[tuple[str, int]]:
    """Undo at once the policies that take back numbers others of the import
    give back (an import that swapped two): the keys undone, or none if any
    of them cannot be undone, each then undone alone, which tells why."""
    wanted = {
        record_id: change.before
        for (entity, record_id), changes in by_record.items()
        if entity == "policy"
        for change in changes
        if change.field == "policy_number"
    }
    if len(wanted) < 2:
        return set()
    held = {
        policy_id: number
        for policy_id, number in book.session.execute(
            select(Policy.id, Policy.policy_number).where(Policy.id.in_(wanted))
        )
    }
    moving = Book.trading_numbers(wanted, held)
    keys = {("policy", record_id) for record_id in moving}
    # Loaded first, they keep their numbers in the session for the checks.
    loaded = [book.session.get(Policy, record_id) for record_id in sorted(moving)]
    try:
        with book.session.begin_nested():
            book.free_policy_numbers([policy.id for policy in loaded if policy])
            for key in sorted(keys):
                if _undo_record(book, *key, by_record[key]) is not None:
                    raise _NotTogether
    except _NotTogether:
        return set()
    return keys


def _as_the_import_left_it(
    record: Customer | Policy, current: Record, changes: list[ImportChange]
) -> bool:
    """Whether a record the import created holds what the import left in it:
    its values when created, then this import's own later changes (a retry
    that imported a row edited meanwhile). An import stored before created
    records kept their values knows only that nobody saved it since."""
    (created,) = [change for change in changes if change.field == CREATED]
    if created.after is None:
        return record.version == 1
    left: Record = dict(created.after)
    for change in changes:
        if change.field != CREATED:
            left[change.field] = change.after
    return current == left


def _changed_since(
    book: Book, entity: str, record_id: int, changes: list[ImportChange]
) -> str:
    """Why a record holds other values than the import left in it: a later
    import (whose undo comes first), else an edit in the app."""
    later = book.session.scalar(
        select(func.max(ImportChange.job_id)).where(
            ImportChange.entity == entity,
            ImportChange.record_id == record_id,
            ImportChange.job_id > changes[0].job_id,
            ImportChange.undone_at.is_(None),
        )
    )
    if later is not None:
        return f"changed since by the import of sync #{later}; undo that one first"
    return "edited in the app since the import"


def _undo_record(
    book: Book, entity: str, record_id: int, changes: list[ImportChange]
) -> str | None:
    """Undo one record's changes; returns why it was left alone, if it was."""
    record: Customer | Policy | None = (
        book.session.get(Customer, record_id)
        if entity == "customer"
        else book.session.get(Policy, record_id)
    )
    if record is None:
        return "deleted since the import"
    if record.agent_id != book.user.id and not book.user.is_admin:
        return "moved to another agent's book since the import"
    current = (
        customer_record(record)
        if isinstance(record, Customer)
        else policy_record(record)
    )
    try:
        with book.session.begin_nested():
            if any(change.field == CREATED for change in changes):
                if not _as_the_import_left_it(record, current, changes):
                    return _changed_since(book, entity, record_id, changes)
                if isinstance(record, Customer):
                    book.delete_customer(record_id, None)
                else:
                    book.delete_policy(record_id, None)
                return None
            if any(current.get(c.field) != c.after for c in changes):
                return _changed_since(book, entity, record_id, changes)
            mapping = _MAPPING[entity]
            fields = to_python(mapping, {c.field: c.before for c in changes})
            if isinstance(record, Customer):
                book.update_customer(
                    record_id, CustomerUpdate(version=record.version, **fields)
                )
            else:
                book.update_policy(
                    record_id, PolicyUpdate(version=record.version, **fields)
                )
    except DomainError as exc:
        return str(exc)
    return None
