"""Sync targets and the per-record snapshot of what was last synced."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from sheetbridge import clock
from sheetbridge.db import Base


class SyncTarget(Base):
    """Where one user's book syncs to: a workbook file (or, later, a spreadsheet)."""

    __tablename__ = "sync_targets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), unique=True)
    backend: Mapped[str] = mapped_column(String(16), default="xlsx")
    location: Mapped[str] = mapped_column(String(500))
    delete_mode: Mapped[str] = mapped_column(String(16), default="flag")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=clock.now
    )


class SyncSnapshot(Base):
    """The field values of one record as of its last sync to one target tab."""

    __tablename__ = "sync_snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("sync_targets.id"))
    entity: Mapped[str] = mapped_column(String(32))
    record_id: Mapped[int] = mapped_column(Integer)
    fields: Mapped[dict[str, Any]] = mapped_column(JSON)
    synced_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=clock.now
    )

    __table_args__ = (UniqueConstraint("target_id", "entity", "record_id"),)
