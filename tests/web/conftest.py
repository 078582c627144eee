"""Fixtures for the web layer: a runtime with a small agency, clients per user."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from sheetbridge.config import Settings
from sheetbridge.insurance.demo import seed_demo
from sheetbridge.insurance.models import User
from sheetbridge.web.app import build_runtime, create_app
from sheetbridge.web.deps import Runtime
from sheetbridge.web.security import hash_password, issue_token


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        secret_key="test-secret",
        demo=False,
        poll_interval_s=0.05,
        lease_s=10,
        worker_concurrency=12,
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    runtime = build_runtime(settings)
    with runtime.db.session() as session:
        seed_demo(session, customers=30, policies=60, password_hasher=hash_password)
    yield runtime
    runtime.db.dispose()


@pytest.fixture
def tokens(runtime: Runtime) -> dict[str, str]:
    """An API token per demo user, by username."""
    with runtime.db.session() as session:
        users = session.scalars(select(User)).all()
        return {user.username: issue_token(session, user, "tests") for user in users}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    """The app without workers: jobs stay queued unless a test runs them."""
    with TestClient(create_app(runtime, workers=False)) as test_client:
        yield test_client


@pytest.fixture
def alice(client: TestClient, tokens: dict[str, str]) -> TestClient:
    client.headers.update(bearer(tokens["alice"]))
    return client


def api_client(base_url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers=bearer(token), timeout=30)
