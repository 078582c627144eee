"""Random edits on both sides, synced by the real jobs, on both real backends.

The planner's own property test runs against an in-memory tab. Here each
example is an agent with a small book synced to a workbook file or to a
spreadsheet in the Sheets API emulator through ``SyncService``. People edit
the app (through ``Book``) and the sheet (cells typed into the workbook with
openpyxl, or written through the emulator), add records on either side and
sort the sheet, with syncs in both directions in between, in any order.

Afterwards no edit is lost: the last value typed into each field is the app's
value or the sheet's, every field on which the two differ has an open conflict
holding exactly those two values, every record is in the sheet once. Once the
conflicts are resolved the two sides are equal.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Protocol

import openpyxl
import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import select

from sheetbridge.config import Settings
from sheetbridge.insurance import review
from sheetbridge.insurance.mapping import (
    CUSTOMERS,
    ENTITY,
    MAPPINGS,
    POLICIES,
    book_records,
    to_python,
)
from sheetbridge.insurance.models import User
from sheetbridge.insurance.schemas import (
    CustomerCreate,
    CustomerUpdate,
    PolicyCreate,
    PolicyUpdate,
)
from sheetbridge.insurance.services import Book
from sheetbridge.insurance.sync_jobs import FROM_SHEET, GOOGLE, TO_SHEET
from sheetbridge.sheets.base import Cell, TabChanges
from sheetbridge.sync.columns import Canonical, Column, ColumnType, parse_value
from sheetbridge.sync.engine import Record, TabMapping
from sheetbridge.sync.models import SyncConflict, SyncTarget
from sheetbridge.testing.emulator import EmulatorServer
from sheetbridge.testing.harness import GoogleHarness
from sheetbridge.web.deps import Runtime
from tests.insurance.test_workbook_sync import run_sync
from tests.support.server import free_port

EDITABLE = [
    (CUSTOMERS, "name"),
    (CUSTOMERS, "email"),
    (CUSTOMERS, "zip_code"),
    (CUSTOMERS, "notes"),
    (CUSTOMERS, "date_of_birth"),
    (POLICIES, "premium"),
    (POLICIES, "carrier"),
]
MAPPING_OF = {mapping.tab: mapping for mapping in MAPPINGS}
_agents = itertools.count(1)

Step = tuple[str, int, int]
# Picks are taken modulo the records there are: a small range makes edits of
# both sides meet on the same field often.
op = st.one_of(
    st.tuples(
        st.sampled_from(["app", "sheet", "both"]),
        st.integers(0, 5),
        st.integers(0, len(EDITABLE) - 1),
    ),
    st.tuples(
        st.sampled_from(["to", "from", "new_app", "new_sheet", "sort"]),
        st.integers(0, 5),
        st.just(0),
    ),
)


class SheetSide(Protocol):
    """A person's view of the sheet: rows as cells, and typing into them."""

    def rows(self, tab: str) -> list[list[Cell]]: ...

    def type_cells(self, tab: str, cells: dict[tuple[int, int], Cell]) -> None: ...


class Workbook:
    """The agent's workbook, read and edited with openpyxl like a person's
    spreadsheet program would (text typed as text)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self, tab: str) -> list[list[Cell]]:
        book = openpyxl.load_workbook(self.path, data_only=True)
        return [list(row) for row in book[tab].iter_rows(values_only=True)]

    def type_cells(self, tab: str, cells: dict[tuple[int, int], Cell]) -> None:
        book = openpyxl.load_workbook(self.path)
        sheet = book[tab]
        for (row, col), value in cells.items():
            cell = sheet.cell(row, col)
            cell.value = value
            if isinstance(value, str):
                cell.data_type = "s"  # typed into a text cell, never a formula
        book.save(self.path)


class Spreadsheet:
    """The agent's spreadsheet in the emulator, written as the API writes."""

    def __init__(self, emulator: EmulatorServer, spreadsheet_id: str) -> None:
        self.backend = GoogleHarness(emulator).backend(spreadsheet_id)

    def rows(self, tab: str) -> list[list[Cell]]:
        data = self.backend.read_tabs([tab])[tab]
        assert data is not None
        return data.rows

    def type_cells(self, tab: str, cells: dict[tuple[int, int], Cell]) -> None:
        self.backend.write({tab: TabChanges(cells=cells)})


@dataclass
class World:
    """One agent's book, its sheet, and every value typed into either."""

    runtime: Runtime
    user: User
    sheet: SheetSide
    latest: dict[tuple[str, int, str], Canonical] = field(default_factory=dict)
    typed_rows: int = 0
    app_created: int = 0
    counter: int = 0

    # -- reading both sides ----------------------------------------------------

    def app(self) -> dict[str, dict[int, Record]]:
        with self.runtime.db.read_session() as session:
            records, _ = book_records(session, self.user)
        return records

    def sheet_records(self, tab: str) -> tuple[dict[int, Record], list[int]]:
        """Parsed records by ID, and every ID in sheet order (duplicates kept)."""
        mapping = MAPPING_OF[tab]
        rows = self.sheet.rows(tab)
        header = _header(rows[0])
        records: dict[int, Record] = {}
        ids: list[int] = []
        for cells in rows[1:]:
            raw_id = _at(cells, header["ID"])
            if raw_id is None:
                assert all(v in (None, "") for v in cells), f"row without ID: {cells}"
                continue
            record_id = _id(raw_id)
            ids.append(record_id)
            records[record_id] = {
                column.field: parse_value(column, _at(cells, header[column.header]))
                for column in mapping.columns
            }
        return records, ids

    def open_conflicts(self) -> dict[tuple[str, int, str], SyncConflict]:
        with self.runtime.db.read_session() as session:
            rows = session.scalars(
                select(SyncConflict)
                .join(SyncTarget, SyncTarget.id == SyncConflict.target_id)
                .where(
                    SyncConflict.resolved_at.is_(None),
                    SyncTarget.user_id == self.user.id,
                )
            ).all()
        tab_of = {entity: tab for tab, entity in ENTITY.items()}
        return {(tab_of[row.entity], row.record_id, row.field): row for row in rows}

    # -- what people do ----------------------------------------------------------

    def unique(self, column: Column) -> Canonical:
        """A value the field never held: every edit changes something."""
        self.counter += 1
        n = self.counter
        if column.field == "zip_code":
            return f"{n:05d}"
        if column.field == "email":
            return f"person{n}@example.com"
        if column.field == "notes":
            return (f"={n}+1", f"+1 555 {n:04d}", f"note {n}")[n % 3]
        if column.type is ColumnType.DATE:
            return (date(1950, 1, 1) + timedelta(days=n)).isoformat()
        if column.type is ColumnType.MONEY:
            return f"{n}.25"
        return f"{column.header} {n}"

    def typed(self, column: Column, value: Canonical) -> Cell:
        """The value as a person types it, in one of the shapes the column takes."""
        shape = self.counter % 2
        if value is None:
            return None
        if column.type is ColumnType.MONEY:
            amount = Decimal(str(value))
            return float(amount) if shape else f"${amount:,.2f}"
        if column.type is ColumnType.DATE:
            return date.fromisoformat(str(value)) if shape else str(value)
        if column.type is ColumnType.EMAIL and shape:
            return str(value).upper()
        if column.field == "zip_code" and shape:
            return int(str(value))  # a ZIP typed as a number loses its zeros
        return value

    def edit_app(self, pick: int, mapping: TabMapping, name: str) -> int | None:
        ids = sorted(self.app()[mapping.tab])
        if not ids:
            return None
        record_id = ids[pick % len(ids)]
        self.edit_app_record(record_id, mapping, name)
        return record_id

    def edit_app_record(self, record_id: int, mapping: TabMapping, name: str) -> None:
        column = _column(mapping, name)
        value = self.unique(column)
        fields = to_python(mapping, {name: value})
        with self.runtime.db.session() as session:
            book = Book(session, self.user)
            if mapping is CUSTOMERS:
                customer = book.get_customer(record_id)
                book.update_customer(
                    record_id, CustomerUpdate(version=customer.version, **fields)
                )
            else:
                policy = book.get_policy(record_id)
                book.update_policy(
                    record_id, PolicyUpdate(version=policy.version, **fields)
                )
        self.latest[(mapping.tab, record_id, name)] = value

    def edit_sheet(self, pick: int, mapping: TabMapping, name: str) -> None:
        rows = self.sheet.rows(mapping.tab)
        header = _header(rows[0])
        numbered = [
            (number, _id(_at(cells, header["ID"])))
            for number, cells in enumerate(rows[1:], start=2)
            if _at(cells, header["ID"]) is not None
        ]
        if numbered:
            number, record_id = numbered[pick % len(numbered)]
            self.edit_sheet_row(number, record_id, mapping, name)

    def edit_both(self, pick: int, mapping: TabMapping, name: str) -> None:
        """The same field edited in the app and in the sheet before a sync."""
        record_id = self.edit_app(pick, mapping, name)
        rows = self.sheet.rows(mapping.tab)
        header = _header(rows[0])
        for number, cells in enumerate(rows[1:], start=2):
            raw_id = _at(cells, header["ID"])
            if (
                record_id is not None
                and raw_id is not None
                and _id(raw_id) == record_id
            ):
                self.edit_sheet_row(number, record_id, mapping, name)

    def edit_sheet_row(
        self, number: int, record_id: int, mapping: TabMapping, name: str
    ) -> None:
        rows = self.sheet.rows(mapping.tab)
        header = _header(rows[0])
        column = _column(mapping, name)
        value = self.unique(column)
        col = header[column.header] + 1
        self.sheet.type_cells(mapping.tab, {(number, col): self.typed(column, value)})
        self.latest[(mapping.tab, record_id, name)] = value

    def new_app_customer(self) -> None:
        with self.runtime.db.session() as session:
            Book(session, self.user).create_customer(
                CustomerCreate(name=f"App typed {self.counter}", zip_code="04001")
            )
        self.counter += 1
        self.app_created += 1

    def new_sheet_customer(self, pick: int) -> None:
        """A row typed without an ID, somewhere among the others."""
        rows = self.sheet.rows(CUSTOMERS.tab)
        header = _header(rows[0])
        self.counter += 1
        row: list[Cell] = [None] * len(rows[0])
        row[header["Name"]] = f"Sheet typed {self.counter}"
        row[header["ZIP"]] = "00901"
        row[header["Notes"]] = "=SUM(A1)"
        at = 1 + pick % len(rows)
        self.rewrite(CUSTOMERS.tab, [*rows[1:at], row, *rows[at:]])
        self.typed_rows += 1

    def sort(self, pick: int) -> None:
        tab = MAPPINGS[pick % len(MAPPINGS)].tab
        rows = self.sheet.rows(tab)
        self.rewrite(tab, list(reversed(rows[1:])))

    def rewrite(self, tab: str, data: list[list[Cell]]) -> None:
        """Put ``data`` in rows 2 and below, as a person sorting or inserting."""
        width = max(len(r) for r in [*data, self.sheet.rows(tab)[0]])
        cells = {
            (number, col): _at(cells, col - 1)
            for number, cells in enumerate(data, start=2)
            for col in range(1, width + 1)
        }
        self.sheet.type_cells(tab, cells)

    def sync(self, kind: str) -> None:
        run_sync(self.runtime, self.user.username, kind)

    # -- the checks --------------------------------------------------------------

    def check_nothing_lost(self) -> None:
        app = self.app()
        conflicts = self.open_conflicts()
        for mapping in MAPPINGS:
            sheet, ids = self.sheet_records(mapping.tab)
            assert sorted(ids) == sorted(app[mapping.tab]), "missing or duplicate IDs"
            for record_id, record in app[mapping.tab].items():
                for column in mapping.columns:
                    name = column.field
                    key = (mapping.tab, record_id, name)
                    app_value, sheet_value = record[name], sheet[record_id][name]
                    if key in self.latest:
                        assert self.latest[key] in (app_value, sheet_value), key
                    if app_value != sheet_value:
                        conflict = conflicts.get(key)
                        assert conflict is not None, (key, app_value, sheet_value)
                        assert (conflict.app_value, conflict.sheet_value) == (
                            app_value,
                            sheet_value,
                        )
        customers = app[CUSTOMERS.tab]
        assert len(customers) == 3 + self.app_created + self.typed_rows
        names = [record["name"] for record in customers.values()]
        assert len(names) == len(set(names)), "a typed row was imported twice"

    def settle(self, keep_app: list[bool]) -> None:
        """Resolve every open conflict, then sync until both sides agree on
        everything, each resolved field holding the value that was kept."""
        kept: dict[tuple[str, int, str], Canonical] = {}
        for attempt in range(3):
            conflicts = self.open_conflicts()
            if not conflicts:
                break
            with self.runtime.db.session() as session:
                for index, (key, row) in enumerate(conflicts.items()):
                    app_side = keep_app[(attempt + index) % len(keep_app)]
                    kept[key] = row.app_value if app_side else row.sheet_value
                    choice = "app" if app_side else "sheet"
                    review.resolve_conflict(session, self.user, row.id, choice)
            self.sync(FROM_SHEET)
            self.sync(TO_SHEET)
        assert not self.open_conflicts()
        app = self.app()
        for mapping in MAPPINGS:
            sheet, _ = self.sheet_records(mapping.tab)
            assert sheet == app[mapping.tab]
        for (tab, record_id, name), value in kept.items():
            assert app[tab][record_id][name] == value


def _header(row: list[Cell]) -> dict[str, int]:
    return {str(text): index for index, text in enumerate(row) if text is not None}


def _at(cells: list[Cell], index: int) -> Cell:
    value = cells[index] if index < len(cells) else None
    return None if value == "" else value


def _id(raw: Cell) -> int:
    assert raw is not None
    return int(str(raw).removesuffix(".0"))


def _column(mapping: TabMapping, name: str) -> Column:
    return next(column for column in mapping.columns if column.field == name)


def make_agent(runtime: Runtime) -> User:
    """A new agent with three customers and two policies."""
    username = f"prop-agent-{next(_agents)}"
    with runtime.db.session() as session:
        user = User(username=username, full_name=username, password_hash="-")
        session.add(user)
        session.flush()
        book = Book(session, user)
        customers = [
            book.create_customer(
                CustomerCreate(name=f"{username} customer {n}", zip_code="04101")
            )
            for n in range(3)
        ]
        for n, customer in enumerate(customers[:2]):
            book.create_policy(
                PolicyCreate(
                    policy_number=f"{username}-{n:03d}",
                    customer_id=customer.id,
                    carrier="Granite Mutual",
                    line_of_business="auto",
                    effective_date=date(2025, 1, 1),
                    expiration_date=date(2026, 1, 1),
                    premium=Decimal("1200.00"),
                )
            )
    with runtime.db.read_session() as session:
        return session.scalars(select(User).where(User.username == username)).one()


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(port=free_port()) as server:
        yield server


@pytest.fixture
def settings(settings: Settings, emulator: EmulatorServer) -> Settings:
    # Hundreds of syncs a minute: the API quota (tested on its own) is off.
    return settings.model_copy(
        update={
            "google_sheets_base_url": emulator.base_url,
            "sheets_reads_per_minute_project": 0,
            "sheets_writes_per_minute_project": 0,
            "sheets_reads_per_minute_user": 0,
            "sheets_writes_per_minute_user": 0,
        }
    )


@pytest.fixture(params=["xlsx", GOOGLE])
def new_world(
    request: pytest.FixtureRequest, runtime: Runtime, emulator: EmulatorServer
) -> Callable[[], World]:
    """Makes a fresh agent and sheet for each example; the database is shared."""

    def make() -> World:
        user = make_agent(runtime)
        sheet: SheetSide
        if request.param == GOOGLE:
            book = GoogleHarness(emulator).spreadsheet(f"{user.username}'s book")
            runtime.sync.update_target(
                user, backend=GOOGLE, spreadsheet_id=book.spreadsheet_id
            )
            sheet = Spreadsheet(emulator, book.spreadsheet_id)
        else:
            sheet = Workbook(Path(runtime.sync.target_for(user).location))
        world = World(runtime, user, sheet)
        world.sync(TO_SHEET)
        return world

    return make


# A failing example takes minutes to shrink (up to 300 s by Hypothesis' own
# limit); the test gets time to report it.
@pytest.mark.timeout(900)
@hypothesis_settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(op, max_size=16),
    keep_app=st.lists(st.booleans(), min_size=1, max_size=4),
)
def test_random_edits_and_syncs_lose_nothing_and_converge(
    new_world: Callable[[], World], steps: list[Step], keep_app: list[bool]
) -> None:
    world = new_world()
    for kind, pick, which in steps:
        mapping, name = EDITABLE[which]
        if kind == "app":
            world.edit_app(pick, mapping, name)
        elif kind == "sheet":
            world.edit_sheet(pick, mapping, name)
        elif kind == "both":
            world.edit_both(pick, mapping, name)
        elif kind in ("to", "from"):
            world.sync(TO_SHEET if kind == "to" else FROM_SHEET)
        elif kind == "new_app":
            world.new_app_customer()
        elif kind == "new_sheet":
            world.new_sheet_customer(pick)
        else:
            world.sort(pick)
    for _ in range(2):
        world.sync(FROM_SHEET)
        world.sync(TO_SHEET)
    world.check_nothing_lost()
    event("open conflicts before settling", str(bool(world.open_conflicts())))
    world.settle(keep_app)
