"""Keep Sheets API traffic under the per-minute quotas, so bursts wait, not fail.

Google counts read and write requests per minute per project and per user
(the principal: with one service account, every app user is the same "user").
A limiter grants a request only when every applicable window has room; when
it has none, the caller sleeps until the oldest grant leaves the window and
``on_wait(seconds)`` lets it say "waiting for quota" meanwhile.

Both limiters keep a sliding 60 s log of grants rather than a token bucket:
a bucket of N tokens refilling N per minute admits up to 2N requests in one
rolling minute, which the service would answer with 429s.

* :class:`InProcessQuotaLimiter` — one process (SQLite deployments).
* :class:`PostgresQuotaLimiter` — every process sharing one PostgreSQL
  database; grants live in a small table, serialised per bucket with
  transaction-scoped advisory locks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from sqlalchemy import Engine, text

if TYPE_CHECKING:
    from sheetbridge.config import Settings

logger = logging.getLogger(__name__)

Kind = Literal["read", "write"]
OnWait = Callable[[float], None]


@dataclass(frozen=True)
class QuotaLimits:
    """Requests allowed per window; ``None`` or 0 means no limit."""

    reads_per_minute_project: int | None = 300
    writes_per_minute_project: int | None = 300
    reads_per_minute_user: int | None = 60
    writes_per_minute_user: int | None = 60
    window_s: float = 60.0

    def buckets(self, kind: Kind, user: str) -> list[tuple[str, int]]:
        """The (bucket key, limit) pairs one request of ``kind`` counts against."""
        if kind == "read":
            pairs = [
                ("read:project", self.reads_per_minute_project),
                (f"read:user:{user}", self.reads_per_minute_user),
            ]
        else:
            pairs = [
                ("write:project", self.writes_per_minute_project),
                (f"write:user:{user}", self.writes_per_minute_user),
            ]
        return [(key, limit) for key, limit in pairs if limit]


class QuotaLimiter(Protocol):
    """Grants API requests within the quota, blocking while there is none."""

    def acquire(self, kind: Kind, user: str, *, on_wait: OnWait | None = None) -> float:
        """Block until one ``kind`` request by ``user`` may go; return wait in s."""
        ...


class UnlimitedQuota:
    """A limiter that never waits (tests, or when quotas are disabled)."""

    def acquire(self, kind: Kind, user: str, *, on_wait: OnWait | None = None) -> float:
        """Grant at once."""
        return 0.0


class InProcessQuotaLimiter:
    """Sliding-window limiter shared by the threads of one process."""

    def __init__(
        self,
        limits: QuotaLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Use ``limits`` (Google's defaults if omitted)."""
        self.limits = limits or QuotaLimits()
        self._clock = clock
        self._sleep = sleep
        self._grants: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def acquire(self, kind: Kind, user: str, *, on_wait: OnWait | None = None) -> float:
        """Block until the request fits every window; see :class:`QuotaLimiter`."""
        return _wait_for_grant(self._try_grant, self._sleep, kind, user, on_wait)

    def _try_grant(self, kind: Kind, user: str) -> float:
        now = self._clock()
        window_s = self.limits.window_s
        with self._lock:
            wait_s = 0.0
            logs = []
            for key, limit in self.limits.buckets(kind, user):
                log = self._grants.setdefault(key, deque())
                while log and log[0] <= now - window_s:
                    log.popleft()
                if len(log) >= limit:
                    wait_s = max(wait_s, log[len(log) - limit] + window_s - now)
                logs.append(log)
            if wait_s > 0:
                return wait_s + 0.001
            for log in logs:
                log.append(now)
            return 0.0


class PostgresQuotaLimiter:
    """Sliding-window limiter shared by all processes using one PostgreSQL DB.

    Each grant is a row ``(bucket, granted_at)``; a grant takes
    ``pg_advisory_xact_lock`` on each bucket (in sorted order, so two callers
    never deadlock), counts the rows inside the window and inserts its own.
    Times come from the database clock so machines with skewed clocks agree.
    The table is created by the app's migrations (see :data:`TABLE_DDL`).
    """

    TABLE = "sheets_quota_grants"

    def __init__(
        self,
        engine: Engine,
        limits: QuotaLimits | None = None,
        *,
        table: str = TABLE,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Use ``engine`` (a PostgreSQL SQLAlchemy engine) and ``limits``."""
        if engine.dialect.name != "postgresql":
            raise ValueError("PostgresQuotaLimiter needs a PostgreSQL engine")
        self.engine = engine
        self.limits = limits or QuotaLimits()
        self.table = table
        self._sleep = sleep

    def create_table(self) -> None:
        """Create the grants table if missing (tests; production uses migrations)."""
        with self.engine.begin() as conn:
            for statement in table_ddl(self.table):
                conn.execute(text(statement))

    def acquire(self, kind: Kind, user: str, *, on_wait: OnWait | None = None) -> float:
        """Block until the request fits every window; see :class:`QuotaLimiter`."""
        return _wait_for_grant(self._try_grant, self._sleep, kind, user, on_wait)

    def _try_grant(self, kind: Kind, user: str) -> float:
        buckets = sorted(self.limits.buckets(kind, user))
        if not buckets:
            return 0.0
        window = f"{self.limits.window_s} seconds"
        with self.engine.begin() as conn:
            wait_s = 0.0
            for key, limit in buckets:
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                    {"key": f"{self.table}:{key}"},
                )
                row = conn.execute(
                    text(
                        f"SELECT count(*), EXTRACT(EPOCH FROM ("
                        f"  (SELECT granted_at FROM {self.table}"
                        "    WHERE bucket = :key"
                        "    AND granted_at > clock_timestamp() - CAST(:w AS interval)"
                        "    ORDER BY granted_at DESC OFFSET :n - 1 LIMIT 1)"
                        "  + CAST(:w AS interval) - clock_timestamp()))"
                        f" FROM {self.table} WHERE bucket = :key"
                        "  AND granted_at > clock_timestamp() - CAST(:w AS interval)"
                    ),
                    {"key": key, "w": window, "n": limit},
                ).one()
                if row[0] >= limit:
                    wait_s = max(wait_s, float(row[1] or 0.0))
            if wait_s > 0:
                return wait_s + 0.001
            for key, _ in buckets:
                conn.execute(
                    text(
                        f"DELETE FROM {self.table} WHERE bucket = :key"
                        " AND granted_at <= clock_timestamp() - CAST(:w AS interval)"
                    ),
                    {"key": key, "w": window},
                )
                conn.execute(
                    text(
                        f"INSERT INTO {self.table} (bucket, granted_at)"
                        " VALUES (:key, clock_timestamp())"
                    ),
                    {"key": key},
                )
            return 0.0


def table_ddl(table: str = PostgresQuotaLimiter.TABLE) -> list[str]:
    """The DDL of the grants table (also what the Alembic migration creates)."""
    return [
        f"CREATE TABLE IF NOT EXISTS {table} ("
        " id BIGSERIAL PRIMARY KEY,"
        " bucket TEXT NOT NULL,"
        " granted_at TIMESTAMPTZ NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS {table.replace('.', '_')}_bucket_time"
        f" ON {table} (bucket, granted_at)",
    ]


def _wait_for_grant(
    try_grant: Callable[[Kind, str], float],
    sleep: Callable[[float], None],
    kind: Kind,
    user: str,
    on_wait: OnWait | None,
) -> float:
    """Ask for a grant until one comes; returns the seconds spent waiting.

    The sleep happens outside any lock, so other callers' grants go on.
    """
    waited_s = 0.0
    while True:
        wait_s = try_grant(kind, user)
        if wait_s <= 0:
            return waited_s
        logger.info(
            "sheets.quota_wait",
            extra={"kind": kind, "quota_user": user, "wait_s": round(wait_s, 3)},
        )
        wait_telling(wait_s, sleep, on_wait)
        waited_s += wait_s


_NOTHING_LEFT_S = 1e-6  # what the sum of the steps leaves over of the wait


def wait_telling(
    seconds: float,
    sleep: Callable[[float], None],
    tell: Callable[[float], None] | None,
    *,
    step_s: float = 1.0,
) -> None:
    """Sleep ``seconds`` a step at a time, telling ``tell`` the seconds left
    before each: every step is a safe point, where a sync asked to stop ends
    its wait (its reporter raises), and its user sees the time count down."""
    left = seconds
    while left > _NOTHING_LEFT_S:
        if tell is not None:
            tell(left)
        step = min(left, step_s)
        sleep(step)
        left -= step


_shared: dict[tuple[object, ...], QuotaLimiter] = {}
_shared_guard = threading.Lock()


def limiter_from_settings(
    settings: Settings, engine: Engine | None = None
) -> QuotaLimiter:
    """The deployment's shared limiter (one per process and configuration).

    ``settings.sheets_quota_backend == "postgres"`` needs ``engine`` (the app's
    PostgreSQL engine); otherwise grants are counted in this process.
    """
    limits = QuotaLimits(
        reads_per_minute_project=settings.sheets_reads_per_minute_project,
        writes_per_minute_project=settings.sheets_writes_per_minute_project,
        reads_per_minute_user=settings.sheets_reads_per_minute_user,
        writes_per_minute_user=settings.sheets_writes_per_minute_user,
    )
    use_postgres = settings.sheets_quota_backend == "postgres"
    key = (limits, use_postgres, id(engine) if use_postgres else None)
    with _shared_guard:
        if key not in _shared:
            if use_postgres:
                if engine is None:
                    raise ValueError("the postgres quota limiter needs an engine")
                _shared[key] = PostgresQuotaLimiter(engine, limits)
            else:
                _shared[key] = InProcessQuotaLimiter(limits)
        return _shared[key]
