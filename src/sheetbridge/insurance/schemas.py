"""Validated shapes of customers and policies as the JSON API takes and gives them."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from sheetbridge import clock
from sheetbridge.sheets.base import XLSX_TEXT_LIMIT, cell_length
from sheetbridge.sync.columns import (
    NOT_TEXT,
    email_problem,
    foreign_digits,
    phone_problem,
    workbook_line_breaks,
)

PolicyStatus = Literal["active", "pending", "cancelled", "expired", "non-renewed"]
LineOfBusiness = Literal[
    "auto",
    "home",
    "renters",
    "life",
    "health",
    "umbrella",
    "commercial",
    "workers-comp",
]

_ZIP = re.compile(r"^[0-9]{5}(-[0-9]{4})?$")


def _email(value: str) -> str:
    value = value.strip().lower()
    if value and (problem := email_problem(value)):
        raise ValueError(problem)
    return value


def _phone(value: str) -> str:
    value = value.strip()
    if foreign_digits(value):
        raise ValueError("write a phone number with the digits 0-9")
    if value and (problem := phone_problem(value)):
        raise ValueError(problem)
    return value


def _zip(value: str) -> str:
    value = value.strip()
    if value and not _ZIP.match(value):
        raise ValueError("a ZIP code is 5 digits, or 5+4 like 04001-1234")
    return value


# US postal codes: the states, DC, the territories and the military "states".
US_STATES = frozenset(
    (  # noqa: SIM905 - a few lines of codes read better than 59 lines
        "AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO "
        "MT NE NV NH NJ NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY "
        "DC PR VI GU AS MP AA AE AP"
    ).split()
)


def _state(value: str) -> str:
    value = value.strip().upper()
    if value and value not in US_STATES:
        raise ValueError("a state is a US postal code like ME")
    return value


def _text(value: str) -> str:
    return workbook_line_breaks(value).strip()


def _visible(char: str) -> bool:
    # Not a space, a format character (zero-width, direction marks) or a mark
    # that only sits on another character.
    return unicodedata.category(char)[0] not in "ZCM"


@dataclass(frozen=True)
class _Words:
    """Text without its surrounding spaces (as the sheet's copy, and every
    comparison with it, has it), of at most ``most`` characters; the API docs
    show the limits."""

    most: int
    required: bool = False

    def check(self, value: str) -> str:
        value = _text(value)
        if self.required and not value:
            raise ValueError("may not be empty")
        if self.required and not any(map(_visible, value)):
            raise ValueError("needs a letter, digit or sign you can see")
        if len(value) > self.most:
            raise ValueError(f"at most {self.most:,} characters")
        return value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        shown = handler(schema)
        shown["maxLength"] = self.most
        if self.required:
            shown["minLength"] = 1
        return shown


Name = Annotated[str, _Words(200, required=True)]
Email = Annotated[str, Field(max_length=254), AfterValidator(_email)]
Phone = Annotated[str, Field(max_length=40), AfterValidator(_phone)]
Zip = Annotated[str, Field(max_length=10), AfterValidator(_zip)]
State = Annotated[str, Field(max_length=2), AfterValidator(_state)]
Address = Annotated[str, _Words(300)]
City = Annotated[str, _Words(100)]


def _fits_a_cell(value: str) -> str:
    # As much as the app writes to a workbook cell: more would be cut there.
    if cell_length(value) > XLSX_TEXT_LIMIT:
        raise ValueError(
            f"at most {XLSX_TEXT_LIMIT:,} characters, an emoji counting as two"
        )
    return value


Notes = Annotated[
    str,
    AfterValidator(_text),
    AfterValidator(_fits_a_cell),
    Field(json_schema_extra={"maxLength": XLSX_TEXT_LIMIT}),
]
# SQLite gives back naive datetimes; every time the API shows is UTC, marked so.
UtcTime = Annotated[datetime, AfterValidator(clock.as_utc)]
MAX_PREMIUM = Decimal("9999999999.99")  # the column holds 12 digits, 2 of them cents


def _premium(value: Decimal) -> Decimal:
    if value < 0:
        raise ValueError("a premium cannot be negative")
    if value > MAX_PREMIUM:
        raise ValueError(f"a premium is at most {MAX_PREMIUM}")
    if value != value.quantize(Decimal("0.01")):
        raise ValueError("a premium has at most 2 decimal places (cents)")
    return value + 0  # "+ 0" turns -0.00 into 0.00


# One sign at most, then digits with a point before, between or after them
# (12.50, 12., .5): a number as a sheet cell takes it, without the dollar
# sign and thousands separators a cell may also show. Digits are 0-9 only.
_AMOUNT_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def _amount_text(value: object) -> object:
    # No exponent, no NaN or Infinity, no hex or digit separators (1,50 is
    # one and a half in much of the world). JSON numbers pass.
    if isinstance(value, str) and not _AMOUNT_TEXT.fullmatch(value.strip()):
        if foreign_digits(value):
            raise ValueError("write a premium with the digits 0-9, like 1234.50")
        if "," in value:
            raise ValueError(
                "write a premium with a point for cents and no commas, like 1234.50"
            )
        raise ValueError("write a premium as an amount like 1234.50")
    return value


Premium = Annotated[
    Decimal,
    AfterValidator(_premium),
    BeforeValidator(_amount_text),
    # Text with two decimals in JSON; a Decimal to the models, which compare
    # it with the stored amount (an unchanged premium is no change).
    PlainSerializer(lambda value: f"{value:.2f}", return_type=str, when_used="json"),
]
PolicyNumber = Annotated[str, _Words(40, required=True)]
ShortText = Annotated[str, _Words(100, required=True)]


MAX_ID = 2**31 - 1


def _not_true_or_false(value: object) -> object:
    # JSON true would otherwise pass as the number 1: record 1, version 1.
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not true or false")
    return value


def _worded(message: str) -> WrapValidator:
    """Say ``message`` when pydantic's own checks refuse the value (its type or
    bounds), in place of its words; the schemas' own messages stand."""

    def check(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            if any(error["type"] == "value_error" for error in exc.errors()):
                raise
            raise PydanticCustomError("whole_number", message) from None

    return WrapValidator(check)


WholeNumber = BeforeValidator(_not_true_or_false)
# The bounds first, so they apply to the number itself (and the API docs show
# them as its minimum and maximum).
RecordId = Annotated[
    int,
    Field(ge=1, le=MAX_ID),
    WholeNumber,
    _worded(f"must be a record ID, a whole number from 1 to {MAX_ID:,}"),
]
Version = Annotated[
    int,
    Field(ge=1, le=MAX_ID, description="The version edited"),
    WholeNumber,
    _worded("must be the version of the record you edited, a whole number from 1"),
]
NULLABLE = frozenset({"date_of_birth", "agent_id"})
# Text a record may leave blank: null clears it, as "" does.
BLANKABLE = frozenset(
    {"email", "phone", "address", "city", "state", "zip_code", "notes"}
)


def _plausible_date(earliest: date, latest: date) -> AfterValidator:
    def check(value: date | None) -> date | None:
        if value is not None and not earliest <= value <= latest:
            raise ValueError(f"must be between {earliest} and {latest}")
        return value

    return AfterValidator(check)


_WRITTEN_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _written_date(value: object) -> object:
    """A date as the API takes it: text like 2026-05-01 (or a date, from the
    app's own code). Not a number (a sheet's day count? seconds since 1970?),
    nor a date and time."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and not value.strip():
        raise ValueError("may not be empty")
    if not isinstance(value, str) or not _WRITTEN_DATE.fullmatch(value):
        raise ValueError("must be a date written YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value} is not a day of the calendar") from None


_EARLIEST_BIRTH = date(1900, 1, 1)


def _plausible_birth(value: date | None) -> date | None:
    # Today in UTC, the app's one clock: for customers in the US it is their
    # today or their tomorrow, so nobody born today is refused.
    if value is not None and value > clock.now().date():
        raise ValueError("must not be in the future")
    if value is not None and value < _EARLIEST_BIRTH:
        raise ValueError(f"must be {_EARLIEST_BIRTH} or later")
    return value


WrittenDate = BeforeValidator(_written_date)
BirthDate = Annotated[date, WrittenDate, AfterValidator(_plausible_birth)]
PolicyDate = Annotated[
    date, WrittenDate, _plausible_date(date(1900, 1, 1), date(2200, 12, 31))
]


def plain_text(value: object) -> object:
    """Refuse a string that databases or sheets cannot store as text (control
    characters but tab and line breaks, lone surrogates, U+FFFE, U+FFFF);
    anything else passes unchanged."""
    if isinstance(value, str) and (
        NOT_TEXT.search(value) or (not value.isprintable() and _unencodable(value))
    ):
        raise ValueError("contains characters that are not text")
    return value


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    @field_validator("*", mode="before")
    @classmethod
    def _sane(cls, value: object, info: ValidationInfo) -> object:
        if value is None and info.field_name in BLANKABLE:
            return ""
        if info.field_name in NULLABLE and isinstance(value, str) and not value.strip():
            return None  # as the dashboard's form sends a cleared field
        if value is None and info.field_name not in NULLABLE:
            raise ValueError("may not be empty")
        return plain_text(value)


def error_message(error: Mapping[str, Any]) -> str:
    """A validation error's message in the agency's words: pydantic's own
    checks (bounds, lengths, kinds of value, choices, fields missing or
    unknown) worded plainly, and a validator's own message without the
    "Value error, " pydantic puts first."""
    kind = error.get("type")
    bounds = error.get("ctx") or {}
    if kind == "greater_than_equal":
        return f"must be {_number(bounds['ge'])} or more"
    if kind == "less_than_equal":
        return f"must be {_number(bounds['le'])} or less"
    if kind == "string_too_long":
        return f"at most {_number(bounds['max_length'])} characters"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "must be a whole number"
    if kind in ("bool_parsing", "bool_type"):
        return "must be true or false"
    if kind == "literal_error":
        return f"must be {bounds['expected']}"
    if kind == "too_long":
        return f"at most {_number(bounds['max_length'])} entries"
    return PLAIN.get(str(kind), str(error["msg"]).removeprefix("Value error, "))


# Pydantic's checks of a value's kind and of the fields given, in plain words.
PLAIN = {
    "missing": "is required",
    "extra_forbidden": "is not a field here; leave it out",
    "string_type": "must be text",
    "list_type": "must be a list, […]",
    "decimal_type": "must be an amount, like 1234.50",
}


def _number(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _unencodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class CustomerFields(_Input):
    name: Name
    email: Email = ""
    phone: Phone = ""
    address: Address = ""
    city: City = ""
    state: State = ""
    zip_code: Zip = ""
    date_of_birth: BirthDate | None = None
    notes: Notes = ""


class CustomerCreate(CustomerFields):
    agent_id: RecordId | None = None


class CustomerUpdate(_Input):
    version: Version
    name: Name | None = None
    email: Email | None = None
    phone: Phone | None = None
    address: Address | None = None
    city: City | None = None
    state: State | None = None
    zip_code: Zip | None = None
    date_of_birth: BirthDate | None = None
    notes: Notes | None = None
    agent_id: RecordId | None = None


class PolicyFields(_Input):
    policy_number: PolicyNumber
    customer_id: RecordId
    carrier: ShortText
    line_of_business: LineOfBusiness
    effective_date: PolicyDate
    expiration_date: PolicyDate
    premium: Premium
    status: PolicyStatus = "active"

    @field_validator("expiration_date")
    @classmethod
    def _dates_in_order(cls, value: date, info: ValidationInfo) -> date:
        effective = info.data.get("effective_date")  # absent if itself invalid
        if effective is not None and value < effective:
            raise ValueError(
                f"{value.isoformat()} is before the effective date, "
                f"{effective.isoformat()}"
            )
        return value


class PolicyCreate(PolicyFields):
    agent_id: RecordId | None = None


class PolicyUpdate(_Input):
    version: Version
    policy_number: PolicyNumber | None = None
    customer_id: RecordId | None = None
    carrier: ShortText | None = None
    line_of_business: LineOfBusiness | None = None
    effective_date: PolicyDate | None = None
    expiration_date: PolicyDate | None = None
    premium: Premium | None = None
    status: PolicyStatus | None = None
    agent_id: RecordId | None = None


class CustomerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    email: str
    phone: str
    address: str
    city: str
    state: str
    zip_code: str
    date_of_birth: date | None
    notes: str
    agent_id: int
    agent: str
    version: int
    updated_at: UtcTime


class PolicyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    policy_number: str
    customer_id: int
    customer: str
    carrier: str
    line_of_business: str
    effective_date: date
    expiration_date: date
    premium: Premium
    status: str
    agent_id: int
    agent: str
    version: int
    updated_at: UtcTime


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int
