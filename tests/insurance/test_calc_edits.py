"""Edits typed by a real spreadsheet program import exactly as typed.

LibreOffice Calc, driven headless through its UNO bridge, edits a workbook the
app wrote the way a person would; the next import applies those edits and
nothing else.
"""

from __future__ import annotations

import os
from datetime import timedelta
from decimal import Decimal

import pytest
from openpyxl import load_workbook
from openpyxl.utils import get_column_letter
from sqlalchemy import select

from sheetbridge.insurance.mapping import policy_record
from sheetbridge.insurance.models import Customer, Policy, User
from sheetbridge.insurance.sync_jobs import FROM_SHEET, TO_SHEET
from sheetbridge.sync.engine import Record
from sheetbridge.web.deps import Runtime
from tests.insurance.test_workbook_sync import run_sync, workbook_path
from tests.support.libreoffice import edit_with_calc, find_soffice, has_uno

pytestmark = pytest.mark.libreoffice


@pytest.fixture(autouse=True)
def _need_calc() -> None:
    if find_soffice() is None or not has_uno():
        message = (
            "LibreOffice Calc with its Python UNO bridge is not installed: "
            "apt-get install libreoffice-calc-nogui python3-uno"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def alice_policies(runtime: Runtime) -> dict[int, Record]:
    """Alice's policies as the sheet sees them, by ID."""
    with runtime.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
        policies = session.scalars(select(Policy).where(Policy.agent_id == alice.id))
        return {policy.id: policy_record(policy) for policy in policies.unique()}


def test_calc_typed_edits_import_exactly_and_nothing_else(runtime: Runtime) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    before = alice_policies(runtime)
    path = workbook_path(runtime, "alice")

    # A person moved a column: Carrier and Line of Business swap places.
    book = load_workbook(path)
    sheet = book["Policies"]
    header = {cell.value: cell.column for cell in sheet[1]}
    carrier, line = header["Carrier"], header["Line of Business"]
    for row in range(1, sheet.max_row + 1):
        a, b = sheet.cell(row, carrier), sheet.cell(row, line)
        a.value, b.value = b.value, a.value
    book.save(path)
    header = {cell.value: cell.column for cell in load_workbook(path)["Policies"][1]}
    ids = [
        row[0]
        for row in load_workbook(path)["Policies"].iter_rows(
            min_row=2, values_only=True
        )
    ]
    dated, priced, numbered, deleted = ids[0], ids[1], ids[2], ids[6]
    new_effective = before[dated]["expiration_date"]
    assert isinstance(new_effective, str)
    effective = __import__("datetime").date.fromisoformat(new_effective) - timedelta(
        days=30
    )
    with runtime.db.read_session() as session:
        customer_id = session.scalars(
            select(Customer.id).where(Customer.agent.has(username="alice")).limit(1)
        ).one()

    def cell(record_row: int, name: str) -> str:
        return f"{get_column_letter(header[name])}{record_row}"

    new_row = 5
    new_values = {
        "Policy Number": "NEW-0001",
        "Customer ID": str(customer_id),
        "Carrier": "Typed Carrier",
        "Line of Business": "Auto",
        "Effective Date": "1/15/2026",
        "Expiration Date": "1/15/2027",
        "Premium": "$1,200.00",
        "Status": "Active",
    }
    edits = [
        {
            "sheet": "Policies",
            "cell": cell(2, "Effective Date"),
            "value": f"{effective.month}/{effective.day}/{effective.year}",
        },
        {"sheet": "Policies", "cell": cell(3, "Premium"), "value": "$2,500.00"},
        {"sheet": "Policies", "cell": cell(4, "Policy Number"), "value": "'00777"},
        {"op": "insert_row", "sheet": "Policies", "row": new_row},
        *(
            {"sheet": "Policies", "cell": cell(new_row, name), "value": value}
            for name, value in new_values.items()
        ),
        # Row 8 held the seventh policy before the insert; it is row 9 now.
        {"op": "delete_row", "sheet": "Policies", "row": 9},
    ]
    edit_with_calc(path, edits)

    result = run_sync(runtime, "alice", FROM_SHEET)
    after = alice_policies(runtime)

    counts = result["tabs"]["Policies"]["counts"]
    assert (counts["updated"], counts["created"], counts["errors"]) == (3, 1, 0)
    assert counts["deleted_in_sheet"] == 1 and deleted in after
    assert after[dated]["effective_date"] == effective.isoformat()
    assert after[priced]["premium"] == f"{Decimal('2500'):.2f}"
    assert after[numbered]["policy_number"] == "00777"
    created = [p for p in after.values() if p["policy_number"] == "NEW-0001"]
    assert len(created) == 1
    assert created[0]["premium"] == "1200.00"
    assert created[0]["effective_date"] == "2026-01-15"
    assert (created[0]["line_of_business"], created[0]["status"]) == ("auto", "active")
    changed = {dated: "effective_date", priced: "premium", numbered: "policy_number"}
    for policy_id, record in before.items():
        expected = dict(record)
        if policy_id in changed:
            expected[changed[policy_id]] = after[policy_id][changed[policy_id]]
        assert after[policy_id] == expected, f"policy {policy_id} changed unasked"
    created_id = next(i for i, p in after.items() if p["policy_number"] == "NEW-0001")
    written = load_workbook(path)["Policies"]
    assert written.cell(new_row, header["ID"]).value == created_id
