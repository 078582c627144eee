"""Shared fixtures: a migrated database per test, on SQLite or PostgreSQL.

The suite runs on SQLite by default. With ``SHEETBRIDGE_TEST_DATABASE_URL`` set
to a PostgreSQL URL it runs every database test there instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from sheetbridge.db import Base, Database, load_models

PG_DEFAULT_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"


def postgres_url() -> str | None:
    """A reachable PostgreSQL URL, or None (a failure under CI)."""
    url = os.environ.get("SHEETBRIDGE_TEST_DATABASE_URL") or PG_DEFAULT_URL
    try:
        engine = create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        message = f"PostgreSQL is not reachable at {url}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        print(f"\n*** SKIPPING PostgreSQL tests: {message} ***\n")
        return None
    return url


def reset_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    database = Database(url)
    database.upgrade()
    database.dispose()


def truncate_all(database: Database) -> None:
    load_models()
    names = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with database.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(scope="session")
def database_template(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated database: a PostgreSQL URL, or the path of a SQLite file."""
    url = os.environ.get("SHEETBRIDGE_TEST_DATABASE_URL")
    if url:
        reset_postgres(url)
        return url
    path = tmp_path_factory.mktemp("template") / "template.db"
    database = Database(f"sqlite:///{path}")
    database.upgrade()
    database.dispose()
    return str(path)


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
    reset_postgres(url)
    yield url
