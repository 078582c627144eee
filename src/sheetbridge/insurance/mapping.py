"""How customers and policies lay out in sheet tabs, and back."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from sheetbridge.insurance.models import (
    LINES_OF_BUSINESS,
    POLICY_STATUSES,
    Customer,
    Policy,
    User,
)
from sheetbridge.insurance.schemas import US_STATES
from sheetbridge.sync.columns import Canonical, Column, ColumnType
from sheetbridge.sync.engine import Record, TabMapping

CUSTOMERS = TabMapping(
    tab="Customers",
    id_header="ID",
    columns=(
        Column("Name", "name", required=True, max_length=200),
        Column("Email", "email", ColumnType.EMAIL, max_length=254),
        Column("Phone", "phone", ColumnType.PHONE, max_length=40),
        Column("Address", "address", max_length=300),
        Column("City", "city", max_length=100),
        Column(
            "State",
            "state",
            ColumnType.ENUM,
            choices=tuple(sorted(US_STATES)),
            choices_named="a US postal code like ME",
        ),
        Column("ZIP", "zip_code", max_length=10, digits=5),
        Column("Date of Birth", "date_of_birth", ColumnType.DATE),
        Column("Notes", "notes"),
        Column("Agent", "agent", readonly=True),
    ),
)

POLICIES = TabMapping(
    tab="Policies",
    id_header="ID",
    columns=(
        Column("Policy Number", "policy_number", required=True, max_length=40),
        Column("Customer ID", "customer_id", ColumnType.INTEGER, required=True),
        Column("Customer", "customer", readonly=True),
        Column("Carrier", "carrier", required=True, max_length=100),
        Column(
            "Line of Business",
            "line_of_business",
            ColumnType.ENUM,
            required=True,
            choices=LINES_OF_BUSINESS,
        ),
        Column("Effective Date", "effective_date", ColumnType.DATE, required=True),
        Column("Expiration Date", "expiration_date", ColumnType.DATE, required=True),
        Column("Premium", "premium", ColumnType.MONEY, required=True),
        Column(
            "Status", "status", ColumnType.ENUM, required=True, choices=POLICY_STATUSES
        ),
        Column("Agent", "agent", readonly=True),
    ),
)

MAPPINGS = (CUSTOMERS, POLICIES)
ENTITY = {CUSTOMERS.tab: "customer", POLICIES.tab: "policy"}


def _canonical(value: Any) -> Canonical:
    if value is None or value == "":
        return None
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    if isinstance(value, int):
        return value
    # Sheets and the column parser ignore surrounding white space; so do we.
    return str(value).strip() or None


def customer_record(customer: Customer) -> Record:
    record = {
        column.field: _canonical(getattr(customer, column.field, None))
        for column in CUSTOMERS.columns
        if not column.readonly
    }
    record["agent"] = customer.agent.username
    return record


def policy_record(policy: Policy) -> Record:
    record = {
        column.field: _canonical(getattr(policy, column.field, None))
        for column in POLICIES.columns
        if not column.readonly
    }
    record["customer"] = policy.customer.name
    record["agent"] = policy.agent.username
    return record


def to_python(mapping: TabMapping, values: Record) -> dict[str, Any]:
    """Canonical sheet values as model attribute values (readonly fields dropped)."""
    types = {column.field: column for column in mapping.columns}
    converted: dict[str, Any] = {}
    for field, value in values.items():
        column = types[field]
        if column.readonly:
            continue
        if value is None:
            converted[field] = None if column.type is ColumnType.DATE else ""
        elif column.type is ColumnType.DATE:
            converted[field] = date.fromisoformat(str(value))
        elif column.type is ColumnType.MONEY:
            converted[field] = Decimal(str(value))
        else:
            converted[field] = value
    return converted


def book_records(
    session: Session, user: User
) -> tuple[dict[str, dict[int, Record]], dict[str, dict[int, int]]]:
    """Every record of the user's book as sheet values, and each one's version.

    Plain rows rather than ORM objects: a large book loads several times faster.
    """
    agent = aliased(User)
    records: dict[str, dict[int, Record]] = {CUSTOMERS.tab: {}, POLICIES.tab: {}}
    versions: dict[str, dict[int, int]] = {CUSTOMERS.tab: {}, POLICIES.tab: {}}
    customer_fields = _fields(CUSTOMERS)
    customers = select(
        Customer.id,
        Customer.version,
        agent.username,
        *(getattr(Customer, name) for name in customer_fields),
    ).join(agent, Customer.agent_id == agent.id)
    policy_fields = _fields(POLICIES)
    policies = (
        select(
            Policy.id,
            Policy.version,
            agent.username,
            Customer.name,
            *(getattr(Policy, name) for name in policy_fields),
        )
        .join(agent, Policy.agent_id == agent.id)
        .join(Customer, Policy.customer_id == Customer.id)
    )
    if not user.is_admin:
        customers = customers.where(Customer.agent_id == user.id)
        policies = policies.where(Policy.agent_id == user.id)
    for record_id, version, username, *values in session.execute(customers):
        record = {
            name: _canonical(v) for name, v in zip(customer_fields, values, strict=True)
        }
        record["agent"] = username
        records[CUSTOMERS.tab][record_id] = record
        versions[CUSTOMERS.tab][record_id] = version
    for record_id, version, username, customer, *values in session.execute(policies):
        record = {
            name: _canonical(v) for name, v in zip(policy_fields, values, strict=True)
        }
        record["customer"] = customer
        record["agent"] = username
        records[POLICIES.tab][record_id] = record
        versions[POLICIES.tab][record_id] = version
    return records, versions


def _fields(mapping: TabMapping) -> list[str]:
    return [column.field for column in mapping.columns if not column.readonly]
