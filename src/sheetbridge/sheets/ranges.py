"""A1 notation: quoting tab titles, building ranges and parsing echoed ones.

Every range Sheetbridge sends quotes the tab title (``'Jon''s Data'!A1:C3``),
so titles with spaces, apostrophes, ``!`` or that look like cell references
(``CRM26``) are never misread. The service echoes ranges back quoting only
titles that need it; :func:`parse_range` reads both forms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_COLUMNS = 18278  # ZZZ, the widest A1 column
_ENDPOINT = re.compile(r"([A-Za-z]{0,3})([0-9]*)")
_PLAIN_TITLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CELL_LIKE = re.compile(r"[A-Za-z]{1,3}[0-9]+|[Rr][0-9]*[Cc][0-9]*|true|false", re.I)


def column_letters(column: int) -> str:
    """Return the A1 letters of a 1-based column index (1 → ``A``, 27 → ``AA``)."""
    if column < 1:
        raise ValueError(f"column index must be >= 1, got {column}")
    letters = ""
    while column:
        column, rest = divmod(column - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def column_index(letters: str) -> int:
    """Return the 1-based column index of A1 letters (``A`` → 1, ``AA`` → 27)."""
    if not letters or not letters.isalpha():
        raise ValueError(f"not column letters: {letters!r}")
    index = 0
    for char in letters.upper():
        index = index * 26 + (ord(char) - ord("A") + 1)
    return index


def quote_title(title: str) -> str:
    """Quote a tab title for A1 notation, doubling apostrophes."""
    return "'" + title.replace("'", "''") + "'"


def echo_title(title: str) -> str:
    """Write a title as the service echoes it: quoted only when it must be."""
    if _PLAIN_TITLE.fullmatch(title) and not _CELL_LIKE.fullmatch(title):
        return title
    return quote_title(title)


def cell_ref(row: int, column: int) -> str:
    """Return ``A1``-style reference of a 1-based (row, column)."""
    return f"{column_letters(column)}{row}"


def a1_range(
    title: str,
    start_row: int,
    start_col: int,
    end_row: int | None = None,
    end_col: int | None = None,
    *,
    quote: bool = True,
) -> str:
    """Build ``'Title'!A1:C3`` (or ``'Title'!A1`` for one cell)."""
    end_row = start_row if end_row is None else end_row
    end_col = start_col if end_col is None else end_col
    name = quote_title(title) if quote else echo_title(title)
    start = cell_ref(start_row, start_col)
    if (end_row, end_col) == (start_row, start_col):
        return f"{name}!{start}"
    return f"{name}!{start}:{cell_ref(end_row, end_col)}"


def whole_tab(title: str) -> str:
    """A range naming the whole tab (bounded to its grid by the service)."""
    return quote_title(title)


@dataclass(frozen=True)
class CellSpan:
    """The cell part of a range; ``None`` ends are open (``A2:Z``, ``A:A``)."""

    start_row: int | None
    start_col: int | None
    end_row: int | None
    end_col: int | None

    @property
    def is_single_cell(self) -> bool:
        """True for ``B3`` (a start without an end)."""
        return (
            self.start_row is not None
            and self.start_row == self.end_row
            and self.start_col is not None
            and self.start_col == self.end_col
        )

    def bounded(self, row_count: int, col_count: int) -> tuple[int, int, int, int]:
        """Close open ends against a grid: (first row, first col, last row, last col).

        Reversed corners (``D4:A1``) are put in order.
        """
        rows = sorted(
            (self.start_row or 1, row_count if self.end_row is None else self.end_row)
        )
        cols = sorted(
            (self.start_col or 1, col_count if self.end_col is None else self.end_col)
        )
        return rows[0], cols[0], rows[1], cols[1]


@dataclass(frozen=True)
class ParsedRange:
    """A parsed A1 range: the title (``None`` if absent) and the cell span."""

    title: str | None
    cells: CellSpan | None


class RangeSyntaxError(ValueError):
    """The text is not a range in A1 notation."""


def parse_range(text: str) -> ParsedRange:
    """Parse ``'Jon''s Data'!A1:Z1000``, ``Sheet1!A2:Z``, ``'Tab'`` or ``B3``.

    Text without ``!`` that is not a cell span is taken as a bare title.
    """
    if text.startswith("'"):
        title, rest = _quoted_title(text)
        if not rest:
            return ParsedRange(title, None)
        if not rest.startswith("!"):
            raise RangeSyntaxError(f"unexpected text after title in {text!r}")
        return ParsedRange(title, parse_cells(rest[1:]))
    if "!" in text:
        title, cells = text.rsplit("!", 1)
        return ParsedRange(title, parse_cells(cells))
    try:
        return ParsedRange(None, parse_cells(text))
    except RangeSyntaxError:
        return ParsedRange(text, None)


def parse_cells(text: str) -> CellSpan:
    """Parse the cell part: ``A1``, ``A1:C3``, ``A:C``, ``2:5``, ``A2:Z``."""
    parts = text.split(":")
    if len(parts) > 2 or not all(parts):
        raise RangeSyntaxError(f"not a cell range: {text!r}")
    first = _endpoint(parts[0])
    if len(parts) == 1:
        if first[0] is None or first[1] is None:
            raise RangeSyntaxError(f"not a cell: {text!r}")
        return CellSpan(first[0], first[1], first[0], first[1])
    second = _endpoint(parts[1])
    return CellSpan(first[0], first[1], second[0], second[1])


def _endpoint(text: str) -> tuple[int | None, int | None]:
    match = _ENDPOINT.fullmatch(text)
    if not match or not text:
        raise RangeSyntaxError(f"not a cell reference: {text!r}")
    letters, digits = match.groups()
    row = int(digits) if digits else None
    if row == 0:
        raise RangeSyntaxError(f"row 0 does not exist: {text!r}")
    col = column_index(letters) if letters else None
    return row, col


def _quoted_title(text: str) -> tuple[str, str]:
    chars: list[str] = []
    index = 1
    while index < len(text):
        char = text[index]
        if char == "'":
            if text[index + 1 : index + 2] == "'":
                chars.append("'")
                index += 2
                continue
            return "".join(chars), text[index + 1 :]
        chars.append(char)
        index += 1
    raise RangeSyntaxError(f"unterminated quoted title in {text!r}")
