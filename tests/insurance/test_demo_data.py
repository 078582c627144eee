"""The demo agency holds only what a person could have typed into the app."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from sheetbridge.db import Database
from sheetbridge.insurance.demo import seed_demo
from sheetbridge.insurance.models import Customer, Policy
from sheetbridge.insurance.schemas import CustomerFields, PolicyFields
from sheetbridge.web.security import hash_password


def _changed_by_the_api(record: Any, schema: type[Any]) -> dict[str, Any]:
    typed = {name: getattr(record, name) for name in schema.model_fields}
    stored = schema.model_validate(typed).model_dump()
    return {
        name: (typed[name], stored[name])
        for name in typed
        if stored[name] != typed[name]
    }


def test_every_demo_record_is_one_the_api_would_store_unchanged(
    db: Database,
) -> None:
    with db.session() as session:
        seed_demo(session, customers=300, policies=800, password_hasher=hash_password)
        customers = session.scalars(select(Customer)).all()
        policies = session.scalars(select(Policy)).all()
        changed = {
            f"customer {c.id}": diff
            for c in customers
            if (diff := _changed_by_the_api(c, CustomerFields))
        } | {
            f"policy {p.id}": diff
            for p in policies
            if (diff := _changed_by_the_api(p, PolicyFields))
        }

    assert changed == {}
