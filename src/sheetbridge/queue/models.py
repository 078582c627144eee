"""The job table. The queue knows nothing about what its jobs do."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from sheetbridge.db import Base

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)

_RUNNING_ONLY = text("state = 'running'")
_WAITING_HEADS = text("ready_at IS NOT NULL")
_UNSTARTED = text("state = 'queued' AND attempts = 0")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64))
    owner_id: Mapped[int | None] = mapped_column(Integer, index=True)
    queue_key: Mapped[str] = mapped_column(String(200))
    resource_key: Mapped[str | None] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    enqueued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    run_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The result as listings carry it (JobQueue's ``brief``); NULL where the
    # queue has none, or the job ended before it was kept.
    result_brief: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    # One entry per failed attempt: attempt, error, at, and when it retries.
    errors: Mapped[list[dict[str, Any]]] = mapped_column(
        JSON, default=list, server_default=text("'[]'")
    )
    # The key's turn, set only while the job is its key's *waiting head*: the
    # first active job of the key, queued. Claims walk waiting heads in this
    # order, so keys take turns. NULL on every other job: one behind an
    # earlier job of its key, a running one, a finished one.
    ready_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Kind, keys, owner and payload hashed, for kinds that coalesce identical
    # requests; unique among queued jobs that never started.
    coalesce_key: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        # The database itself guarantees one running job per queue key and per
        # resource key, whatever races happen between workers or machines.
        Index(
            "uq_jobs_running_queue_key",
            "queue_key",
            unique=True,
            sqlite_where=_RUNNING_ONLY,
            postgresql_where=_RUNNING_ONLY,
        ),
        Index(
            "uq_jobs_running_resource_key",
            "resource_key",
            unique=True,
            sqlite_where=_RUNNING_ONLY,
            postgresql_where=_RUNNING_ONLY,
        ),
        # It also lets a key offer one job at a time to claim, its waiting
        # head, and only a queued job hold a turn.
        Index(
            "uq_jobs_waiting_head_queue_key",
            "queue_key",
            unique=True,
            sqlite_where=_WAITING_HEADS,
            postgresql_where=_WAITING_HEADS,
        ),
        CheckConstraint(
            "ready_at IS NULL OR state = 'queued'", name="waiting_head_is_queued"
        ),
        # Waiting heads in turn order: a claim walks it from the front.
        Index(
            "ix_jobs_waiting_heads",
            "ready_at",
            "id",
            sqlite_where=_WAITING_HEADS,
            postgresql_where=_WAITING_HEADS,
        ),
        Index(
            "uq_jobs_unstarted_coalesce_key",
            "coalesce_key",
            unique=True,
            sqlite_where=_UNSTARTED,
            postgresql_where=_UNSTARTED,
        ),
        Index("ix_jobs_queue_key_started_at", "queue_key", "started_at"),
        Index("ix_jobs_state_queue_key_id", "state", "queue_key", "id"),
        Index("ix_jobs_owner_id_id", "owner_id", "id"),
    )
