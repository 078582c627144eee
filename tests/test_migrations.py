"""The Alembic migrations and the SQLAlchemy models describe the same schema."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from sheetbridge.db import Base, Database, alembic_config, load_models


def test_migrated_database_matches_the_models(db: Database) -> None:
    load_models()
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_upgrade_is_idempotent(db: Database) -> None:
    db.upgrade()
    db.upgrade()


def test_rebuilding_record_tables_for_ids_never_reused_keeps_every_row(
    tmp_path: Path,
) -> None:
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.db'}"
    database = Database(url)
    try:
        with database.engine.begin() as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, "0005")
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
    finally:
        database.dispose()
