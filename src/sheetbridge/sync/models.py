"""Sync targets and the per-record snapshot of what was last synced."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from sheetbridge import clock
from sheetbridge.db import Base


class SyncTarget(Base):
    """Where one user's book syncs to: a workbook file or a Google spreadsheet.

    A spreadsheet is the sheet of one book only (the database holds that
    against two changes at once); workbook paths are the app's own, one a user.
    """

    __tablename__ = "sync_targets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), unique=True)
    backend: Mapped[str] = mapped_column(String(16), default="xlsx")
    location: Mapped[str] = mapped_column(String(500))
    delete_mode: Mapped[str] = mapped_column(String(16), default="flag")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=clock.now
    )

    __table_args__ = (
        Index(
            "uq_sync_targets_google_location",
            "location",
            unique=True,
            sqlite_where=text("backend = 'google'"),
            postgresql_where=text("backend = 'google'"),
        ),
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


class SyncConflict(Base):
    """A field changed on both sides since the last sync; waits for a person."""

    __tablename__ = "sync_conflicts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("sync_targets.id"), index=True)
    entity: Mapped[str] = mapped_column(String(32))
    record_id: Mapped[int] = mapped_column(Integer)
    field: Mapped[str] = mapped_column(String(64))
    column: Mapped[str] = mapped_column(String(100))
    row: Mapped[int | None] = mapped_column(Integer)
    app_value: Mapped[Any] = mapped_column(JSON, nullable=True)
    sheet_value: Mapped[Any] = mapped_column(JSON, nullable=True)
    base_value: Mapped[Any] = mapped_column(JSON, nullable=True)
    # False: no earlier sync with this sheet gives the field a base value
    base_known: Mapped[bool] = mapped_column(
        Boolean, default=True, server_default=true()
    )
    job_id: Mapped[int | None] = mapped_column(Integer)
    detected_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=clock.now
    )
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolution: Mapped[str | None] = mapped_column(String(16))
    resolved_value: Mapped[Any] = mapped_column(JSON, nullable=True)
    resolved_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class ImportChange(Base):
    """One field of one record as an import changed it, for audit and undo."""

    __tablename__ = "import_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(Integer, index=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("sync_targets.id"))
    entity: Mapped[str] = mapped_column(String(32))
    record_id: Mapped[int] = mapped_column(Integer)
    field: Mapped[str] = mapped_column(String(64))
    before: Mapped[Any] = mapped_column(JSON, nullable=True)
    after: Mapped[Any] = mapped_column(JSON, nullable=True)
    undone_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PendingId(Base):
    """A record an import created from a row typed into the sheet, whose ID is
    not known to be in that row yet.

    It is stored with the import and dropped once a sync has seen the ID in
    the sheet or written it there, so a sync that stops between the two still
    finds the row again (by the values it had, by header) instead of creating
    its record a second time.
    """

    __tablename__ = "sync_pending_ids"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("sync_targets.id"), index=True)
    entity: Mapped[str] = mapped_column(String(32))
    record_id: Mapped[int] = mapped_column(Integer)
    row: Mapped[int] = mapped_column(Integer)
    id_column: Mapped[int] = mapped_column(Integer)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    job_id: Mapped[int] = mapped_column(Integer)
