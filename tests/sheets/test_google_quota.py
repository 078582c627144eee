"""The quota limiters: sliding windows per project and user, shared across threads
and (on PostgreSQL) across processes."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from sheetbridge.config import Settings
from sheetbridge.sheets.quota import (
    InProcessQuotaLimiter,
    PostgresQuotaLimiter,
    QuotaLimits,
    limiter_from_settings,
)

PG_URL = os.environ.get(
    "SHEETBRIDGE_TEST_DATABASE_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_requests_within_the_limit_go_at_once() -> None:
    clock = FakeClock()
    limiter = InProcessQuotaLimiter(
        QuotaLimits(writes_per_minute_user=3), clock=clock, sleep=clock.sleep
    )
    assert [limiter.acquire("write", "bot") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert clock.slept == []


def test_the_request_over_the_limit_waits_for_the_window_and_reports_it() -> None:
    clock = FakeClock()
    limiter = InProcessQuotaLimiter(
        QuotaLimits(writes_per_minute_user=2), clock=clock, sleep=clock.sleep
    )
    waits: list[float] = []
    limiter.acquire("write", "bot")
    clock.now = 10.0
    limiter.acquire("write", "bot")
    clock.now = 20.0
    waited = limiter.acquire("write", "bot", on_wait=waits.append)
    assert waits[0] == pytest.approx(40.001)
    assert waited == pytest.approx(40.001)


class Stopped(Exception):
    pass


def test_a_long_wait_is_slept_a_second_at_a_time_telling_what_is_left() -> None:
    # Each step is a safe point: a sync asked to stop ends its wait at once.
    clock = FakeClock()
    limiter = InProcessQuotaLimiter(
        QuotaLimits(writes_per_minute_user=1), clock=clock, sleep=clock.sleep
    )
    limiter.acquire("write", "bot")
    clock.now = 20.0
    told: list[float] = []

    waited = limiter.acquire("write", "bot", on_wait=told.append)

    assert waited == pytest.approx(40.001)
    assert told[0] == pytest.approx(40.001)
    assert len(told) == len(clock.slept) == 41
    assert all(0 < step <= 1.0 for step in clock.slept)
    assert told == pytest.approx([40.001 - n for n in range(41)])

    def stop_at_the_third(left_s: float) -> None:
        if len(clock.slept) == 2:
            raise Stopped

    clock.slept.clear()
    with pytest.raises(Stopped):
        limiter.acquire("write", "bot", on_wait=stop_at_the_third)
    assert clock.slept == [1.0, 1.0]


def test_users_have_separate_windows_but_share_the_project_one() -> None:
    clock = FakeClock()
    limits = QuotaLimits(writes_per_minute_user=1, writes_per_minute_project=2)
    limiter = InProcessQuotaLimiter(limits, clock=clock, sleep=clock.sleep)
    limiter.acquire("write", "a")
    limiter.acquire("write", "b")
    assert clock.slept == []
    limiter.acquire("write", "c")  # project window full
    assert sum(clock.slept) == pytest.approx(60.001)


def test_reads_and_writes_are_counted_apart() -> None:
    clock = FakeClock()
    limits = QuotaLimits(reads_per_minute_user=1, writes_per_minute_user=1)
    limiter = InProcessQuotaLimiter(limits, clock=clock, sleep=clock.sleep)
    limiter.acquire("read", "a")
    limiter.acquire("write", "a")
    assert clock.slept == []


def test_threads_never_exceed_the_limit_in_any_window() -> None:
    limits = QuotaLimits(
        reads_per_minute_project=None,
        writes_per_minute_project=5,
        reads_per_minute_user=None,
        writes_per_minute_user=None,
        window_s=0.3,
    )
    limiter = InProcessQuotaLimiter(limits)
    stamps: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(3):
            limiter.acquire("write", "x")
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stamps.sort()
    for index in range(len(stamps) - 5):
        assert stamps[index + 5] - stamps[index] >= 0.3 - 0.01


def test_settings_build_one_shared_in_process_limiter() -> None:
    settings = Settings(sheets_writes_per_minute_user=7)
    first = limiter_from_settings(settings)
    assert first is limiter_from_settings(settings)
    assert isinstance(first, InProcessQuotaLimiter)
    assert first.limits.writes_per_minute_user == 7


def test_settings_default_to_googles_quotas_and_real_endpoint_name() -> None:
    settings = Settings()
    assert settings.sheets_reads_per_minute_project == 300
    assert settings.sheets_writes_per_minute_user == 60
    assert settings.google_sheets_base_url == "https://sheets.googleapis.com"


@pytest.fixture
def pg_limiter() -> Iterator[PostgresQuotaLimiter]:
    try:
        engine = create_engine(PG_URL)
        with engine.connect():
            pass
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL not reachable: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    schema = f"quota_test_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    limiter = PostgresQuotaLimiter(
        engine,
        QuotaLimits(
            reads_per_minute_project=None,
            writes_per_minute_project=4,
            reads_per_minute_user=None,
            writes_per_minute_user=None,
            window_s=0.5,
        ),
        table=f"{schema}.grants",
    )
    limiter.create_table()
    yield limiter
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()


@pytest.mark.postgres
def test_postgres_limiter_is_shared_by_separate_limiter_instances(
    pg_limiter: PostgresQuotaLimiter,
) -> None:
    other = PostgresQuotaLimiter(
        pg_limiter.engine, pg_limiter.limits, table=pg_limiter.table
    )
    waits: list[float] = []
    for limiter in (pg_limiter, other, pg_limiter, other):
        assert limiter.acquire("write", "bot") == 0.0
    started = time.monotonic()
    other.acquire("write", "bot", on_wait=waits.append)
    assert waits and 0 < waits[0] <= 0.6
    assert time.monotonic() - started >= 0.1
