"""What an import stores is what the sheet's cell reads as, for every column.

An import turns a cell into the column's canonical value and stores it through
the app's own rules. Were those rules to store it otherwise (upper case, say),
the cell would differ from the record at every sync: imported again and again,
and a conflict once the app changes the field.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pytest
from pydantic import BaseModel, ValidationError

from sheetbridge.insurance.mapping import CUSTOMERS, POLICIES, to_python
from sheetbridge.insurance.schemas import CustomerUpdate, PolicyUpdate
from sheetbridge.sheets.base import Cell
from sheetbridge.sync.columns import CellError, Column, parse_cell
from sheetbridge.sync.engine import TabMapping

# What people type into sheets, in the forms sheets hand back.
TYPED: tuple[Cell, ...] = (
    "ny",
    " Me ",
    "nY",
    "CA",
    "zz",
    "Ann@Example.COM",
    " bob@example.org ",
    "(207) 555-0100",
    "207.555.0100",
    "+1 207 555 0100",
    2075550100,
    "04609",
    4609,
    " 04609-1234 ",
    "Ann\r\nLee",
    "  Ann   Lee  ",
    "Ärger Straße",
    "auto",
    "AUTO",
    "Home",
    "active",
    "Cancelled",
    "2020-01-05",
    "1/5/2020",
    43831,
    date(2020, 1, 5),
    datetime(2020, 1, 5),
    "1,234.50",
    "$5",
    "(5.25)",
    Decimal("5.5"),
    12.5,
    "AB-100",
    "ab-100 ",
    7,
    "7",
)


@pytest.mark.parametrize(
    ("mapping", "schema"), [(CUSTOMERS, CustomerUpdate), (POLICIES, PolicyUpdate)]
)
def test_a_value_an_import_stores_reads_as_its_cell_does(
    mapping: TabMapping, schema: type[BaseModel]
) -> None:
    columns = [column for column in mapping.columns if not column.readonly]
    checked: dict[str, int] = {}
    for column in columns:
        for raw in TYPED:
            stored = _stored(mapping, schema, column, raw)
            if stored is None:
                continue
            canonical, value = stored
            assert parse_cell(column, value) == canonical, (column.header, raw)
            checked[column.header] = checked.get(column.header, 0) + 1
    # Every column took some of the values, so none went unchecked.
    assert set(checked) == {column.header for column in columns}


def _stored(
    mapping: TabMapping, schema: type[BaseModel], column: Column, raw: Cell
) -> tuple[object, object] | None:
    """The cell's canonical value and what the app stores of it; None where
    the column or the app refuses the cell (an error of its row)."""
    try:
        canonical = parse_cell(column, raw)
    except CellError:
        return None
    fields = to_python(mapping, {column.field: canonical})
    try:
        record = schema.model_validate({"version": 1, **fields})
    except ValidationError:
        return None
    return canonical, getattr(record, column.field)
