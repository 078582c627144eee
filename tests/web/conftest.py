"""Fixtures for the web layer: test clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from sheetbridge.web.app import create_app
from sheetbridge.web.deps import Runtime
from tests.conftest import bearer


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    """The app without workers: jobs stay queued unless a test runs them."""
    with TestClient(create_app(runtime, workers=False)) as test_client:
        yield test_client


@pytest.fixture
def alice(client: TestClient, tokens: dict[str, str]) -> TestClient:
    client.headers.update(bearer(tokens["alice"]))
    return client
