"""Users, customers and policies."""

from __future__ import annotations

import re
import unicodedata
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Date,
    DateTime,
    ForeignKey,
    Integer,
    Numeric,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from sheetbridge import clock
from sheetbridge.db import Base

ROLES = ("admin", "agent")
# A user's workbook is named after them, so a user name is a plain file name.
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# File names Windows keeps for devices, whatever follows a dot: its naming
# rules list ports 0 to 9 and those numbered with superscript 1, 2 and 3;
# CONIN$ and CONOUT$ are the console.
DEVICE_NAMES = frozenset(
    {"con", "prn", "aux", "nul", "conin$", "conout$"}
    | {f"{port}{n}" for port in ("com", "lpt") for n in "0123456789\u00b9\u00b2\u00b3"}
)


def is_device_name(name: str) -> bool:
    """Whether a file of this name would be a device on Windows."""
    return name.split(".")[0].lower() in DEVICE_NAMES


def is_file_name(name: str) -> bool:
    """Whether a user name can name the user's workbook as it is."""
    return bool(USERNAME.fullmatch(name)) and not is_device_name(name)


POLICY_STATUSES = ("active", "pending", "cancelled", "expired", "non-renewed")
LINES_OF_BUSINESS = (
    "auto",
    "home",
    "renters",
    "life",
    "health",
    "umbrella",
    "commercial",
    "workers-comp",
)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    full_name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(16), default="agent")
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=clock.now
    )

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class Customer(Base):
    __tablename__ = "customers"
    # IDs are never handed out again: a row kept in the sheet for a deleted
    # record must not be taken over by a new one (SQLite would reuse the top ID).
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    email: Mapped[str] = mapped_column(String(254), default="")
    phone: Mapped[str] = mapped_column(String(40), default="")
    address: Mapped[str] = mapped_column(String(300), default="")
    city: Mapped[str] = mapped_column(String(100), default="")
    state: Mapped[str] = mapped_column(String(2), default="")
    zip_code: Mapped[str] = mapped_column(String(10), default="")
    date_of_birth: Mapped[date | None] = mapped_column(Date)
    notes: Mapped[str] = mapped_column(Text, default="")
    agent_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=clock.now
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=clock.now
    )

    agent: Mapped[User] = relationship(lazy="joined")

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012


def fold_number(number: str) -> str:
    """A policy number as numbers are told apart: by how it looks, not by the
    characters that make it up. In no case, in any alphabet ("STRASSE-1" is
    "straße-1"); an accent typed apart from its letter, full-width letters and
    digits, dashes of any kind, and characters nobody sees (a zero-width
    space, a soft hyphen, a variation selector) as the plain number."""
    folded = unicodedata.normalize(
        "NFKC", unicodedata.normalize("NFKC", number).casefold()
    )
    return "".join(_plain(char) for char in folded)


def _plain(char: str) -> str:
    """A character of a folded number as numbers are told apart: a dash or
    minus of any kind is a hyphen; an invisible one (a format character, a
    variation selector) is nothing."""
    category = unicodedata.category(char)
    if category == "Pd" or char == "\u2212":
        return "-"
    if category == "Cf" or _VARIATION_SELECTOR.fullmatch(char):
        return ""
    return char


_VARIATION_SELECTOR = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]")


def _folded_number(context: Any) -> str | None:
    number = context.get_current_parameters().get("policy_number")
    return fold_number(number) if isinstance(number, str) else None


class Policy(Base):
    __tablename__ = "policies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    policy_number: Mapped[str] = mapped_column(String(40), unique=True)
    # The number as numbers are told apart ("ab-1" is "AB-1", see
    # fold_number; its plain forms can be many times longer): kept by the
    # database's inserts and by every change through a Policy.
    policy_number_key: Mapped[str | None] = mapped_column(
        Text, index=True, default=_folded_number
    )
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    carrier: Mapped[str] = mapped_column(String(100))
    line_of_business: Mapped[str] = mapped_column(String(32))
    effective_date: Mapped[date] = mapped_column(Date)
    expiration_date: Mapped[date] = mapped_column(Date)
    premium: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    status: Mapped[str] = mapped_column(String(16), default="active")
    agent_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=clock.now
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=clock.now
    )

    customer: Mapped[Customer] = relationship(lazy="joined")
    agent: Mapped[User] = relationship(lazy="joined")

    # IDs are never handed out again: a row kept in the sheet for a deleted
    # record must not be taken over by a new one (SQLite would reuse the top ID).
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012

    @validates("policy_number")
    def _keep_key(self, _name: str, number: str) -> str:
        self.policy_number_key = fold_number(number)
        return number
