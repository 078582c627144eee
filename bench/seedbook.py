"""Fast bulk seeding of agents and their books for the benchmarks.

``seed_demo`` builds ORM objects one by one and hashes a password per login,
which is fine for 800 policies and slow for 50,000. Here rows go in through
SQLAlchemy Core ``executemany`` with explicit IDs, and every agent shares one
password hash. The values keep the awkward cases a sheet round trip must
survive (leading-zero ZIPs and policy numbers, ``+1`` phones, notes starting
with ``=``), so the sync does realistic work.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from sheetbridge import clock
from sheetbridge.insurance.models import (
    LINES_OF_BUSINESS,
    POLICY_STATUSES,
    Customer,
    Policy,
    User,
)
from sheetbridge.web.security import hash_password

PASSWORD = "bench-password"
FIRST = ("Ana", "José", "Zoë", "Wei", "Priya", "Connor", "Ingrid", "Omar", "Mary")
LAST = ("Núñez", "O'Brien", "Smith-Jones", "Nguyen", "Patel", "Gagnon", "Kowalski")
PLACES = (
    ("Portland", "ME", "04101", "207"),
    ("Boston", "MA", "02108", "617"),
    ("San Juan", "PR", "00901", "787"),
    ("Austin", "TX", "78701", "512"),
)
CARRIERS = ("Granite Mutual", "Harborline Insurance", "Pinecrest Casualty")
NOTES = ("", "", "", "Prefers email.", "=VIP= renews in March", "+1 referral")
BATCH = 5_000


@dataclass(frozen=True)
class Book:
    """What one agent owns after seeding."""

    agent_id: int
    username: str
    customer_ids: range
    policy_ids: range


def add_agents(session: Session, usernames: list[str]) -> list[int]:
    """Insert agents (one shared password hash) and return their IDs in order."""
    password_hash = hash_password(PASSWORD)
    first = (session.scalar(select(func.max(User.id))) or 0) + 1
    now = clock.now()
    ids = [first + index for index in range(len(usernames))]
    rows: list[dict[str, Any]] = [
        {
            "id": user_id,
            "username": name,
            "full_name": name,
            "role": "agent",
            "password_hash": password_hash,
            "created_at": now,
        }
        for user_id, name in zip(ids, usernames, strict=True)
    ]
    session.execute(insert(User), rows)
    return ids


def _customer(rng: random.Random, record_id: int, agent_id: int) -> dict[str, Any]:
    city, state, zip_code, area = rng.choice(PLACES)
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)} {record_id}"
    now = clock.now()
    return {
        "id": record_id,
        "name": name,
        "email": f"client{record_id}@example.com",
        "phone": f"+1 {area}-555-{record_id % 10_000:04d}",
        "address": f"{rng.randint(1, 9999)} Main St",
        "city": city,
        "state": state,
        "zip_code": zip_code,
        "date_of_birth": date(1950, 1, 1) + timedelta(days=rng.randint(0, 20_000)),
        "notes": rng.choice(NOTES),
        "agent_id": agent_id,
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }


def _policy(
    rng: random.Random, record_id: int, customer_id: int, agent_id: int
) -> dict[str, Any]:
    start = date(2024, 1, 1) + timedelta(days=rng.randint(0, 700))
    now = clock.now()
    number = f"00{record_id:07d}" if record_id % 9 == 0 else f"POL-{record_id:07d}"
    return {
        "id": record_id,
        "policy_number": number,
        "customer_id": customer_id,
        "carrier": rng.choice(CARRIERS),
        "line_of_business": rng.choice(LINES_OF_BUSINESS),
        "effective_date": start,
        "expiration_date": start + timedelta(days=365),
        "premium": Decimal(rng.randint(12_000, 900_000)) / 100,
        "status": rng.choice(POLICY_STATUSES),
        "agent_id": agent_id,
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }


def add_book(
    session: Session,
    agent_id: int,
    username: str,
    *,
    customers: int,
    policies: int,
    seed: int = 7,
) -> Book:
    """Insert ``customers`` and ``policies`` (spread over them) for one agent."""
    rng = random.Random(seed + agent_id)
    first_customer = (session.scalar(select(func.max(Customer.id))) or 0) + 1
    first_policy = (session.scalar(select(func.max(Policy.id))) or 0) + 1
    customer_ids = range(first_customer, first_customer + customers)
    policy_ids = range(first_policy, first_policy + policies)
    for start in range(0, customers, BATCH):
        session.execute(
            insert(Customer),
            [_customer(rng, cid, agent_id) for cid in customer_ids[start:][:BATCH]],
        )
    for start in range(0, policies, BATCH):
        session.execute(
            insert(Policy),
            [
                _policy(rng, pid, customer_ids[pid % customers], agent_id)
                for pid in policy_ids[start:][:BATCH]
            ],
        )
    return Book(agent_id, username, customer_ids, policy_ids)
