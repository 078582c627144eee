"""API tokens for scripts, and browsers' sign-ins."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, String, false
from sqlalchemy.orm import Mapped, mapped_column

from sheetbridge import clock
from sheetbridge.db import Base


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=clock.now
    )


class WebSession(Base):
    """A browser's sign-in: its cookie names it by a random token, kept here
    as a digest. Signing out deletes it, so a copy of the cookie signs no
    one in afterwards."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=clock.now, index=True
    )


class SignInFailure(Base):
    """A wrong password (or unknown user) typed into the sign-in form: a few
    of them in a while hold off that user's next tries from that address,
    many hold off the address (see :func:`~sheetbridge.web.security.held_off`).
    """

    __tablename__ = "sign_in_failures"
    __table_args__ = (Index("ix_sign_in_failures_who", "username", "address"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64))  # as sign-ins fold it
    address: Mapped[str] = mapped_column(String(64), index=True)
    failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    # False while its password is being checked: a try is counted first.
    checked: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
