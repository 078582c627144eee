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
        Index("ix_jobs_state_queue_key_id", "state", "queue_key", "id"),
        Index("ix_jobs_owner_id_id", "owner_id", "id"),
    )
