"""Who is calling is remembered briefly, never longer than its time to live."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from sqlalchemy import update

from sheetbridge.insurance.models import User
from sheetbridge.web.deps import Runtime, SignedInUsers
from tests.conftest import bearer


def test_a_remembered_user_is_forgotten_after_the_time_to_live() -> None:
    users = SignedInUsers(ttl_s=0.05)
    user = User(id=1, username="alice", role="agent")
    users.put("token:x", user)
    assert users.get("token:x") is user
    time.sleep(0.06)
    assert users.get("token:x") is None


def test_the_cache_never_grows_past_its_limit() -> None:
    users = SignedInUsers(max_entries=3)
    for number in range(10):
        users.put(f"user:{number}", User(id=number, username=f"u{number}"))
    assert users.get("user:9") is not None
    assert sum(users.get(f"user:{n}") is not None for n in range(10)) <= 3


def test_a_role_change_reaches_api_calls_within_the_time_to_live(
    client: TestClient, runtime: Runtime, tokens: dict[str, str]
) -> None:
    runtime.users.ttl_s = 0.2
    headers = bearer(tokens["alice"])
    assert client.get("/metrics", headers=headers).status_code == 403
    with runtime.db.session() as session:
        session.execute(
            update(User).where(User.username == "alice").values(role="admin")
        )
    time.sleep(0.25)
    assert client.get("/metrics", headers=headers).status_code == 200


def test_a_wrong_token_is_refused_even_after_a_right_one_was_remembered(
    client: TestClient, tokens: dict[str, str]
) -> None:
    assert client.get("/api/customers", headers=bearer(tokens["alice"])).is_success
    refused = client.get("/api/customers", headers=bearer(tokens["alice"] + "x"))
    assert refused.status_code == 401
