"""Engine, sessions and schema migrations for SQLite and PostgreSQL alike."""

from __future__ import annotations

import fcntl
import os
import threading
import time
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from prometheus_client import Histogram
from sqlalchemy import (
    Connection,
    Engine,
    MetaData,
    String,
    create_engine,
    event,
    make_url,
    text,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql.functions import FunctionElement

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


READONLY = "sheetbridge_readonly"
# More than the threads of any one process that use the database: the web
# server's threadpool (40) and the worker threads (32 by default) with room.
SQLITE_POOL_SIZE = 100
PG_POOL_SIZE = 30
PG_MAX_OVERFLOW = 10

# The database refused or dropped a connection, has none left for this
# process (its pool, or the server's limit), or stayed locked: nothing was
# wrong with the request, and it may work in a moment.
DATABASE_UNAVAILABLE_ERRORS = (OperationalError, PoolTimeoutError)


def unavailable_reason(exc: BaseException) -> str:
    """The first line of what the driver said, without SQLAlchemy's wrapping."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


WRITE_TURN_WAIT_SECONDS = Histogram(
    "sheetbridge_sqlite_write_wait_seconds",
    "Time a SQLite write transaction waited for its turn (threads and processes).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)


class MigrationRefused(Exception):
    """A migration found data it cannot bring under its new rule; it says
    which, and nothing of it was applied."""


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other databases and memory."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def make_engine(
    url: str, *, pool_size: int = PG_POOL_SIZE, max_overflow: int = PG_MAX_OVERFLOW
) -> Engine:
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        # SQLite connections are cheap and writers queue on a lock anyway, so
        # the pool never makes a request wait for a free connection. Nor does
        # it close them: under load, with connections opened and closed all
        # the time, writers' BEGINs waited up to 110 ms (SQLite's busy
        # handler); with every thread's connection kept, never.
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=SQLITE_POOL_SIZE,
            max_overflow=-1,
        )
        _configure_sqlite(engine)
        return engine
    # Connections are kept for every thread that uses one at a time (a new
    # one costs a server process; under load a pool of 10 opening and closing
    # the rest doubled the slowest requests), and capped: by default a web and
    # a worker process stay within PostgreSQL's default 100 connections (the
    # settings database_pool_size and database_max_overflow change both).
    # A server that takes connections but never answers (a host gone from the
    # network) is given up on after a few seconds, as one that refuses them
    # is at once: requests answer 503, not minutes later. A timeout in the URL
    # stands.
    given = make_url(url).query
    connect_args = {} if "connect_timeout" in given else {"connect_timeout": 5}
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        connect_args=connect_args,
    )


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
        # SQLite's own lower() folds A-Z only: "Émile" would not be found by
        # "émile". PostgreSQL's lowers every alphabet, and so does this one;
        # search_text() below also composes accents here.
        dbapi_conn.create_function("lower", 1, _lower, deterministic=True)
        dbapi_conn.create_function(_SEARCH_TEXT, 1, search_form, deterministic=True)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        readonly = conn.get_execution_options().get(READONLY, False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def search_form(text: object) -> object:
    """Text as searches compare it: lower case in every alphabet, an accent
    typed apart from its letter ("e" + U+0301) joined to it ("é"), and the
    letters lower case alone keeps apart from others folded as
    :data:`_FOLDED` (PostgreSQL's form does the same)."""
    if not isinstance(text, str):
        return text
    return unicodedata.normalize("NFC", text.lower()).translate(_FOLD_TABLE)


# A sharp s is "SS" in capitals ("STRASSE"); a Greek word's final sigma is
# the sigma written anywhere else; a long s is an old "s".
_FOLDED = {
    "\N{LATIN SMALL LETTER SHARP S}": "ss",
    "\N{GREEK SMALL LETTER FINAL SIGMA}": "\N{GREEK SMALL LETTER SIGMA}",
    "\N{LATIN SMALL LETTER LONG S}": "s",
}
_FOLD_TABLE = str.maketrans(_FOLDED)


_SEARCH_TEXT = "search_text"


class search_text(FunctionElement[str]):
    """A column in :func:`search_form`, in SQL: PostgreSQL's own lower() and
    normalize(); on SQLite, a function of this process's."""

    type = String()
    name = _SEARCH_TEXT
    inherit_cache = True


@compiles(search_text)
def _search_text(element: search_text, compiler: Any, **kw: Any) -> str:
    text = f"normalize(lower({compiler.process(element.clauses, **kw)}), NFC)"
    for letter, folded in _FOLDED.items():
        text = f"replace({text}, '{letter}', '{folded}')"
    return text


@compiles(search_text, "sqlite")
def _search_text_sqlite(element: search_text, compiler: Any, **kw: Any) -> str:
    return f"{_SEARCH_TEXT}({compiler.process(element.clauses, **kw)})"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


_LOCK_KEY = text("SELECT pg_advisory_xact_lock(:space, hashtext(:key))")


def lock_keys(session: Session, space: int, keys: Iterable[str]) -> None:
    """On PostgreSQL, lock ``keys`` (in the namespace ``space``) until the
    transaction ends, in one order for every caller, so that two takers of
    the same keys wait for each other instead of deadlocking; a key locked
    again is already held. SQLite needs none: it has one writer at a time."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for key in sorted(set(keys)):
        session.execute(_LOCK_KEY, {"space": space, "key": key})


class WriterTurn:
    """One SQLite writer at a time, handed over at once, across threads and
    processes.

    SQLite itself makes a writer that finds the file locked sleep in growing
    steps (up to 100 ms) before it looks again, so a web request queued behind
    the worker process's writes would wait far longer than the writes take.
    Here the threads of a process queue on a lock and the processes on an
    exclusive ``flock`` of a file beside the database; both wake the next
    writer the moment the turn is free.
    """

    def __init__(self, database_file: Path | None) -> None:
        self._threads = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        if database_file is not None:
            lock_file = database_file.with_name(database_file.name + ".writer")
            self._fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)

    @contextmanager
    def __call__(self) -> Iterator[None]:
        asked = time.perf_counter()
        with self._threads:
            # A thread that holds the turn already (a nested write) keeps it.
            outermost = self._depth == 0
            self._depth += 1
            try:
                if outermost:
                    self._flock(fcntl.LOCK_EX)
                    WRITE_TURN_WAIT_SECONDS.observe(time.perf_counter() - asked)
                try:
                    yield
                finally:
                    if outermost:
                        self._flock(fcntl.LOCK_UN)
            finally:
                self._depth -= 1

    def _flock(self, operation: int) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, operation)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Database:
    """The app database: one engine and a session factory."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = PG_POOL_SIZE,
        max_overflow: int = PG_MAX_OVERFLOW,
    ) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size, max_overflow=max_overflow)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_turn = (
            WriterTurn(sqlite_file(url)) if is_sqlite(self.engine) else None
        )
        self.read_sessions = sessionmaker(
            self.engine.execution_options(**{READONLY: True}), expire_on_commit=False
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self._turn(), self.sessions() as session, session.begin():
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A Core connection whose transaction commits on success and rolls back
        on error: a session's lighter sibling for statements without ORM objects."""
        with self._turn(), self.engine.begin() as connection:
            yield connection

    def _turn(self) -> AbstractContextManager[None]:
        """This writer's turn on SQLite; nothing to wait for on PostgreSQL."""
        return self._write_turn() if self._write_turn is not None else nullcontext()

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reads only; on SQLite it does not take the write lock."""
        with self.read_sessions() as session, session.begin():
            yield session

    def upgrade(self) -> None:
        """Bring the schema to the newest migration."""
        from alembic import command

        # Processes starting at once (serve, workers, CLI commands) each
        # upgrade; on SQLite they take the writer turn like any other write.
        with self._turn(), self.engine.begin() as connection:
            config = alembic_config(self.url)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def dispose(self) -> None:
        self.engine.dispose()
        if self._write_turn is not None:
            self._write_turn.close()


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
