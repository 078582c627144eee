"""Engine, sessions and schema migrations for SQLite and PostgreSQL alike."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


READONLY = "sheetbridge_readonly"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # SQLite connections are cheap and writers queue on a lock anyway, so
        # the pool never makes a request wait for a free connection.
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=10,
            max_overflow=-1,
        )
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_size=10, max_overflow=50, pool_pre_ping=True)


def _configure_sqlite(engine: Engine) -> None:
    # Every transaction takes the write lock up front (BEGIN IMMEDIATE): a
    # deferred transaction that reads and then writes fails at once with
    # SQLITE_BUSY instead of waiting, which would turn contention into errors.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        readonly = conn.get_execution_options().get(READONLY, False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


class Database:
    """The app database: one engine and a session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._writer_lock = threading.RLock() if is_sqlite(self.engine) else None
        self.read_sessions = sessionmaker(
            self.engine.execution_options(**{READONLY: True}), expire_on_commit=False
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self._write_turn(), self.sessions() as session, session.begin():
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A Core connection whose transaction commits on success and rolls back
        on error: a session's lighter sibling for statements without ORM objects."""
        with self._write_turn(), self.engine.begin() as connection:
            yield connection

    @contextmanager
    def _write_turn(self) -> Iterator[None]:
        # SQLite allows one writer; a thread that finds the file locked sleeps in
        # growing steps before it retries. Queueing this process's writers on a
        # lock first hands the turn over at once instead.
        if self._writer_lock is None:
            yield
            return
        with self._writer_lock:
            yield

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reads only; on SQLite it does not take the write lock."""
        with self.read_sessions() as session, session.begin():
            yield session

    def upgrade(self) -> None:
        """Bring the schema to the newest migration."""
        from alembic import command

        with self.engine.begin() as connection:
            config = alembic_config(self.url)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "sheetbridge:migrations")
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def load_models() -> None:
    """Import every model module so ``Base.metadata`` knows all tables."""
    from sheetbridge.insurance import models as _insurance  # noqa: F401
    from sheetbridge.queue import models as _queue  # noqa: F401
    from sheetbridge.sheets import models as _sheets  # noqa: F401
    from sheetbridge.sync import models as _sync  # noqa: F401
    from sheetbridge.web import models as _web  # noqa: F401
