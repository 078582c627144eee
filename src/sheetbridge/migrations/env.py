"""Alembic environment: runs on the connection Sheetbridge hands it, or on a URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from sheetbridge.db import Base, load_models, make_engine

load_models()
config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        _run(conn)
