from __future__ import annotations

from datetime import date, datetime, time
from decimal import Decimal

import pytest

from sheetbridge.sheets.base import Cell, ClippedText, DateSystem
from sheetbridge.sync.columns import (
    Canonical,
    CellError,
    CellParser,
    Column,
    ColumnType,
    normalize_header,
    parse_cell,
    parse_value,
    render_cell,
)

TEXT = Column("Note", "note")
INTEGER = Column("Count", "count", ColumnType.INTEGER)
MONEY = Column("Premium", "premium", ColumnType.MONEY)
DATE = Column("Start", "start", ColumnType.DATE)
STATUS = Column(
    "Status",
    "status",
    ColumnType.ENUM,
    choices=("active", "pending", "non-renewed"),
)
EMAIL = Column("Email", "email", ColumnType.EMAIL)
PHONE = Column("Phone", "phone", ColumnType.PHONE)


def reason(column: Column, raw: Cell) -> str:
    with pytest.raises(CellError) as info:
        parse_cell(column, raw)
    return info.value.reason


@pytest.mark.parametrize(
    "text", ["Policy  number", "policy_number", "POLICY NUMBER", " Policy-Number "]
)
def test_headers_match_ignoring_case_spaces_underscores_and_hyphens(text: str) -> None:
    assert normalize_header(text) == normalize_header("Policy Number")


def test_blank_header_normalizes_to_empty() -> None:
    assert normalize_header(None) == ""
    assert normalize_header("   ") == ""


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  hello ", "hello"),
        ("00123", "00123"),
        ('=HYPERLINK("http://x","prize")', '=HYPERLINK("http://x","prize")'),
        ("-1+1", "-1+1"),
        (4001, "4001"),
        (4001.0, "4001"),
        (12.5, "12.5"),
        ("", None),
        (None, None),
    ],
)
def test_text_stays_text_and_numbers_read_from_text_cells_lose_no_digits(
    raw: Cell, expected: Canonical
) -> None:
    assert parse_cell(TEXT, raw) == expected


def test_text_over_50000_characters_is_rejected() -> None:
    assert parse_cell(TEXT, "x" * 50_000) == "x" * 50_000
    assert reason(TEXT, "x" * 50_001) == "cell text is longer than 50,000 characters"


def test_text_max_length_is_enforced() -> None:
    column = Column("Code", "code", max_length=3)
    assert "longer than 3" in reason(column, "abcd")


def test_control_characters_are_rejected() -> None:
    assert "control character" in reason(TEXT, "a\x00b")
    # Not characters in XML: a workbook holding one no longer opens.
    assert "control character" in reason(TEXT, "a\ufffeb")
    assert "control character" in reason(TEXT, "\uffff")


def test_required_empty_cell_is_an_error_but_parse_value_allows_it() -> None:
    column = Column("Name", "name", required=True)
    assert "required" in reason(column, "  ")
    assert parse_value(column, "  ") is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(42, 42), (42.0, 42), ("42", 42), ("1,234", 1234), (Decimal("7"), 7)],
)
def test_integer_accepts_whole_numbers(raw: Cell, expected: int) -> None:
    assert parse_cell(INTEGER, raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1,234,567", 1234567), ("12.0", 12), ("1,234.00", 1234), ("-7", -7)],
)
def test_integer_text_takes_commas_only_between_groups_of_three_digits(
    raw: str, expected: int
) -> None:
    assert parse_cell(INTEGER, raw) == expected


@pytest.mark.parametrize("raw", ["12,34", "1,2,3", "1,,000", "1234,567", "1,5"])
def test_integer_text_with_commas_out_of_groups_of_three_is_refused_not_joined(
    raw: str,
) -> None:
    assert reason(INTEGER, raw) == (
        "not a whole number: a comma only separates thousands, as in 1,234"
    )


@pytest.mark.parametrize("raw", ["\u0661\u0662\u0663", "\uff11\uff12\uff13"])
def test_integer_text_with_digits_other_than_0_to_9_is_refused(raw: str) -> None:
    assert reason(INTEGER, raw) == "not a whole number: use the digits 0-9"


@pytest.mark.parametrize("raw", ["abc", 1.5, True, "1.5", "1e3", "--1"])
def test_integer_rejects_non_whole_numbers(raw: Cell) -> None:
    assert reason(INTEGER, raw) == "not a whole number"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1234.5, "1234.50"),
        ("1234.5", "1234.50"),
        ("$1,234.50", "1234.50"),
        ("1,234", "1234.00"),
        (Decimal("99.9"), "99.90"),
        (7, "7.00"),
        (1234.4999999999, "1234.50"),
        (0.1 + 0.2, "0.30"),
        ("-$5", "-5.00"),
        ("(5.25)", "-5.25"),
        ("1234.500", "1234.50"),
        (-0.0, "0.00"),
    ],
)
def test_money_becomes_a_string_with_two_decimals(raw: Cell, expected: str) -> None:
    assert parse_cell(MONEY, raw) == expected


def test_money_rejects_text_and_extra_decimals_with_a_reason() -> None:
    assert "not an amount" in reason(MONEY, "abc")
    assert "more than 2 decimal places" in reason(MONEY, "1.234")
    assert "not an amount" in reason(MONEY, True)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1,234.50", "1234.50"),
        ("12,345", "12345.00"),
        ("1,234,567.8", "1234567.80"),
        ("1 234.50", "1234.50"),
        ("1\u00a0234\u00a0567", "1234567.00"),
        ("1\u202f234.50", "1234.50"),
        ("$ 1,234", "1234.00"),
        ("+12", "12.00"),
        ("12.", "12.00"),
        (".5", "0.50"),
        ("$-5", "-5.00"),
        ("($1,234.50)", "-1234.50"),
    ],
)
def test_money_text_takes_separators_only_between_groups_of_three_digits(
    raw: str, expected: str
) -> None:
    assert parse_cell(MONEY, raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["1,50", "1,5", "12,34", "1 234,50", "1,2,3", "1,,000", "1,234,56", "1234,567"],
)
def test_money_text_with_a_comma_as_the_decimal_point_is_refused_not_read_as_cents(
    raw: str,
) -> None:
    assert reason(MONEY, raw) == (
        "not an amount: a comma only separates thousands, as in 1,234.50; "
        "write cents after a point, as in 1.50"
    )


@pytest.mark.parametrize("raw", ["1 23", "12 345,6", "1,234 567", "1  234"])
def test_money_text_with_spaces_other_than_between_groups_of_three_is_refused(
    raw: str,
) -> None:
    assert reason(MONEY, raw).startswith("not an amount")


@pytest.mark.parametrize("raw", ["(-5)", "-$-5", "--5", "-(5)", "(+5)", "+-5", "(5"])
def test_money_text_with_two_signs_is_refused_never_read_as_positive(
    raw: str,
) -> None:
    assert reason(MONEY, raw) == "not an amount; use a number like 1234.50"


@pytest.mark.parametrize(
    "raw", ["\u0661\u0662\u0663", "\uff11\uff12\uff13", "1\u0662.50"]
)
def test_money_text_with_digits_other_than_0_to_9_is_refused(raw: str) -> None:
    assert reason(MONEY, raw) == (
        "has digits other than 0-9; type the amount with 0-9, like 1234.50"
    )


@pytest.mark.parametrize("raw", [1e15, "1000000000000000", -1e20, Decimal("1e300")])
def test_an_amount_too_large_to_keep_to_the_cent_is_called_too_large(
    raw: Cell,
) -> None:
    assert reason(MONEY, raw) == "too large for an amount"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (date(2020, 1, 1), "2020-01-01"),
        (datetime(2020, 1, 1), "2020-01-01"),
        ("2020-01-01", "2020-01-01"),
        ("1/2/2020", "2020-01-02"),
        ("12/31/2020", "2020-12-31"),
        (43831, "2020-01-01"),  # C01: a date read as a serial number
        (43831.0, "2020-01-01"),
    ],
)
def test_dates_become_iso_text(raw: Cell, expected: str) -> None:
    assert parse_cell(DATE, raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "31/12/2020",
        "tomorrow",
        True,
        10**9,
        "\u0661/\u0662/\u0662\u0660\u0662\u0660",  # 1/2/2020 in Arabic-Indic digits
        "\uff12\uff10\uff12\uff10-01-01",  # full-width digits
    ],
)
def test_bad_dates_are_rejected_with_a_format_hint(raw: Cell) -> None:
    hint = reason(DATE, raw)
    assert hint.startswith("not a date; use YYYY-MM-DD")
    if isinstance(raw, str):  # text may be written the US way too, and says so
        assert hint == (
            "not a date; use YYYY-MM-DD, or M/D/YYYY with the month first "
            "(1/5/2020 is 5 January)"
        )


@pytest.mark.parametrize(
    "raw",
    [
        "2020-02-30",
        "2025-02-29",
        "2025-13-01",
        "2025-00-10",
        "2025-04-31",
        "2025-01-00",
        "2025-02-29T10:00",
        "2025-02-29 10:00:00",
    ],
)
def test_a_date_written_yyyy_mm_dd_of_a_day_the_calendar_lacks_says_so(
    raw: str,
) -> None:
    # Not "use YYYY-MM-DD": that is how it is written.
    assert reason(DATE, raw) == f"{raw} is not a day of the calendar"


@pytest.mark.parametrize("raw", ["2/30/2020", "2/29/2021", "4/31/2020"])
def test_a_us_date_of_a_day_the_calendar_lacks_says_so(raw: str) -> None:
    assert reason(DATE, raw) == f"{raw} is not a day of the calendar"


def test_a_us_date_in_text_is_read_month_first() -> None:
    assert parse_cell(DATE, "1/5/2020") == "2020-01-05"
    assert parse_cell(DATE, "12/31/2020") == "2020-12-31"


def test_a_time_in_a_date_column_says_dates_before_1900_cannot_be_held() -> None:
    # A workbook reader gives a time of day for a date before 1900, a
    # negative serial number no spreadsheet shows as a date: one typed as -5
    # reads as 00:00:00, so the message names what may have been typed.
    message = reason(DATE, time(0, 0))  # type: ignore[arg-type]

    assert message.startswith(
        "not a date: a time of day, a negative number or a date before 1900"
    )


@pytest.mark.parametrize(
    "day", [datetime(1899, 12, 29, 12), datetime(1899, 12, 31), datetime(1, 1, 1)]
)
def test_a_day_before_1900_from_a_workbook_reader_says_a_spreadsheet_holds_none(
    day: datetime,
) -> None:
    # openpyxl reads a small negative number in a date cell (-0.5) as a day
    # of 1899; what was typed was a negative number, not that day.
    assert reason(DATE, day).startswith(
        "not a date: a time of day, a negative number or a date before 1900"
    )


@pytest.mark.parametrize("serial", [-3_000_000, -1e9, -1, 0, 0.5])
def test_a_date_number_below_1_says_a_spreadsheet_holds_no_such_date(
    serial: float,
) -> None:
    # Small ones a workbook reader turns into a time of day (see above); the
    # rest reach the parser as the number typed.
    assert reason(DATE, serial).startswith(
        "not a date: a time of day, a negative number or a date before 1900"
    )


@pytest.mark.parametrize("serial", [3e6, float("inf"), float("nan")])
def test_a_date_number_past_the_last_day_is_not_a_date(serial: float) -> None:
    assert reason(DATE, serial) == "not a date; use YYYY-MM-DD"


@pytest.mark.parametrize(
    ("serial", "excel", "google"),
    [
        (1, "1900-01-01", "1899-12-31"),
        (32, "1900-02-01", "1900-01-31"),
        (59, "1900-02-28", "1900-02-27"),
        (59.5, "1900-02-28", "1900-02-27"),
        (61, "1900-03-01", "1900-03-01"),
        (43831, "2020-01-01", "2020-01-01"),
    ],
)
def test_a_serial_below_61_counts_excels_29_february_1900_in_workbooks_only(
    serial: float, excel: str, google: str
) -> None:
    assert CellParser(date_system=DateSystem.EXCEL_1900).parse(DATE, serial) == excel
    assert CellParser().parse(DATE, serial) == google


@pytest.mark.parametrize(
    ("serial", "day"),
    [
        (0, "1904-01-01"),
        (59, "1904-02-29"),
        (60.5, "1904-03-01"),
        (Decimal("42000"), "2018-12-28"),
    ],
)
def test_a_serial_of_a_1904_workbook_counts_days_from_1_january_1904(
    serial: Cell, day: str
) -> None:
    assert CellParser(date_system=DateSystem.EXCEL_1904).parse(DATE, serial) == day


@pytest.mark.parametrize("serial", [60, 60.0, 60.75, Decimal("60.5")])
def test_excels_serial_60_is_refused_as_the_day_that_never_was(serial: Cell) -> None:
    with pytest.raises(CellError) as refused:
        CellParser(date_system=DateSystem.EXCEL_1900).parse(DATE, serial)

    assert refused.value.reason == (
        "not a date: 29 February 1900, a day Excel counts though 1900 was no "
        "leap year; use YYYY-MM-DD"
    )
    assert CellParser().parse(DATE, serial) == "1900-02-28"


@pytest.mark.parametrize(
    "raw",
    [43831.75, datetime(2020, 1, 1, 18, 0), "2020-01-01T18:00", "2020-01-01 23:59:59"],
)
def test_a_date_with_a_time_of_day_reads_as_its_day_c01(raw: Cell) -> None:
    # A serial's fraction is the time of day, which a date field does not keep.
    assert parse_value(DATE, raw) == "2020-01-01"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Active", "active"),
        ("Non Renewed", "non-renewed"),
        ("NON_RENEWED", "non-renewed"),
        (" pending ", "pending"),
    ],
)
def test_enum_matches_choices_loosely(raw: str, expected: str) -> None:
    assert parse_cell(STATUS, raw) == expected


def test_enum_error_lists_allowed_values() -> None:
    assert reason(STATUS, "gone") == "must be one of active, pending, non-renewed"


def test_email_is_checked_and_lowercased() -> None:
    assert parse_cell(EMAIL, " Ann@Example.COM ") == "ann@example.com"
    for bad in ["ann", "ann@example", "a b@example.com", "a@@example.com", "@x.com"]:
        assert "email" in reason(EMAIL, bad)


@pytest.mark.parametrize(
    "raw", ["+15551234", "+1 (555) 123-4567", "555.123.4567", "5551234"]
)
def test_phone_is_kept_as_typed_text(raw: str) -> None:
    assert parse_cell(PHONE, raw) == raw


def test_phone_typed_into_a_number_cell_becomes_text_without_decimal() -> None:
    assert parse_cell(PHONE, 5551234.0) == "5551234"


@pytest.mark.parametrize("raw", ["+Dri7abc", "123", "1" * 16, "555-CALL-NOW"])
def test_bad_phones_are_rejected(raw: str) -> None:
    assert "phone" in reason(PHONE, raw)


def test_render_gives_sheet_types() -> None:
    assert render_cell(TEXT, "00123") == "00123"
    assert render_cell(PHONE, "+15551234") == "+15551234"
    assert render_cell(INTEGER, 5) == 5
    assert render_cell(MONEY, "1234.50") == Decimal("1234.50")
    assert render_cell(DATE, "2020-01-01") == date(2020, 1, 1)
    assert render_cell(STATUS, "active") == "active"
    assert render_cell(MONEY, None) is None


@pytest.mark.parametrize(
    ("column", "value"),
    [
        (TEXT, "=1+1"),
        (INTEGER, -3),
        (MONEY, "0.05"),
        (DATE, "1999-12-31"),
        (STATUS, "non-renewed"),
        (EMAIL, "a@b.co"),
        (PHONE, "+44 20 7946 0958"),
    ],
)
def test_render_then_parse_round_trips(column: Column, value: Canonical) -> None:
    assert parse_cell(column, render_cell(column, value)) == value


def test_a_code_typed_as_a_number_gets_its_leading_zeros_back() -> None:
    zip_code = Column("ZIP", "zip_code", digits=5)
    assert parse_cell(zip_code, 4001) == "04001"
    assert parse_cell(zip_code, 4001.0) == "04001"
    assert parse_cell(zip_code, "04001") == "04001"
    assert parse_cell(zip_code, "04001-1234") == "04001-1234"
    assert parse_cell(Column("Note", "note"), 4001) == "4001"


@pytest.mark.parametrize(
    ("text", "told"),
    [
        ("x" * 32_766, "holds 32,766 characters"),
        ("x" * 32_767, "holds 32,767 characters"),
        ("x" * 40_000, "holds 40,000 characters"),
        ("\N{GRINNING FACE}" * 16_383, "holds 32,766 characters"),
    ],
)
def test_text_that_may_have_been_cut_is_told_with_its_real_length(
    text: str, told: str
) -> None:
    # A cell near or over the limit says how long it really is, not the limit.
    found = reason(TEXT, ClippedText(text))
    assert told in found
    assert "may have been cut" in found or "more than" in found
