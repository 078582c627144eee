"""Column specs and the coercion between sheet cells and canonical values.

A canonical value is what the app stores and what the sync engine compares:
``str``, ``int`` or ``None``. :func:`parse_cell` turns whatever a sheet (or the
app) holds into it; :func:`render_cell` turns it into what is written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import TypeAlias

from sheetbridge.sheets.base import (
    XLSX_CELL_LIMIT,
    Cell,
    ClippedText,
    DateSystem,
    ErrorValue,
    UncomputedFormula,
    cell_length,
)

Canonical: TypeAlias = str | int | None
"""The canonical, JSON-able and comparable value of one field."""

MAX_TEXT_LENGTH = 50_000
SPREADSHEET_EPOCH = date(1899, 12, 30)
_MAX_SERIAL = (date(9999, 12, 31) - SPREADSHEET_EPOCH).days
EXCEL_LEAP_DAY = 60  # Excel's serial number of 29 February 1900
_GOOGLE_SERIAL_OF_1904 = 1462  # 1 January 1904, as Google counts days
_CENT = Decimal("0.01")
_MONEY_TOLERANCE = Decimal("1e-9")
_US_DATE = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})")
_ISO_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?P<time>[T ].*)?")
_FOLD = re.compile(r"[\s_\-]+")
# Characters no sheet holds: control characters other than tab and line
# breaks, and U+FFFE / U+FFFF, which are no characters in a workbook's XML.
NOT_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_PHONE_CHARS = re.compile(r"[0-9+()\-. ]+")
# A whole number as text: 1234 or 1,234 (commas only between groups of three),
# and as a sheet may show it, with zero cents: 1,234.00.
_INTEGER_TEXT = re.compile(r"[+-]?(?P<whole>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.0*)?")
# Digits of an amount as people write it: 1234.50, 12., .5, optionally in
# groups of three split by one kind of separator: a comma or a (no-break,
# thin) space. A comma is never a decimal point here, so 1,50 is no amount.
_GROUP_SEPARATOR = re.compile("[, \u00a0\u2009\u202f]")
_AMOUNT_DIGITS = (
    r"(?:[0-9]{1,3}(?P<group>[, \u00a0\u2009\u202f])[0-9]{3}(?:(?P=group)[0-9]{3})*"
    r"|[0-9]+)(?:\.[0-9]*)?|\.[0-9]+"
)
# One sign at most, before or after a dollar sign: -$5, $-5, +5, $ 5.
_MONEY_TEXT = re.compile(
    r"(?:(?P<sign>[+-])\s*\$?|\$\s*(?P<sign_after>[+-])?)?\s*"
    rf"(?P<number>{_AMOUNT_DIGITS})"
)


class ColumnType(StrEnum):
    """How the values of a column are checked and stored."""

    TEXT = "text"
    INTEGER = "integer"
    MONEY = "money"
    DATE = "date"
    ENUM = "enum"
    EMAIL = "email"
    PHONE = "phone"


@dataclass(frozen=True)
class Column:
    """One synced column: its header, record field, type and rules."""

    header: str
    field: str
    type: ColumnType = ColumnType.TEXT
    required: bool = False
    readonly: bool = False
    choices: tuple[str, ...] = ()
    max_length: int | None = None
    # Codes of a fixed width, like ZIP codes: a number typed in (the sheet
    # program dropped its leading zeros) is padded back to this many digits.
    digits: int | None = None
    # What an error calls the choices, for a list too long to spell out.
    choices_named: str = ""


class CellError(ValueError):
    """A cell value that does not fit its column; ``reason`` says how to fix it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def normalize_header(text: object) -> str:
    """Fold a header for matching: case, spaces, underscores and hyphens."""
    if text is None:
        return ""
    return _FOLD.sub(" ", str(text)).strip().casefold()


def parse_cell(column: Column, raw: Cell) -> Canonical:
    """Return the canonical value of ``raw`` for ``column`` or raise CellError.

    Also accepts app-side Python values (``Decimal``, ``date``), so it can
    canonicalise records before they are compared.
    """
    value = parse_value(column, raw)
    if value is None and column.required:
        raise CellError("is required; enter a value")
    return value


def parse_value(
    column: Column, raw: Cell, *, date_system: DateSystem = DateSystem.GOOGLE
) -> Canonical:
    """Like :func:`parse_cell`, but an empty value is ``None`` even if required;
    a number in a date column counts days from the day ``date_system`` says."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if column.type is ColumnType.DATE and date_system is not DateSystem.GOOGLE:
        raw = _google_serial(raw, date_system)
    if isinstance(raw, UncomputedFormula):
        raise CellError(
            f"is a formula ({raw}) saved without its result, so its value is "
            "unknown; open the workbook in Excel or LibreOffice and save it"
        )
    if isinstance(raw, ErrorValue):
        raise CellError(
            f"shows the spreadsheet error {raw}, so its value is missing; fix the "
            "formula or type the value"
        )
    if isinstance(raw, ClippedText):
        raise CellError(_clipped_reason(raw))
    return _PARSERS[column.type](column, raw)


def _clipped_reason(text: str) -> str:
    """Why text read at or over the workbook cell limit is not imported."""
    length = cell_length(text)
    counted = " (an emoji counting as two)" if length != len(text) else ""
    if length > XLSX_CELL_LIMIT:
        return (
            f"holds {length:,} characters{counted}, more than the "
            f"{XLSX_CELL_LIMIT:,} a workbook cell can; Excel and LibreOffice cut "
            "the rest, so it is not imported"
        )
    return (
        f"holds {length:,} characters{counted}, at or near the {XLSX_CELL_LIMIT:,} "
        "a workbook cell can hold, so the text may have been cut; it is not imported"
    )


class CellParser:
    """:func:`parse_value` that remembers its answers for one planning pass.

    A tab repeats the same carriers, states, statuses and dates thousands of
    times. ``str``, ``int``, ``float`` and ``date`` cells are remembered per
    column and exact type, since ``True == 1 == 1.0`` in Python yet each parses
    its own way; other cells (datetimes that may carry a zone, decimals) are
    parsed every time.
    """

    def __init__(self, *, date_system: DateSystem = DateSystem.GOOGLE) -> None:
        self.date_system = date_system
        self._memos: dict[int, dict[tuple[type, Cell], Canonical | _Rejected]] = {}

    def parse(self, column: Column, raw: Cell) -> Canonical:
        """Like :func:`parse_value`, raising a fresh CellError for a bad cell."""
        kind = type(raw)
        if kind not in _REMEMBERED:
            return parse_value(column, raw, date_system=self.date_system)
        memo = self._memos.get(id(column))
        if memo is None:
            memo = self._memos[id(column)] = {}
        key = (kind, raw)
        found = memo.get(key, _UNSEEN)
        if found is _UNSEEN:
            try:
                found = parse_value(column, raw, date_system=self.date_system)
            except CellError as exc:
                found = _Rejected(exc.reason)
            memo[key] = found
        if isinstance(found, _Rejected):
            raise CellError(found.reason)
        return found


_REMEMBERED = frozenset({str, int, float, date})


@dataclass(frozen=True)
class _Rejected:
    reason: str


_UNSEEN = _Rejected("")


def render_cell(column: Column, value: Canonical) -> Cell:
    """Return what to write to the sheet for a canonical value."""
    if value is None:
        return None
    if column.type is ColumnType.INTEGER:
        return int(value)
    if column.type is ColumnType.MONEY:
        return Decimal(str(value))
    if column.type is ColumnType.DATE:
        return date.fromisoformat(str(value))
    return str(value)


def _parse_text(column: Column, raw: Cell) -> str:
    text = workbook_line_breaks(cell_text(raw))
    if column.digits and isinstance(raw, int | float) and text.isdigit():
        text = text.zfill(column.digits)
    if len(text) > MAX_TEXT_LENGTH:
        raise CellError("cell text is longer than 50,000 characters")
    if column.max_length is not None and len(text) > column.max_length:
        raise CellError(f"is longer than {column.max_length} characters")
    if NOT_TEXT.search(text):
        raise CellError("contains a control character; remove it")
    return text


def workbook_line_breaks(text: str) -> str:
    """``text`` with its line breaks as a workbook gives them back: a cell
    and a record that differ in how a line ends are the same."""
    return text.replace("\r\n", "\n")


def cell_text(raw: Cell) -> str:
    """A cell as text, spelled as a spreadsheet shows it (never as Python)."""
    if raw is None:
        return ""
    if isinstance(raw, bool):
        return "TRUE" if raw else "FALSE"
    if isinstance(raw, float):
        if raw.is_integer():
            return str(int(raw))  # a number typed into a text column: no ".0"
        return repr(raw)
    if isinstance(raw, Decimal):
        return _plain_decimal(raw)
    if isinstance(raw, datetime):
        return raw.date().isoformat() if _is_midnight(raw) else raw.isoformat(" ")
    if isinstance(raw, date):
        return raw.isoformat()
    return str(raw).strip()


def _plain_decimal(value: Decimal) -> str:
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _parse_integer(column: Column, raw: Cell) -> int:
    if isinstance(raw, bool):
        raise CellError("not a whole number")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float | Decimal):
        return _integral(Decimal(repr(raw)) if isinstance(raw, float) else raw)
    if isinstance(raw, str):
        text = raw.strip()
        match = _INTEGER_TEXT.fullmatch(text)
        if match:
            whole = int(match["whole"].replace(",", ""))
            return -whole if text.startswith("-") else whole
        if foreign_digits(text):
            raise CellError("not a whole number: use the digits 0-9")
        if "," in text:
            raise CellError(
                "not a whole number: a comma only separates thousands, as in 1,234"
            )
    raise CellError("not a whole number")


def _integral(value: Decimal) -> int:
    if not value.is_finite() or value != value.to_integral_value():
        raise CellError("not a whole number")
    return int(value)


# From here on a spreadsheet's numbers (doubles) no longer hold every cent.
_TOO_LARGE = Decimal("1e15")


def _parse_money(column: Column, raw: Cell) -> str:
    amount = _to_decimal(raw)
    if not amount.is_finite():
        raise CellError("not an amount; use a number like 1234.50")
    if abs(amount) >= _TOO_LARGE:
        raise CellError("too large for an amount")
    cents = amount.quantize(_CENT)
    if abs(amount - cents) > _MONEY_TOLERANCE:
        raise CellError("has more than 2 decimal places; use an amount like 1234.50")
    return f"{cents + 0:.2f}"  # "+ 0" turns -0.00 into 0.00


def _to_decimal(raw: Cell) -> Decimal:
    if isinstance(raw, bool):
        raise CellError("not an amount; use a number like 1234.50")
    if isinstance(raw, Decimal):
        return raw
    if isinstance(raw, int):
        return Decimal(raw)
    if isinstance(raw, float):
        return Decimal(repr(raw))  # repr is the shortest exact spelling
    if isinstance(raw, str):
        return _money_text(raw)
    raise CellError("not an amount; use a number like 1234.50")


def _money_text(raw: str) -> Decimal:
    text = raw.strip()
    if foreign_digits(text):
        raise CellError(
            "has digits other than 0-9; type the amount with 0-9, like 1234.50"
        )
    # An accounting negative, (5.25), carries no sign of its own.
    bracketed = text.startswith("(") and text.endswith(")")
    match = _MONEY_TEXT.fullmatch(text[1:-1].strip() if bracketed else text)
    sign = match and (match["sign"] or match["sign_after"])
    if match is None or (bracketed and sign):
        if "," in text:
            raise CellError(
                "not an amount: a comma only separates thousands, as in 1,234.50; "
                "write cents after a point, as in 1.50"
            )
        raise CellError("not an amount; use a number like 1234.50")
    value = Decimal(_GROUP_SEPARATOR.sub("", match["number"]))
    return -value if bracketed or sign == "-" else value


def foreign_digits(text: str) -> bool:
    """Whether ``text`` has digits other than 0-9 (Arabic-Indic, full-width, …),
    which Python reads as numbers but a sheet or a person may not."""
    return any(ch.isdigit() and not ch.isascii() for ch in text)


def _parse_date(column: Column, raw: Cell) -> str:
    if isinstance(raw, bool):
        raise CellError("not a date; use YYYY-MM-DD")
    if isinstance(raw, datetime):
        if raw < _FIRST_DAY:  # a reader's reading of a number below 1
            raise CellError(_BELOW_FIRST_DAY)
        return _date_of(raw).isoformat()
    if isinstance(raw, date):
        return raw.isoformat()
    if isinstance(raw, int | float | Decimal):
        return _from_serial(raw).isoformat()
    if isinstance(raw, str):
        return _date_text(raw.strip()).isoformat()
    if isinstance(raw, time):  # what a reader makes of a serial number below 1
        raise CellError(_BELOW_FIRST_DAY)
    raise CellError("not a date; use YYYY-MM-DD")


# A serial number below 1, which a workbook reader may turn into a time of day
# or a day before 1900.
_FIRST_DAY = datetime(1900, 1, 1)
_BELOW_FIRST_DAY = (
    "not a date: a time of day, a negative number or a date before 1900, none "
    "of which a spreadsheet holds as a date; use YYYY-MM-DD"
)


def _date_of(value: datetime) -> date:
    # A date field keeps the day; a time of day with it (a cell filled by
    # NOW(), say) is no part of it.
    return value.date()


def _is_midnight(value: datetime) -> bool:
    return value.time() == datetime.min.time()


def _google_serial(raw: Cell, date_system: DateSystem) -> Cell:
    """The serial number Google Sheets gives the day an Excel serial number
    names; any other cell as it is.

    Excel counts a 29 February 1900, as Lotus 1-2-3 did before it, though
    1900 was no leap year: its serial 60 is that day, and each serial below it
    is one less than Google's for the same day. From 61 on both agree. In the
    1904 date system, 0 is 1 January 1904, Google's 1,462.
    """
    if isinstance(raw, bool) or not isinstance(raw, int | float | Decimal):
        return raw
    if date_system is DateSystem.EXCEL_1904:
        return raw + _GOOGLE_SERIAL_OF_1904
    number = float(raw)
    if not math.isfinite(number) or not 1 <= number < EXCEL_LEAP_DAY + 1:
        return raw
    if number >= EXCEL_LEAP_DAY:
        raise CellError(
            "not a date: 29 February 1900, a day Excel counts though 1900 was "
            "no leap year; use YYYY-MM-DD"
        )
    return raw + 1


def _from_serial(serial: int | float | Decimal) -> date:
    """The day of a serial number; its fraction is the time of day."""
    number = float(serial)
    if number < 1:
        raise CellError(_BELOW_FIRST_DAY)
    if not math.isfinite(number) or number > _MAX_SERIAL:
        raise CellError("not a date; use YYYY-MM-DD")
    return SPREADSHEET_EPOCH + timedelta(days=math.floor(number))


def _date_text(text: str) -> date:
    us = _US_DATE.fullmatch(text)
    try:
        if us:
            month, day, year = (int(part) for part in us.groups())
            if not (1 <= month <= 12 and 1 <= day <= 31):
                raise ValueError(text)  # no date written M/D/YYYY: the hint
            return _calendar_day(text, year, month, day)
        if iso := _ISO_DATE.fullmatch(text):
            year, month, day = (int(part) for part in iso.groups()[:3])
            written = _calendar_day(text, year, month, day)
            if iso["time"] is None:
                return written
        if len(text) == 10:
            return date.fromisoformat(text)
        return _date_of(datetime.fromisoformat(text))
    except CellError:
        raise
    except ValueError:
        raise CellError(
            "not a date; use YYYY-MM-DD, or M/D/YYYY with the month first "
            "(1/5/2020 is 5 January)"
        ) from None


def _calendar_day(text: str, year: int, month: int, day: int) -> date:
    try:
        return date(year, month, day)
    except ValueError:
        raise CellError(f"{text} is not a day of the calendar") from None


def _parse_enum(column: Column, raw: Cell) -> str:
    folded = _fold(cell_text(raw))
    for choice in column.choices:
        if _fold(choice) == folded:
            return choice
    named = column.choices_named or f"one of {', '.join(column.choices)}"
    raise CellError(f"must be {named}")


def _fold(text: str) -> str:
    return _FOLD.sub("-", text.strip()).casefold()


def email_problem(text: str) -> str | None:
    """Why ``text`` (lowercase, not empty) is no email address, or None: the
    one rule for an address typed into a sheet or sent to the API."""
    local, at, domain = text.partition("@")
    valid = (
        at
        and local
        and "@" not in domain
        and "." in domain.strip(".")
        and not domain.startswith(".")
        and not domain.endswith(".")
        and not any(ch.isspace() for ch in text)
    )
    return None if valid else "not a valid email address; use name@example.com"


def phone_problem(text: str) -> str | None:
    """Why ``text`` (not empty) is no phone number, or None: the one rule for
    a number typed into a sheet or sent to the API."""
    digits = sum(ch.isdigit() for ch in text)
    if not _PHONE_CHARS.fullmatch(text) or not 7 <= digits <= 15:
        return "not a phone number; use 7 to 15 digits, e.g. +1 555 123 4567"
    return None


def _parse_email(column: Column, raw: Cell) -> str:
    text = _parse_text(column, raw).lower()
    if problem := email_problem(text):
        raise CellError(problem)
    return text


def _parse_phone(column: Column, raw: Cell) -> str:
    text = _parse_text(column, raw)
    if problem := phone_problem(text):
        raise CellError(problem)
    return text


_PARSERS: dict[ColumnType, Callable[[Column, Cell], Canonical]] = {
    ColumnType.TEXT: _parse_text,
    ColumnType.INTEGER: _parse_integer,
    ColumnType.MONEY: _parse_money,
    ColumnType.DATE: _parse_date,
    ColumnType.ENUM: _parse_enum,
    ColumnType.EMAIL: _parse_email,
    ColumnType.PHONE: _parse_phone,
}
