"""The interface every spreadsheet backend implements.

A backend reads whole tabs as plain values and writes one batch of changes for
several tabs at once. It knows nothing about records, columns or sync rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Protocol, TypeAlias

Cell: TypeAlias = str | int | float | Decimal | date | datetime | bool | None
"""One cell value as read from or written to a sheet."""


@dataclass
class TabChanges:
    """Changes to one tab, applied in order: cells, then appends, then deletes.

    ``cells`` maps (1-based sheet row, 1-based column) to the new value and
    includes header cells to add. ``append`` rows go after the last non-empty
    row; each is a full row by column position, where ``None`` leaves the cell
    untouched. ``delete_rows`` are 1-based rows as they were read.
    ``id_column`` (1-based), where given, holds each row's record ID: a
    backend that writes cells by row number checks with it that the rows it
    wrote into were still the rows it read; a row being given its ID, by its
    cells in ``known_columns`` (1-based: the synced ones, whose values a
    write of the ID leaves as they are, unlike a formula's beside them).
    """

    cells: dict[tuple[int, int], Cell] = field(default_factory=dict)
    append: list[list[Cell]] = field(default_factory=list)
    delete_rows: list[int] = field(default_factory=list)
    id_column: int | None = field(default=None, compare=False)
    known_columns: frozenset[int] = field(default=frozenset(), compare=False)

    def is_empty(self) -> bool:
        """Return True when applying these changes would change nothing."""
        return not (self.cells or self.append or self.delete_rows)


@dataclass(frozen=True, order=True)
class CellRange:
    """A block of cells, 1-based and inclusive: rows and columns it spans."""

    first_row: int
    first_column: int
    last_row: int
    last_column: int


class DateSystem(Enum):
    """The day a number standing for a date counts from.

    ``GOOGLE``: 1 is 31 December 1899. ``EXCEL_1900``: 1 is 1 January 1900,
    and 60 a 29 February 1900 that never was; from 61 on both agree.
    ``EXCEL_1904``: 0 is 1 January 1904, as in workbooks of Excel for Mac of
    old, or any workbook set to its 1904 date system.
    """

    GOOGLE = "google"
    EXCEL_1900 = "1900"
    EXCEL_1904 = "1904"


@dataclass
class TabData:
    """The values of one tab as read.

    ``rows[0]`` is the header (sheet row 1); ``rows[i]`` is sheet row ``i + 1``.
    Trailing empty cells and trailing empty rows are trimmed, so rows may be
    ragged. ``version`` is an opaque token of what was read ("" when the
    tab or file did not exist). ``merges`` are the tab's merged cells: of
    each, only the top-left cell holds a value; the others read empty.
    ``date_system``: the day a number standing for a date counts from.
    """

    rows: list[list[Cell]]
    version: str = ""
    merges: list[CellRange] = field(default_factory=list)
    date_system: DateSystem = DateSystem.GOOGLE


class SheetBackend(Protocol):
    """A workbook or spreadsheet holding one or more tabs."""

    location: str
    """Human-readable place of the data (file path or spreadsheet id)."""

    cell_limit: int
    """The most characters one cell holds; longer text would be cut."""

    def read_tabs(self, tabs: Sequence[str]) -> dict[str, TabData | None]:
        """Read the named tabs; a missing tab (or workbook) maps to ``None``."""
        ...

    def write(
        self,
        changes: Mapping[str, TabChanges],
        *,
        expected_version: str | None = None,
    ) -> None:
        """Apply changes to several tabs in one atomic batch.

        Missing tabs are created. With ``expected_version``, raise
        :class:`~sheetbridge.sheets.errors.SheetChanged` and write nothing if
        the data changed since that version was read.
        """
        ...


XLSX_CELL_LIMIT = 32_767
"""UTF-16 units a workbook cell holds (an emoji counts two); readers cut more."""
XLSX_TEXT_LIMIT = XLSX_CELL_LIMIT - 2
"""The most the app writes to a workbook cell. Text read back longer than this
may have been cut: an emoji at the cut leaves a cell one unit short of full."""


def cell_length(text: str) -> int:
    """Length as spreadsheets count it: UTF-16 units, an emoji counting two."""
    return len(text.encode("utf-16-le")) // 2


class UncomputedFormula(str):
    """A formula cell whose workbook holds no result for it (the formula text).

    Programs that do not calculate (openpyxl, scripts built on it) save
    formulas without results; such a cell's value is unknown, not empty.
    """

    __slots__ = ()


class ClippedText(str):
    """Text read from a cell at or over the workbook limit of 32,767 characters.

    Workbook programs cut longer text to that length, so such a value may be
    only the start of what was typed; importing it would lose the rest.
    """

    __slots__ = ()


class ErrorValue(str):
    """A cell showing a spreadsheet error (``#N/A``, ``#REF!``, …): a formula
    that failed, so the cell's value is missing, not this text."""

    __slots__ = ()
