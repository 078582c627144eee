"""The job table. The queue knows nothing about what its jobs do."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from sheetbridge.db import Base

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)

_RUNNING_ONLY = text("state = 'running'")
_READY_HEADS = text("state = 'queued' AND ready_at IS NOT NULL")
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
    error: Mapped[str | None] = mapped_column(Text)
    # One entry per failed attempt: attempt, error, at, and when it retries.
    errors: Mapped[list[dict[str, Any]]] = mapped_column(
        JSON, default=list, server_default=text("'[]'")
    )
    # Set on the first active job of its queue key only (its "head"), to the
    # time the key was last served: the claim query scans heads in this order,
    # which makes keys take turns and keeps the scan as short as the number of
    # keys with work. NULL for jobs waiting behind an earlier job of their key.
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
        Index(
            "uq_jobs_unstarted_coalesce_key",
            "coalesce_key",
            unique=True,
            sqlite_where=_UNSTARTED,
            postgresql_where=_UNSTARTED,
        ),
        Index(
            "ix_jobs_ready_heads",
            "ready_at",
            "id",
            sqlite_where=_READY_HEADS,
            postgresql_where=_READY_HEADS,
        ),
        Index("ix_jobs_queue_key_started_at", "queue_key", "started_at"),
        Index("ix_jobs_state_queue_key_id", "state", "queue_key", "id"),
        Index("ix_jobs_owner_id_id", "owner_id", "id"),
    )
