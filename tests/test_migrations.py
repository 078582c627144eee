"""The Alembic migrations and the SQLAlchemy models describe the same schema."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from sheetbridge.db import (
    Base,
    Database,
    MigrationRefused,
    alembic_config,
    load_models,
)
from tests.conftest import blank_database, postgres_url


def test_migrated_database_matches_the_models(db: Database) -> None:
    load_models()
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_upgrade_is_idempotent(db: Database) -> None:
    db.upgrade()
    db.upgrade()


@contextmanager
def customer_at(tmp_path: Path, revision: str) -> Iterator[Database]:
    """A SQLite database migrated to ``revision`` holding user 1 and its
    customer 7, 'C'."""
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.db'}"
    database = Database(url)
    try:
        with database.engine.begin() as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
        with database.session() as session:
            session.execute(
                text(
                    "INSERT INTO users (id, username, full_name, role, password_hash,"
                    " created_at) VALUES (1, 'a', 'A', 'agent', 'x', '2026-01-01')"
                )
            )
            session.execute(
                text(
                    "INSERT INTO customers (id, name, email, phone, address, city,"
                    " state, zip_code, notes, agent_id, version, created_at,"
                    " updated_at) VALUES (7, 'C', '', '', '', '', '', '', '', 1, 1,"
                    " '2026-01-01', '2026-01-01')"
                )
            )
        yield database
    finally:
        database.dispose()


def test_rebuilding_record_tables_for_ids_never_reused_keeps_every_row(
    tmp_path: Path,
) -> None:
    with customer_at(tmp_path, "0005") as database:
        database.upgrade()
        with database.session() as session:
            assert session.scalar(text("SELECT name FROM customers")) == "C"
            session.execute(text("DELETE FROM customers WHERE id = 7"))
            session.execute(
                text(
                    "INSERT INTO customers (name, email, phone, address, city,"
                    " state, zip_code, notes, agent_id, version, created_at,"
                    " updated_at) VALUES ('D', '', '', '', '', '', '', '', 1, 1,"
                    " '2026-01-01', '2026-01-01')"
                )
            )
            assert session.scalar(text("SELECT id FROM customers")) == 8


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def blank_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    server = postgres_url()
    if server is None:
        pytest.skip("PostgreSQL is not reachable (see the message above)")
    with blank_database(server) as url:
        yield url


def migrated_to(url: str, revision: str) -> Database:
    from alembic import command

    database = Database(url)
    with database.engine.begin() as connection:
        config = alembic_config(url)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    return database


def add_targets(
    database: Database, targets: list[tuple[str, str, str]], *, first_id: int = 1
) -> None:
    """A user and their sync target for each (username, backend, location)."""
    with database.session() as session:
        for user_id, (username, backend, location) in enumerate(targets, first_id):
            session.execute(
                text(
                    "INSERT INTO users (id, username, full_name, role, password_hash,"
                    " created_at) VALUES (:id, :username, '', 'agent', 'x',"
                    " '2026-01-01')"
                ),
                {"id": user_id, "username": username},
            )
            session.execute(
                text(
                    "INSERT INTO sync_targets (user_id, backend, location,"
                    " delete_mode, created_at) VALUES (:id, :backend, :location,"
                    " 'flag', '2026-01-01')"
                ),
                {"id": user_id, "backend": backend, "location": location},
            )


def test_upgrade_stops_where_books_share_a_spreadsheet_naming_it_and_their_users(
    blank_url: str,
) -> None:
    database = migrated_to(blank_url, "0007")
    try:
        add_targets(
            database,
            [
                ("bob", "google", "1SharedSheetAbc"),
                ("alice", "google", "1SharedSheetAbc"),
                ("carol", "google", "1CarolsOwnSheet"),
                ("dave", "xlsx", "/books/shared.xlsx"),
                ("erin", "xlsx", "/books/shared.xlsx"),
            ],
        )

        with pytest.raises(MigrationRefused) as refused:
            database.upgrade()

        message = str(refused.value)
        assert "spreadsheet 1SharedSheetAbc is the sheet of alice's and bob's" in (
            message
        )
        assert "carol" not in message and "shared.xlsx" not in message
        with database.session() as session:
            version = session.scalar(text("SELECT version_num FROM alembic_version"))
        assert version == "0007"
    finally:
        database.dispose()


def test_two_books_cannot_be_stored_on_one_google_spreadsheet_but_on_one_workbook(
    blank_url: str,
) -> None:
    database = migrated_to(blank_url, "0007")
    try:
        database.upgrade()
        add_targets(
            database,
            [
                ("dave", "xlsx", "/books/shared.xlsx"),
                ("erin", "xlsx", "/books/shared.xlsx"),
                ("bob", "google", "1SharedSheetAbc"),
            ],
        )

        with pytest.raises(IntegrityError):
            add_targets(database, [("alice", "google", "1SharedSheetAbc")], first_id=4)
    finally:
        database.dispose()


def test_db_upgrade_says_which_books_share_a_spreadsheet_in_one_line(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    database = migrated_to(url, "0007")
    add_targets(
        database,
        [("alice", "google", "1SharedSheetAbc"), ("bob", "google", "1SharedSheetAbc")],
    )
    database.dispose()
    env = {
        **os.environ,
        "SHEETBRIDGE_DATA_DIR": str(tmp_path / "data"),
        "SHEETBRIDGE_DATABASE_URL": url,
    }

    ran = subprocess.run(
        [sys.executable, "-m", "sheetbridge", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert ran.returncode == 1
    (line,) = ran.stderr.strip().splitlines()
    assert line.startswith(f"cannot upgrade the database {url}: ")
    assert "spreadsheet 1SharedSheetAbc is the sheet of alice's and bob's" in line


def test_upgrading_folds_the_policy_numbers_stored_before(tmp_path: Path) -> None:
    with customer_at(tmp_path, "0011") as database:
        with database.session() as session:
            for policy_id, number in (
                (1, "AB-1"),
                (2, "ПОЛ-2"),
                (3, "Mu\u0308ller\u200b-3"),
            ):
                session.execute(
                    text(
                        "INSERT INTO policies (id, policy_number, customer_id,"
                        " carrier, line_of_business, effective_date,"
                        " expiration_date, premium, status, agent_id, version,"
                        " created_at, updated_at) VALUES (:id, :number, 7, 'X',"
                        " 'auto', '2026-01-01', '2027-01-01', 1, 'active', 1, 1,"
                        " '2026-01-01', '2026-01-01')"
                    ),
                    {"id": policy_id, "number": number},
                )

        database.upgrade()

        with database.read_session() as session:
            keys = session.execute(
                text("SELECT id, policy_number_key FROM policies ORDER BY id")
            ).all()
            table = session.scalar(
                text("SELECT sql FROM sqlite_master WHERE name = 'policies'")
            )
        assert [tuple(row) for row in keys] == [
            (1, "ab-1"),
            (2, "пол-2"),
            (3, "müller-3"),
        ]
        assert "AUTOINCREMENT" in str(table), "IDs are still never handed out again"
