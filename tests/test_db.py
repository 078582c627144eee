"""The database layer: the SQLite write turn (one writer at a time, handed over
at once) and the PostgreSQL connections each process keeps."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import QueuePool, text
from sqlalchemy.exc import OperationalError

from sheetbridge.config import Settings
from sheetbridge.db import Database
from sheetbridge.web.app import build_runtime

HOLD_S = 0.24


def _handover_delay(first: Database, second: Database) -> float:
    """Seconds between ``first`` ending a write and ``second`` starting its own."""
    holding = threading.Event()
    released_at = 0.0

    def hold() -> None:
        nonlocal released_at
        with first.session() as session:
            session.execute(text("INSERT INTO marks (at) VALUES (1)"))
            holding.set()
            time.sleep(HOLD_S)
        released_at = time.perf_counter()

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(5)
    with second.session() as session:
        session.execute(text("INSERT INTO marks (at) VALUES (2)"))
        started_at = time.perf_counter()  # the insert has the write lock now
    holder.join()
    return started_at - released_at


def test_a_writer_of_another_process_gets_the_turn_as_soon_as_it_is_free(
    tmp_path: Path,
) -> None:
    # Two Database objects stand for two processes: each has its own engine
    # and its own lock file handle, as the web and the worker process do.
    url = f"sqlite:///{tmp_path / 'turn.db'}"
    web, worker = Database(url), Database(url)
    try:
        with web.session() as session:
            session.execute(text("CREATE TABLE marks (at INTEGER)"))
        delays = [_handover_delay(worker, web) for _ in range(5)]
        # SQLite's own busy handler would look again only ~30-90 ms later.
        assert statistics.median(delays) < 0.015, delays
        with web.read_session() as session:
            assert session.scalar(text("SELECT count(*) FROM marks")) == 10
    finally:
        web.dispose()
        worker.dispose()


def test_each_process_keeps_the_postgresql_connections_its_settings_allow(
    tmp_path: Path,
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url="postgresql+psycopg://root@127.0.0.1:5432/not_opened",
        database_pool_size=4,
        database_max_overflow=2,
    )
    runtime = build_runtime(settings)  # builds the engine; connects to nothing
    try:
        pool = runtime.db.engine.pool
        assert isinstance(pool, QueuePool)
        assert (pool.size(), pool._max_overflow) == (4, 2)
    finally:
        runtime.db.dispose()


@pytest.mark.timeout(60)
def test_a_postgresql_server_that_never_answers_is_given_up_on(tmp_path: Path) -> None:
    # A listening socket that never says a word, as a host gone from the
    # network behind a port still open: connecting fails, it does not hang.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        settings = Settings(
            data_dir=tmp_path,
            database_url=f"postgresql+psycopg://root@127.0.0.1:{port}/silent",
        )
        runtime = build_runtime(settings)
        try:
            with pytest.raises(OperationalError), runtime.db.engine.connect():
                pass
        finally:
            runtime.db.dispose()
