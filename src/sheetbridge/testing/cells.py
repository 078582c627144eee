"""Cell values as the emulated Sheets API stores, parses and renders them.

A stored cell is a plain ``str``/``int``/``float``/``bool`` (what a RAW write
stores) or a :class:`Rich` cell holding a formula and/or a number format (what
USER_ENTERED parsing produces for ``=1+1``, ``2020-01-01`` or ``2,000.50``).
Empty cells are ``None``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, TypeAlias

from sheetbridge.sheets.ranges import RangeSyntaxError, parse_cells

Scalar: TypeAlias = str | int | float | bool
EPOCH = datetime(1899, 12, 30)
MAX_CELL_CHARS = 50_000


@dataclass
class Rich:
    """A cell with a formula or a number format (``kind`` is DATE, NUMBER, ...);
    with no value and no formula, an empty cell whose format a value written
    there later shows in."""

    value: Scalar | None
    formula: str | None = None
    kind: str = ""
    pattern: str = ""


Stored: TypeAlias = Scalar | Rich | None
Lookup: TypeAlias = Callable[[int, int], Stored]

_NUMBER = re.compile(
    r"([+-]?)(\$?)((?:\d{1,3}(?:,\d{3})+|\d*)(?:\.(\d*))?(?:[eE][+-]?\d+)?)(%?)"
)
_ISO_DATE = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?"
)
_US_DATE = re.compile(
    r"(\d{1,2})/(\d{1,2})/(\d{4})(?: (\d{1,2}):(\d{2})(?::(\d{2}))?)?"
)


def number(value: float) -> int | float:
    """Store integral numbers as ``int`` (the API answers ``2``, not ``2.0``)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def parse_raw(value: object) -> Stored:
    """Store a value written with ``valueInputOption=RAW``: text stays text."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return number(value)
    text = str(value)
    return text if text else None


def parse_user_entered(value: object) -> Stored:
    """Store a value as if typed into the UI: formulas, numbers, dates, booleans."""
    if not isinstance(value, str):
        return parse_raw(value)
    text = value
    if not text:
        return None
    if text.startswith("'"):
        return text[1:] or None
    if text.startswith("="):
        return Rich(0, formula=text)
    stripped = text.strip()
    if stripped.upper() in ("TRUE", "FALSE"):
        return stripped.upper() == "TRUE"
    parsed = _parse_number(stripped) or _parse_date(stripped)
    if parsed is not None:
        return parsed
    if text[0] in "+-" and len(text) > 1:
        return Rich(0, formula="=" + text)
    return text


def _parse_number(text: str) -> Stored:
    match = _NUMBER.fullmatch(text)
    if not match or not any(ch.isdigit() for ch in text):
        return None
    sign, currency, body, decimals, percent = match.groups()
    amount = float(body.replace(",", "")) * (-1 if sign == "-" else 1)
    places = "." + "0" * len(decimals) if decimals else ""
    if percent:
        return Rich(number(amount / 100), kind="PERCENT", pattern=f"0{places}%")
    if currency:
        return Rich(number(amount), kind="CURRENCY", pattern=f'"$"#,##0{places}')
    if "," in body:
        return Rich(number(amount), kind="NUMBER", pattern=f"#,##0{places}")
    return number(amount)


def _parse_date(text: str) -> Stored:
    for regex, date_pattern, order in (
        (_ISO_DATE, "yyyy-mm-dd", (0, 1, 2)),
        (_US_DATE, "M/d/yyyy", (2, 0, 1)),
    ):
        match = regex.fullmatch(text)
        if not match:
            continue
        parts = match.groups()
        year, month, day = (int(parts[i]) for i in order)
        try:
            hour, minute, second = (int(p or 0) for p in parts[3:])
            moment = datetime(year, month, day, hour, minute, second)
        except ValueError:
            return None
        if parts[3] is None:
            return Rich(to_serial(moment), kind="DATE", pattern=date_pattern)
        time_pattern = " hh:mm:ss" if date_pattern.startswith("y") else " H:mm:ss"
        return Rich(
            to_serial(moment), kind="DATE_TIME", pattern=date_pattern + time_pattern
        )
    return None


def to_serial(moment: datetime | date) -> int | float:
    """Serial number of a date or naive datetime (days since 1899-12-30)."""
    if not isinstance(moment, datetime):
        moment = datetime(moment.year, moment.month, moment.day)
    delta = moment - EPOCH
    return number(delta.days + delta.seconds / 86400 + delta.microseconds / 86400e6)


def from_serial(serial: float) -> datetime:
    """Naive datetime of a serial number."""
    return EPOCH + timedelta(days=serial)


def holds_value(cell: Stored) -> bool:
    """Whether a cell holds a value or a formula, not only a format."""
    if isinstance(cell, Rich):
        return cell.value is not None or cell.formula is not None
    return cell is not None


def effective(cell: Stored, lookup: Lookup) -> Scalar | None:
    """The value a cell shows, evaluating its formula against ``lookup``."""
    if isinstance(cell, Rich):
        if cell.formula is not None:
            return Formula(cell.formula, lookup).evaluate()
        return cell.value
    return cell


def render(cell: Stored, value_render: str, date_render: str, lookup: Lookup) -> Scalar:
    """Render a stored cell for a values read; ``""`` means empty."""
    if cell is None:
        return ""
    if value_render == "FORMULA" and isinstance(cell, Rich) and cell.formula:
        return cell.formula
    value = effective(cell, lookup)
    if value is None:
        return ""
    kind = cell.kind if isinstance(cell, Rich) else ""
    is_date = kind in ("DATE", "DATE_TIME")
    if value_render == "FORMATTED_VALUE":
        return format_value(value, cell if isinstance(cell, Rich) else None)
    if is_date and date_render == "FORMATTED_STRING" and isinstance(cell, Rich):
        return format_value(value, cell)
    return value


def format_value(value: Scalar, rich: Rich | None) -> str:
    """Render a value the way the UI shows it (FORMATTED_VALUE)."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, str):
        return value
    if rich is not None and rich.pattern:
        if rich.kind in ("DATE", "DATE_TIME"):
            return format_date(from_serial(value), rich.pattern)
        return _format_number(value, rich.pattern)
    return general_number(value)


def general_number(value: float) -> str:
    """The "Automatic" number format: integers plainly, up to 10 decimals."""
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e15):
        return str(int(value))
    text = f"{round(value, 10):.15g}"
    return text.replace("e", "E")


def _format_number(value: float, pattern: str) -> str:
    places = len(pattern.split(".")[1].rstrip("%")) if "." in pattern else 0
    if pattern.endswith("%"):
        return f"{value * 100:.{places}f}%"
    text = f"{abs(value):,.{places}f}"
    sign = "-" if value < 0 else ""
    return f"{sign}${text}" if pattern.startswith('"$"') else f"{sign}{text}"


def format_date(moment: datetime, pattern: str) -> str:
    """Render a datetime with a small subset of the spreadsheet date tokens."""
    tokens = re.findall(r"yyyy|yy|mm|m|MM|M|dd|d|hh|h|HH|H|ss|s|[^a-zA-Z]+", pattern)
    out: list[str] = []
    after_hour = False
    for token in tokens:
        lower = token.lower()
        if lower in ("mm", "m") and after_hour:
            out.append(f"{moment.minute:02d}" if lower == "mm" else str(moment.minute))
        elif token in ("mm", "MM"):
            out.append(f"{moment.month:02d}")
        elif token in ("m", "M"):
            out.append(str(moment.month))
        elif lower == "yyyy":
            out.append(f"{moment.year:04d}")
        elif lower == "yy":
            out.append(f"{moment.year % 100:02d}")
        elif lower == "dd":
            out.append(f"{moment.day:02d}")
        elif lower == "d":
            out.append(str(moment.day))
        elif lower in ("hh", "h"):
            out.append(f"{moment.hour:02d}" if lower == "hh" else str(moment.hour))
        elif lower in ("ss", "s"):
            out.append(f"{moment.second:02d}")
        else:
            out.append(token)
        after_hour = lower in ("hh", "h") or (after_hour and not lower.isalpha())
    return "".join(out)


class FormulaError(Exception):
    """A formula cannot be evaluated; ``code`` is what the cell shows."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)|(?P<str>\"(?:[^\"]|\"\")*\")"
    r"|(?P<ref>\$?[A-Za-z]{1,3}\$?\d+(?::\$?[A-Za-z]{1,3}\$?\d+)?)(?![A-Za-z0-9_(])"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)|(?P<op><=|>=|<>|[-+*/^&=<>(),;]))"
)


class Formula:
    """A tiny evaluator: arithmetic, ``&``, comparisons, cell refs, a few functions."""

    def __init__(self, text: str, lookup: Lookup, depth: int = 0) -> None:
        self.text = text
        self.lookup = lookup
        self.depth = depth
        self.tokens: list[tuple[str, str]] = []
        self.pos = 0

    def evaluate(self) -> Scalar:
        """Evaluate the formula; errors evaluate to ``#ERROR!``-style text."""
        try:
            self.tokens = _tokenize(self.text[1:])
            value = self._comparison()
            if self.pos != len(self.tokens):
                raise FormulaError("#ERROR!")
            return _scalar(value)
        except FormulaError as exc:
            return exc.code
        except (ZeroDivisionError, OverflowError):
            return "#DIV/0!"

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self, op: str | None = None) -> tuple[str, str]:
        token = self._peek()
        if token is None or (op is not None and token != ("op", op)):
            raise FormulaError("#ERROR!")
        self.pos += 1
        return token

    def _binary(self, ops: tuple[str, ...], inner: Callable[[], object]) -> object:
        left = inner()
        while (token := self._peek()) and token[0] == "op" and token[1] in ops:
            self.pos += 1
            left = _apply(token[1], left, inner())
        return left

    def _comparison(self) -> object:
        return self._binary(("=", "<>", "<", ">", "<=", ">="), self._concat)

    def _concat(self) -> object:
        return self._binary(("&",), self._additive)

    def _additive(self) -> object:
        return self._binary(("+", "-"), self._term)

    def _term(self) -> object:
        return self._binary(("*", "/"), self._power)

    def _power(self) -> object:
        return self._binary(("^",), self._unary)

    def _unary(self) -> object:
        token = self._peek()
        if token in (("op", "-"), ("op", "+")):
            self.pos += 1
            value = _num(self._unary())
            return -value if token == ("op", "-") else value
        return self._primary()

    def _primary(self) -> object:
        kind, text = self._take()
        if kind == "num":
            return number(float(text))
        if kind == "str":
            return text[1:-1].replace('""', '"')
        if kind == "ref":
            return self._ref(text)
        if kind == "name":
            if self._peek() == ("op", "("):
                return self._call(text.upper())
            if text.upper() in ("TRUE", "FALSE"):
                return text.upper() == "TRUE"
            raise FormulaError("#NAME?")
        if text == "(":
            value = self._comparison()
            self._take(")")
            return value
        raise FormulaError("#ERROR!")

    def _ref(self, text: str) -> object:
        if self.depth > 50:
            raise FormulaError("#REF!")
        try:
            span = parse_cells(text.replace("$", ""))
        except RangeSyntaxError as exc:
            raise FormulaError("#REF!") from exc
        r1, c1, r2, c2 = span.bounded(0, 0)
        values = [
            self._cell(row, col)
            for row in range(r1, r2 + 1)
            for col in range(c1, c2 + 1)
        ]
        return values if not span.is_single_cell else values[0]

    def _cell(self, row: int, col: int) -> Scalar | None:
        cell = self.lookup(row, col)
        if isinstance(cell, Rich) and cell.formula is not None:
            return Formula(cell.formula, self.lookup, self.depth + 1).evaluate()
        return cell.value if isinstance(cell, Rich) else cell

    def _call(self, name: str) -> object:
        self._take("(")
        args: list[object] = []
        if self._peek() != ("op", ")"):
            args.append(self._comparison())
            while self._peek() in (("op", ","), ("op", ";")):
                self.pos += 1
                args.append(self._comparison())
        self._take(")")
        function = _FUNCTIONS.get(name)
        if function is None:
            raise FormulaError("#NAME?")
        return function(args)


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match:
            raise FormulaError("#ERROR!")
        kind = match.lastgroup or "op"
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def _flatten(args: list[object]) -> list[object]:
    out: list[object] = []
    for arg in args:
        out.extend(arg if isinstance(arg, list) else [arg])
    return out


def _numbers(args: list[object]) -> list[float]:
    return [
        float(v)
        for v in _flatten(args)
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]


def _num(value: object) -> float:
    if isinstance(value, list):
        raise FormulaError("#VALUE!")
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    try:
        return float(str(value))
    except ValueError as exc:
        raise FormulaError("#VALUE!") from exc


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, int | float | bool):
        return format_value(value, None)
    return str(value)


def _apply(op: str, left: object, right: object) -> object:
    if op == "&":
        return _text(left) + _text(right)
    if op in ("=", "<>", "<", ">", "<=", ">="):
        if isinstance(left, str) or isinstance(right, str):
            return _compare(op, _text(left), _text(right))
        return _compare(op, _num(left), _num(right))
    a, b = _num(left), _num(right)
    if op == "/" and b == 0:
        raise FormulaError("#DIV/0!")
    result = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else 0, "^": 0.0}[op]
    if op == "^":
        result = math.pow(a, b)
    return number(result)


def _compare(op: str, a: Any, b: Any) -> bool:
    results = {"=": a == b, "<>": a != b, "<": a < b, ">": a > b}
    results.update({"<=": a <= b, ">=": a >= b})
    return bool(results[op])


def _scalar(value: object) -> Scalar:
    if isinstance(value, list):
        value = value[0] if value else ""
    if value is None:
        return 0
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            return "#NUM!"
        return number(value)
    assert isinstance(value, str | bool)
    return value


def _hyperlink(args: list[object]) -> object:
    if not args:
        raise FormulaError("#N/A")
    return args[-1] if len(args) > 1 else args[0]


def _if(args: list[object]) -> object:
    if len(args) < 2:
        raise FormulaError("#N/A")
    return args[1] if _num(args[0]) else (args[2] if len(args) > 2 else False)


_FUNCTIONS: dict[str, Callable[[list[object]], object]] = {
    "SUM": lambda args: number(sum(_numbers(args))),
    "AVERAGE": lambda args: (
        number(sum(n := _numbers(args)) / len(n)) if _numbers(args) else "#DIV/0!"
    ),
    "MIN": lambda args: number(min(_numbers(args), default=0)),
    "MAX": lambda args: number(max(_numbers(args), default=0)),
    "CONCATENATE": lambda args: "".join(_text(v) for v in _flatten(args)),
    "LEN": lambda args: len(_text(args[0])) if args else 0,
    "UPPER": lambda args: _text(args[0]).upper() if args else "",
    "LOWER": lambda args: _text(args[0]).lower() if args else "",
    "HYPERLINK": _hyperlink,
    "IF": _if,
}
