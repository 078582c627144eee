"""Sheets API quota grants, counted across processes on PostgreSQL."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Text
from sqlalchemy.orm import Mapped, mapped_column

from sheetbridge.db import Base


class QuotaGrant(Base):
    """One API request granted to a quota bucket (see ``sheets.quota``)."""

    __tablename__ = "sheets_quota_grants"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    bucket: Mapped[str] = mapped_column(Text)
    granted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_sheets_quota_grants_bucket_time", "bucket", "granted_at"),
    )
