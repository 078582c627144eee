"""Whatever the API takes, a sheet takes back: a record saved through the API
is written to a sheet and read from it as itself, so that no API edit leaves
a row the next sync refuses to write."""

from __future__ import annotations

from datetime import date

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sheetbridge.insurance.mapping import (
    CUSTOMERS,
    POLICIES,
    customer_record,
    policy_record,
)
from sheetbridge.insurance.models import LINES_OF_BUSINESS, Customer, Policy
from sheetbridge.sync.columns import CellError, parse_cell, render_cell
from sheetbridge.sync.engine import Record, TabMapping
from sheetbridge.web.deps import Runtime

# Text as people type it into a form: letters, digits, the signs of phone
# numbers, addresses and amounts, spaces, and now and then any character.
typed = st.text(
    alphabet=st.one_of(
        st.sampled_from("abcXYZ0123456789 +-().,@'/#&\t"),
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
    ),
    max_size=24,
)
dates = st.one_of(
    st.dates(min_value=date(1890, 1, 1), max_value=date(2210, 1, 1)).map(str), typed
)
amounts = st.one_of(
    st.decimals(min_value=-10, max_value=10**10, places=2).map(str),
    st.decimals(min_value=0, max_value=10**6, places=3).map(str),
    typed,
)


def shaped(pattern: str) -> st.SearchStrategy[str]:
    """Text of the form a field asks for, or near it, or anything typed."""
    return st.one_of(st.from_regex(pattern, fullmatch=True), typed)


def pieced(*pieces: str, most: int = 8) -> st.SearchStrategy[str]:
    """Text put together from ``pieces``, near the edges of a field's form."""
    return st.lists(st.sampled_from(pieces), min_size=1, max_size=most).map("".join)


def chosen(mapping: TabMapping, header: str) -> st.SearchStrategy[str]:
    (column,) = [c for c in mapping.columns if c.header == header]
    return st.one_of(
        st.sampled_from(column.choices),
        st.sampled_from(column.choices).map(str.upper),
        typed,
    )


def round_trips(mapping: TabMapping, record: Record) -> None:
    for column in mapping.columns:
        value = record.get(column.field)
        if column.readonly or value is None:
            continue
        try:
            back = parse_cell(column, render_cell(column, value))
        except CellError as exc:
            raise AssertionError(f"{column.header} {value!r}: {exc.reason}") from exc
        assert back == value, column.header


SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
CUSTOMER_FIELDS: dict[str, st.SearchStrategy[str]] = {
    "name": typed,
    "email": st.one_of(
        pieced("a", "B", "1", ".", "+", "-", "@", "example", "com", " ", "é"),
        typed,
    ),
    "phone": st.one_of(
        pieced("555", "1234", "0", "+1", " ", "-", ".", "(", ")", "x", "ext", most=10),
        typed,
    ),
    "address": typed,
    "city": typed,
    "state": chosen(CUSTOMERS, "State"),
    "zip_code": shaped(r"[0-9]{4,5}(-[0-9]{3,4})?"),
    "notes": typed,
    "date_of_birth": dates,
}
A_POLICY = {
    "policy_number": "P-1",
    "carrier": "Acme",
    "premium": "100.00",
    "effective_date": "2026-01-01",
    "expiration_date": "2027-01-01",
    "line_of_business": LINES_OF_BUSINESS[0],
}
POLICY_FIELDS: dict[str, st.SearchStrategy[str]] = {
    "policy_number": shaped(r"[A-Za-z0-9./ -]{1,24}"),
    "carrier": typed,
    "premium": amounts,
    "effective_date": dates,
    "expiration_date": dates,
    "status": chosen(POLICIES, "Status"),
    "line_of_business": chosen(POLICIES, "Line of Business"),
}


@SETTINGS
@given(field=st.sampled_from(sorted(CUSTOMER_FIELDS)), data=st.data())
def test_a_customer_the_api_takes_a_sheet_takes_back_as_it_is(
    alice: TestClient, runtime: Runtime, field: str, data: st.DataObject
) -> None:
    value = data.draw(CUSTOMER_FIELDS[field], label=field)
    answer = alice.post("/api/customers", json={"name": "Ann", field: value})

    assert answer.status_code in (201, 422), answer.text
    event(f"{field} answered {answer.status_code}")
    if answer.status_code == 201:
        with runtime.db.read_session() as session:
            customer = session.get(Customer, answer.json()["id"])
            assert customer is not None
            round_trips(CUSTOMERS, customer_record(customer))


@SETTINGS
@given(field=st.sampled_from(sorted(POLICY_FIELDS)), data=st.data())
def test_a_policy_the_api_takes_a_sheet_takes_back_as_it_is(
    alice: TestClient, runtime: Runtime, field: str, data: st.DataObject
) -> None:
    value = data.draw(POLICY_FIELDS[field], label=field)
    customers = alice.get("/api/customers?limit=1").json()["items"]
    number = f"P-{data.draw(st.integers(1, 10**9), label='number')}"
    policy = {**A_POLICY, "policy_number": number, "customer_id": customers[0]["id"]}
    answer = alice.post("/api/policies", json={**policy, field: value})

    assert answer.status_code in (201, 409, 422), answer.text
    event(f"{field} answered {answer.status_code}")
    if answer.status_code == 201:
        with runtime.db.read_session() as session:
            policy_row = session.get(Policy, answer.json()["id"])
            assert policy_row is not None
            round_trips(POLICIES, policy_record(policy_row))
