"""Shared fixtures: a migrated database per test, on SQLite or PostgreSQL.

The suite runs on SQLite by default. With ``SHEETBRIDGE_TEST_DATABASE_URL`` set
to a PostgreSQL URL it runs every database test there instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher
from sqlalchemy import create_engine, make_url, select, text

from sheetbridge.config import Settings
from sheetbridge.db import Base, Database, load_models
from sheetbridge.insurance.demo import seed_demo
from sheetbridge.insurance.models import User
from sheetbridge.web import security
from sheetbridge.web.app import build_runtime
from sheetbridge.web.deps import Runtime
from sheetbridge.web.security import hash_password, issue_token

PG_DEFAULT_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``database`` the tests that use the suite's database: the only ones
    a run with SHEETBRIDGE_TEST_DATABASE_URL set runs differently."""
    for item in items:
        if "database_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.database)


def postgres_url() -> str | None:
    """A reachable PostgreSQL URL, or None (a failure under CI)."""
    url = os.environ.get("SHEETBRIDGE_TEST_DATABASE_URL") or PG_DEFAULT_URL
    try:
        _reach(url)
    except Exception as exc:
        message = f"PostgreSQL is not reachable at {url}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        print(f"\n*** SKIPPING PostgreSQL tests: {message} ***\n")
        return None
    return url


def _reach(url: str) -> None:
    engine = create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


@contextmanager
def blank_database(url: str) -> Iterator[str]:
    """A new, empty database on the server of ``url``, dropped afterwards.

    Every test run gets its own, so runs side by side never share tables.
    """
    name = f"sheetbridge_test_{os.getpid()}_{secrets.token_hex(4)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def private_database(url: str) -> Iterator[str]:
    """A new database on the server of ``url``, migrated, and dropped afterwards."""
    with blank_database(url) as private:
        database = Database(private)
        database.upgrade()
        database.dispose()
        yield private


def truncate_all(database: Database) -> None:
    load_models()
    names = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with database.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(scope="session")
def database_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database: a PostgreSQL URL, or the path of a SQLite file."""
    url = os.environ.get("SHEETBRIDGE_TEST_DATABASE_URL")
    if url:
        try:
            _reach(url)
        except Exception as exc:
            # Asked for by name: its absence is an error, never a skip.
            pytest.fail(
                f"SHEETBRIDGE_TEST_DATABASE_URL names {url}, which is not "
                f"reachable: {exc}. Unset it to run these tests on SQLite.",
                pytrace=False,
            )
        with private_database(url) as private:
            yield private
        return
    path = tmp_path_factory.mktemp("template") / "template.db"
    database = Database(f"sqlite:///{path}")
    database.upgrade()
    database.dispose()
    yield str(path)


@pytest.fixture
def database_url(database_template: str, tmp_path: Path) -> str:
    if database_template.startswith("postgresql"):
        database = Database(database_template)
        truncate_all(database)
        database.dispose()
        return database_template
    target = tmp_path / "app.db"
    shutil.copy(database_template, target)
    return f"sqlite:///{target}"


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A freshly migrated PostgreSQL database, for tests that need PostgreSQL."""
    url = postgres_url()
    if url is None:
        pytest.skip("PostgreSQL is not reachable (see the message above)")
    with private_database(url) as private:
        yield private


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        secret_key="test-secret",
        demo=False,
        poll_interval_s=0.05,
        progress_interval_s=0.05,
        lease_s=10,
        worker_concurrency=12,
        workbook_locked_retry_s=0.2,
    )


@pytest.fixture(scope="session", autouse=True)
def quick_password_hashes() -> Iterator[None]:
    """Argon2 at its lowest cost for the users tests add: at its default cost a
    hash takes 0.15 s on a slow core, and most tests seed four users. Each
    hash names its own cost, so sign-in checks them as it checks any other."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            security,
            "_hasher",
            PasswordHasher(time_cost=1, memory_cost=8, parallelism=1),
        )
        yield


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


def api_client(base_url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers=bearer(token), timeout=30)
