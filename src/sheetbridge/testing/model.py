"""In-memory spreadsheets with the Sheets API v4 semantics the emulator serves.

Everything here is synchronous and unaware of HTTP: handlers in
:mod:`sheetbridge.testing.emulator` parse requests, call these methods and
turn :class:`ApiError` into the service's JSON error bodies.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sheetbridge.sheets.ranges import (
    MAX_COLUMNS,
    CellSpan,
    RangeSyntaxError,
    a1_range,
    echo_title,
    parse_range,
)
from sheetbridge.testing.cells import (
    MAX_CELL_CHARS,
    Rich,
    Scalar,
    Stored,
    holds_value,
    number,
    parse_raw,
    parse_user_entered,
    render,
)

MAX_CELLS = 10_000_000
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
}
Json = dict[str, Any]


class ApiError(Exception):
    """An error answer: HTTP code, message and the google.rpc status name."""

    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or _STATUS.get(code, "UNKNOWN")

    def body(self) -> Json:
        """The JSON body the real service sends for this error."""
        return {
            "error": {"code": self.code, "message": self.message, "status": self.status}
        }


def invalid(message: str) -> ApiError:
    """A 400 INVALID_ARGUMENT error."""
    return ApiError(400, message)


@dataclass
class Sheet:
    """One tab: properties and a ragged list of rows (``None`` = empty cell)."""

    sheet_id: int
    title: str
    index: int
    row_count: int = 1000
    col_count: int = 26
    grid_extra: Json = field(default_factory=dict)
    extra: Json = field(default_factory=dict)
    rows: list[list[Stored]] = field(default_factory=list)
    # Merged blocks as spreadsheets.get shows them: GridRanges, 0-based and
    # end-exclusive.
    merges: list[Json] = field(default_factory=list)

    def properties(self) -> Json:
        """The tab's ``properties`` as spreadsheets.get shows them."""
        grid: Json = {"rowCount": self.row_count, "columnCount": self.col_count}
        grid.update(self.grid_extra)
        return {
            "sheetId": self.sheet_id,
            "title": self.title,
            "index": self.index,
            "sheetType": "GRID",
            "gridProperties": grid,
            **self.extra,
        }

    def cell(self, row: int, col: int) -> Stored:
        """The stored cell at a 1-based (row, col), ``None`` if empty."""
        if row <= len(self.rows):
            values = self.rows[row - 1]
            if col <= len(values):
                return values[col - 1]
        return None

    def set(self, row: int, col: int, value: Stored) -> None:
        """Store one cell (the caller checked the grid)."""
        while len(self.rows) < row:
            self.rows.append([])
        values = self.rows[row - 1]
        if len(values) < col:
            if value is None:
                return
            values.extend([None] * (col - len(values)))
        values[col - 1] = value

    def trim(self) -> None:
        """Drop data outside the grid (after the grid shrank)."""
        del self.rows[self.row_count :]
        for index, values in enumerate(self.rows):
            if len(values) > self.col_count:
                self.rows[index] = values[: self.col_count]


@dataclass
class Spreadsheet:
    """One spreadsheet: properties, tabs and who may open it."""

    spreadsheet_id: str
    title: str
    locale: str = "en_US"
    time_zone: str = "Etc/GMT"
    sheets: list[Sheet] = field(default_factory=list)
    shared_with: set[str] | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    named_ranges: dict[str, Json] = field(default_factory=dict)

    # -- resource views ------------------------------------------------------

    def resource(self) -> Json:
        """The spreadsheets.get answer (without grid data)."""
        return {
            "spreadsheetId": self.spreadsheet_id,
            "properties": {
                "title": self.title,
                "locale": self.locale,
                "autoRecalc": "ON_CHANGE",
                "timeZone": self.time_zone,
            },
            "sheets": [
                {"properties": sheet.properties()}
                | ({"merges": copy.deepcopy(sheet.merges)} if sheet.merges else {})
                for sheet in self.sheets
            ],
            "spreadsheetUrl": "http://127.0.0.1/spreadsheets/d/"
            f"{self.spreadsheet_id}/edit",
        }

    # -- lookup ----------------------------------------------------------------

    def sheet_by_id(self, sheet_id: object, where: str) -> Sheet:
        """The tab with that id, or a 400 naming the request."""
        for sheet in self.sheets:
            if sheet.sheet_id == sheet_id:
                return sheet
        raise invalid(f"Invalid {where}: No grid with id: {sheet_id}")

    def sheet_by_title(self, title: str) -> Sheet | None:
        """The tab with that title (titles compare case-insensitively)."""
        for sheet in self.sheets:
            if sheet.title.casefold() == title.casefold():
                return sheet
        return None

    def resolve(self, text: str) -> tuple[Sheet, tuple[int, int, int, int], bool]:
        """Parse a range against this spreadsheet.

        Returns the tab, the bounded rectangle (r1, c1, r2, c2) and whether the
        range named a single cell (a start only).
        """
        try:
            parsed = parse_range(text)
        except RangeSyntaxError as exc:
            raise invalid(f"Unable to parse range: {text}") from exc
        sheet: Sheet | None
        span: CellSpan | None = parsed.cells
        if parsed.title is None:
            sheet = self.sheets[0]
        else:
            sheet = self.sheet_by_title(parsed.title)
            if sheet is None and span is None:
                raise invalid(f"Unable to parse range: {text}")
        if sheet is None:
            raise invalid(f"Unable to parse range: {text}")
        if span is None:
            return sheet, (1, 1, sheet.row_count, sheet.col_count), False
        rect = span.bounded(sheet.row_count, sheet.col_count)
        if rect[2] > sheet.row_count or rect[3] > sheet.col_count:
            raise invalid(
                f"Range ({echo_title(sheet.title)}!{_a1(rect)}) exceeds grid limits. "
                f"Max rows: {sheet.row_count}, max columns: {sheet.col_count}"
            )
        return sheet, rect, span.is_single_cell

    def echo(self, sheet: Sheet, rect: tuple[int, int, int, int]) -> str:
        """A range as the service echoes it (title quoted only if needed)."""
        return a1_range(sheet.title, *rect, quote=False)

    # -- values ------------------------------------------------------------------

    def get_values(
        self,
        text: str,
        *,
        value_render: str = "FORMATTED_VALUE",
        date_render: str = "SERIAL_NUMBER",
        major: str = "ROWS",
    ) -> Json:
        """values.get: trailing empty cells and rows trimmed, no empty ``values``."""
        sheet, rect, _ = self.resolve(text)
        r1, c1, r2, c2 = rect

        def lookup(row: int, col: int) -> Stored:
            return sheet.cell(row, col)

        if major == "COLUMNS":
            grid = [
                [
                    render(sheet.cell(row, col), value_render, date_render, lookup)
                    for row in range(r1, r2 + 1)
                ]
                for col in range(c1, c2 + 1)
            ]
        else:
            grid = [
                _render_row(sheet, row, c1, c2, value_render, date_render, lookup)
                for row in range(r1, min(r2, len(sheet.rows)) + 1)
            ]
        for line in grid:
            while line and line[-1] == "":
                line.pop()
        while grid and not grid[-1]:
            grid.pop()
        answer: Json = {"range": self.echo(sheet, rect), "majorDimension": major}
        if grid:
            answer["values"] = grid
        return answer

    def update_values(
        self, text: str, values: list[list[Any]], *, user_entered: bool, major: str
    ) -> Json:
        """values.update: write a rectangle; ``null`` leaves a cell as it is."""
        plan = self.plan_update(text, values, major=major)
        return self.apply_update(plan, user_entered=user_entered)

    def plan_update(
        self, text: str, values: list[list[Any]], *, major: str
    ) -> tuple[Sheet, int, int, list[list[Any]]]:
        """Check a values.update without changing anything (for atomic batches)."""
        sheet, rect, single = self.resolve(text)
        if major == "COLUMNS":
            values = _transpose(values)
        height = len(values)
        width = max((len(line) for line in values), default=0)
        r1, c1, r2, c2 = rect
        if not single and height > r2 - r1 + 1:
            raise invalid(
                f"Requested writing within range [{text}], but tried writing "
                f"to row [{r2 + 1}]"
            )
        if not single and width > c2 - c1 + 1:
            raise invalid(
                f"Requested writing within range [{text}], but tried writing "
                f"to column [{_letters(c2 + 1)}]"
            )
        if height and width:
            end = (r1 + height - 1, c1 + width - 1)
            if end[0] > sheet.row_count or end[1] > sheet.col_count:
                raise invalid(
                    f"Range ({echo_title(sheet.title)}!"
                    f"{_a1((r1, c1, end[0], end[1]))}) exceeds grid limits. "
                    f"Max rows: {sheet.row_count}, max columns: {sheet.col_count}"
                )
        _check_values(values)
        return sheet, r1, c1, values

    def apply_update(
        self, plan: tuple[Sheet, int, int, list[list[Any]]], *, user_entered: bool
    ) -> Json:
        """Write a checked values.update (see :meth:`plan_update`)."""
        sheet, row, col, values = plan
        return self._write_block(sheet, row, col, values, user_entered)

    def _write_block(
        self,
        sheet: Sheet,
        row: int,
        col: int,
        values: list[list[Any]],
        user_entered: bool,
    ) -> Json:
        height = len(values)
        width = max((len(line) for line in values), default=0)
        parse = parse_user_entered if user_entered else parse_raw
        touched_rows: set[int] = set()
        touched_cols: set[int] = set()
        cells = 0
        for offset, line in enumerate(values):
            for index, value in enumerate(line):
                if value is None:
                    continue
                sheet.set(
                    row + offset,
                    col + index,
                    _keep_format(sheet.cell(row + offset, col + index), parse(value)),
                )
                touched_rows.add(offset)
                touched_cols.add(index)
                cells += 1
        end_row = row + max(height, 1) - 1
        end_col = col + max(width, 1) - 1
        answer: Json = {
            "spreadsheetId": self.spreadsheet_id,
            "updatedRange": self.echo(sheet, (row, col, end_row, end_col)),
        }
        if cells:
            answer.update(
                updatedRows=len(touched_rows),
                updatedColumns=len(touched_cols),
                updatedCells=cells,
            )
        return answer

    def append_values(
        self,
        text: str,
        values: list[list[Any]],
        *,
        user_entered: bool,
        insert_rows: bool,
        major: str,
    ) -> Json:
        """values.append: find the table in the range and write below it."""
        sheet, rect, _ = self.resolve(text)
        if major == "COLUMNS":
            values = _transpose(values)
        _check_values(values)
        table = _find_table(sheet, rect)
        if table is None:
            row, col = rect[0], rect[1]
        else:
            row, col = table[2] + 1, table[1]
        height = len(values)
        if insert_rows and row <= len(sheet.rows):
            sheet.rows[row - 1 : row - 1] = [[] for _ in range(height)]
            sheet.row_count += height
        needed = row + height - 1
        if needed > sheet.row_count:
            self._grow(sheet, needed - sheet.row_count, "ROWS")
        width = max((len(line) for line in values), default=0)
        if col + width - 1 > sheet.col_count:
            self._grow(sheet, col + width - 1 - sheet.col_count, "COLUMNS")
        updates = self._write_block(sheet, row, col, values, user_entered)
        answer: Json = {"spreadsheetId": self.spreadsheet_id}
        if table is not None:
            answer["tableRange"] = self.echo(sheet, table)
        answer["updates"] = updates
        return answer

    def clear_values(self, text: str) -> str:
        """values.clear: empty the cells (formats kept); returns the echoed range."""
        sheet, rect, _ = self.resolve(text)
        r1, c1, r2, c2 = rect
        for row in range(r1, min(r2, len(sheet.rows)) + 1):
            values = sheet.rows[row - 1]
            for col in range(c1, min(c2, len(values)) + 1):
                values[col - 1] = _format_only(values[col - 1])
        return self.echo(sheet, rect)

    # -- spreadsheets.batchUpdate --------------------------------------------

    def batch_update(self, requests: list[Json], rng: random.Random) -> list[Json]:
        """Apply requests atomically: on any error nothing changes."""
        saved = self._snapshot()
        try:
            return [
                self._apply(index, request, rng)
                for index, request in enumerate(requests)
            ]
        except Exception:
            self._restore(saved)
            raise

    def _snapshot(self) -> Any:
        # Rows are replaced, never mutated, by structural requests, so copying
        # the row lists' outer list is enough to undo them.
        return (
            (self.title, self.locale, self.time_zone),
            [
                (sheet, copy.deepcopy(sheet.__dict__ | {"rows": None}), sheet.rows[:])
                for sheet in self.sheets
            ],
            copy.deepcopy(self.named_ranges),
        )

    def _restore(self, saved: Any) -> None:
        (self.title, self.locale, self.time_zone), sheets, self.named_ranges = saved
        self.sheets = []
        for sheet, state, rows in sheets:
            sheet.__dict__.update(state)
            sheet.rows = rows
            self.sheets.append(sheet)

    def _apply(self, index: int, request: Json, rng: random.Random) -> Json:
        if len(request) != 1:
            raise invalid(f"Invalid requests[{index}]: exactly one kind is required")
        kind, body = next(iter(request.items()))
        handler = getattr(self, f"_req_{kind}", None)
        if handler is None:
            raise ApiError(
                501,
                f"Invalid requests[{index}]: the emulator does not implement {kind}",
            )
        reply: Json = handler(f"requests[{index}].{kind}", body or {}, rng)
        return reply

    def _req_addSheet(self, where: str, body: Json, rng: random.Random) -> Json:
        props = body.get("properties", {})
        title = props.get("title") or self._free_title()
        if self.sheet_by_title(title) is not None:
            raise invalid(
                f'Invalid {where}: A sheet with the name "{title}" already exists. '
                "Please enter another name."
            )
        sheet_id = props.get("sheetId")
        if sheet_id is None:
            sheet_id = rng.randint(1, 2**31 - 1)
        elif any(sheet.sheet_id == sheet_id for sheet in self.sheets):
            raise invalid(f"Invalid {where}: Sheet with id {sheet_id} already exists.")
        grid = props.get("gridProperties", {})
        sheet = Sheet(
            sheet_id=sheet_id,
            title=title,
            index=min(props.get("index", len(self.sheets)), len(self.sheets)),
            row_count=grid.get("rowCount", 1000),
            col_count=grid.get("columnCount", 26),
        )
        self._check_cells(where, extra=sheet.row_count * sheet.col_count)
        self.sheets.insert(sheet.index, sheet)
        self._reindex()
        return {"addSheet": {"properties": sheet.properties()}}

    def _req_deleteSheet(self, where: str, body: Json, rng: random.Random) -> Json:
        sheet = self.sheet_by_id(body.get("sheetId"), where)
        if len(self.sheets) == 1:
            raise invalid(
                f"Invalid {where}: You can't remove all the sheets in a document."
            )
        self.sheets.remove(sheet)
        self._reindex()
        return {}

    def _req_updateSheetProperties(
        self, where: str, body: Json, rng: random.Random
    ) -> Json:
        props = body.get("properties", {})
        sheet = self.sheet_by_id(props.get("sheetId"), where)
        fields = _fields(body.get("fields", ""), props)
        for path in fields:
            self._set_sheet_field(where, sheet, path, _get_path(props, path))
        if all(sheet.extra.get("hidden") for sheet in self.sheets):
            raise invalid(
                f"Invalid {where}: You can't hide all the sheets in a document."
            )
        sheet.trim()
        self._check_cells(where)
        return {}

    def _set_sheet_field(
        self, where: str, sheet: Sheet, path: list[str], value: object
    ) -> None:
        head = path[0]
        if head == "title":
            title = str(value or "")
            other = self.sheet_by_title(title)
            if other is not None and other is not sheet:
                raise invalid(
                    f'Invalid {where}: A sheet with the name "{title}" already '
                    "exists. Please enter another name."
                )
            sheet.title = title
        elif head == "index":
            self.sheets.remove(sheet)
            self.sheets.insert(min(int(str(value or 0)), len(self.sheets)), sheet)
            self._reindex()
        elif head == "gridProperties" and len(path) == 2:
            if path[1] == "rowCount":
                sheet.row_count = int(str(value))
            elif path[1] == "columnCount":
                sheet.col_count = int(str(value))
            elif value in (None, 0, False):
                sheet.grid_extra.pop(path[1], None)
            else:
                sheet.grid_extra[path[1]] = value
        elif head in ("sheetId", "sheetType"):
            return
        elif value in (None, False) or value == {"rgbColor": None}:
            sheet.extra.pop(head, None)
        else:
            sheet.extra[head] = value

    def _req_updateSpreadsheetProperties(
        self, where: str, body: Json, rng: random.Random
    ) -> Json:
        props = body.get("properties", {})
        for path in _fields(body.get("fields", ""), props):
            value = _get_path(props, path)
            if path[0] == "title":
                self.title = str(value or "")
            elif path[0] == "locale":
                self.locale = str(value or "en_US")
            elif path[0] == "timeZone":
                self.time_zone = str(value or "Etc/GMT")
        return {}

    def _req_appendDimension(self, where: str, body: Json, rng: random.Random) -> Json:
        sheet = self.sheet_by_id(body.get("sheetId"), where)
        length = int(body.get("length", 0))
        if length <= 0:
            raise invalid(f"Invalid {where}: length must be greater than 0")
        self._grow(sheet, length, str(body.get("dimension", "ROWS")), where)
        return {}

    def _req_insertDimension(self, where: str, body: Json, rng: random.Random) -> Json:
        span = body.get("range", {})
        sheet = self.sheet_by_id(span.get("sheetId"), where)
        start, end = int(span.get("startIndex", 0)), int(span.get("endIndex", 0))
        limit = sheet.row_count if span.get("dimension") == "ROWS" else sheet.col_count
        if not 0 <= start < end or start > limit:
            raise invalid(f"Invalid {where}: invalid range {start}..{end}")
        count = end - start
        self._check_cells(where, extra=count * self._other_side(sheet, span))
        if span.get("dimension") == "ROWS":
            if start < len(sheet.rows):
                sheet.rows = (
                    sheet.rows[:start]
                    + [[] for _ in range(count)]
                    + (sheet.rows[start:])
                )
            sheet.row_count += count
        else:
            sheet.rows = [
                line[:start] + [None] * count + line[start:]
                if len(line) > start
                else line
                for line in sheet.rows
            ]
            sheet.col_count += count
        # A merge below (or right of) the insertion moves; one across it grows.
        _move_merges(
            sheet,
            str(span.get("dimension")),
            lambda first, last: (
                first + count if first >= start else first,
                last + count if last > start else last,
            ),
        )
        return {}

    def _req_deleteDimension(self, where: str, body: Json, rng: random.Random) -> Json:
        span = body.get("range", {})
        sheet = self.sheet_by_id(span.get("sheetId"), where)
        rows = span.get("dimension") == "ROWS"
        limit = sheet.row_count if rows else sheet.col_count
        start = int(span.get("startIndex", 0))
        end = int(span.get("endIndex", limit))
        if not 0 <= start < end <= limit:
            raise invalid(f"Invalid {where}: invalid range {start}..{end}")
        if end - start >= limit:
            what = "rows" if rows else "columns"
            raise invalid(
                f"Invalid {where}: You can't delete all the {what} on the sheet."
            )
        if rows:
            sheet.rows = sheet.rows[:start] + sheet.rows[end:]
            sheet.row_count -= end - start
        else:
            sheet.rows = [line[:start] + line[end:] for line in sheet.rows]
            sheet.col_count -= end - start

        def after(index: int) -> int:
            return index if index <= start else max(start, index - (end - start))

        # A merge past the deleted span moves; one across it shrinks.
        _move_merges(
            sheet,
            str(span.get("dimension")),
            lambda first, last: (after(first), after(last)),
        )
        return {}

    def _req_updateCells(self, where: str, body: Json, rng: random.Random) -> Json:
        """Write rows of cells from a start cell: each cell's value, given
        typed (``stringValue``, ``numberValue``, ``boolValue``,
        ``formulaValue``), and its number format, as ``fields`` names them;
        a part ``fields`` names that a cell leaves out is cleared."""
        start = body.get("start")
        if not isinstance(start, dict):
            raise invalid(f"Invalid {where}: start is required")
        sheet = self.sheet_by_id(start.get("sheetId"), where)
        top, left = int(start.get("rowIndex", 0)), int(start.get("columnIndex", 0))
        fields = _update_fields(body, where)
        values = "*" in fields or "userEnteredValue" in fields
        formats = _sets_number_format(fields)
        lines = [row.get("values", []) for row in body.get("rows", [])]
        width = max((len(line) for line in lines), default=0)
        if top + len(lines) > sheet.row_count or left + width > sheet.col_count:
            raise invalid(f"Invalid {where}: the range is not within the grid")
        for offset, line in enumerate(lines):
            for index, data in enumerate(line):
                row, col = top + offset + 1, left + index + 1
                cell = sheet.cell(row, col)
                value = _typed_value(data.get("userEnteredValue"), where)
                if not values:
                    value = cell.value if isinstance(cell, Rich) else cell
                number_format = (data.get("userEnteredFormat") or {}).get(
                    "numberFormat"
                )
                if not formats:
                    kind = cell.kind if isinstance(cell, Rich) else ""
                    pattern = cell.pattern if isinstance(cell, Rich) else ""
                elif number_format:
                    kind, pattern = _number_format(number_format, where)
                else:
                    kind = pattern = ""
                if isinstance(value, Rich):
                    stored: Stored = dataclasses.replace(
                        value, kind=kind, pattern=pattern
                    )
                elif kind:
                    stored = Rich(value, kind=kind, pattern=pattern)
                else:
                    stored = value
                sheet.set(row, col, stored)
        return {}

    def _req_repeatCell(self, where: str, body: Json, rng: random.Random) -> Json:
        """Give every cell of a range a number format, empty ones too: a value
        written there later shows in it. Other parts of a cell's format
        (colours, fonts) are taken and not modelled."""
        span = body.get("range", {})
        sheet = self.sheet_by_id(span.get("sheetId"), where)
        r1, r2 = _span(span, "Row", sheet.row_count, where)
        c1, c2 = _span(span, "Column", sheet.col_count, where)
        fields = _update_fields(body, where)
        given = (body.get("cell") or {}).get("userEnteredFormat") or {}
        if not _sets_number_format(fields):
            return {}
        kind, pattern = _number_format(given.get("numberFormat") or {}, where)
        while len(sheet.rows) < r2:
            sheet.rows.append([])
        for row in range(r1, r2):
            line = list(sheet.rows[row])  # a new list: a failed batch restores
            line.extend([None] * (c2 - len(line)))
            for col in range(c1, c2):
                cell = line[col]
                if isinstance(cell, Rich):
                    line[col] = dataclasses.replace(cell, kind=kind, pattern=pattern)
                else:
                    line[col] = Rich(cell, kind=kind, pattern=pattern)
            sheet.rows[row] = line
        return {}

    def _merge_span(
        self, body: Json, where: str
    ) -> tuple[Sheet, tuple[int, int], tuple[int, int]]:
        """The sheet and the (start, end) rows and columns of a merge request."""
        span = body.get("range", {})
        sheet = self.sheet_by_id(span.get("sheetId"), where)
        rows = (int(span.get("startRowIndex", 0)), int(span.get("endRowIndex", 0)))
        cols = (
            int(span.get("startColumnIndex", 0)),
            int(span.get("endColumnIndex", 0)),
        )
        if not (
            0 <= rows[0] < rows[1] <= sheet.row_count
            and 0 <= cols[0] < cols[1] <= sheet.col_count
        ):
            raise invalid(f"Invalid {where}: the range is not within the grid")
        return sheet, rows, cols

    def _req_mergeCells(self, where: str, body: Json, rng: random.Random) -> Json:
        """Merge a range (or each of its rows or columns). Merges wholly inside
        a new one give way to it; one only partly inside is refused."""
        sheet, rows, cols = self._merge_span(body, where)
        kind = body.get("mergeType", "MERGE_ALL")
        if kind == "MERGE_ALL":
            blocks = [(rows, cols)]
        elif kind == "MERGE_COLUMNS":
            blocks = [(rows, (col, col + 1)) for col in range(*cols)]
        elif kind == "MERGE_ROWS":
            blocks = [((row, row + 1), cols) for row in range(*rows)]
        else:
            raise invalid(f"Invalid {where}: unknown mergeType {kind!r}")
        for block_rows, block_cols in blocks:
            (top, bottom), (left, right) = block_rows, block_cols
            if (bottom - top) * (right - left) < 2:
                continue  # a single cell is no merge
            inside = _merges_within(sheet, block_rows, block_cols, where, "merge")
            # Only the top-left value is kept.
            for row in range(top + 1, bottom + 1):
                for col in range(left + 1, right + 1):
                    if (row, col) != (top + 1, left + 1):
                        sheet.set(row, col, None)
            sheet.merges = [m for m in sheet.merges if m not in inside] + [
                {
                    "sheetId": sheet.sheet_id,
                    "startRowIndex": top,
                    "endRowIndex": bottom,
                    "startColumnIndex": left,
                    "endColumnIndex": right,
                }
            ]
        return {}

    def _req_unmergeCells(self, where: str, body: Json, rng: random.Random) -> Json:
        """Undo every merge inside a range; one only partly inside is refused."""
        sheet, rows, cols = self._merge_span(body, where)
        inside = _merges_within(sheet, rows, cols, where, "unmerge")
        sheet.merges = [merge for merge in sheet.merges if merge not in inside]
        return {}

    def _req_addNamedRange(self, where: str, body: Json, rng: random.Random) -> Json:
        named = copy.deepcopy(body.get("namedRange", {}))
        named["namedRangeId"] = str(rng.randint(1, 2**31 - 1))
        named.get("range", {}).pop("sheetId", None)
        self.named_ranges[named["namedRangeId"]] = named
        return {"addNamedRange": {"namedRange": named}}

    def _req_deleteNamedRange(self, where: str, body: Json, rng: random.Random) -> Json:
        self.named_ranges.pop(str(body.get("namedRangeId")), None)
        return {}

    def _grow(
        self, sheet: Sheet, length: int, dimension: str, where: str = "request"
    ) -> None:
        if dimension == "ROWS":
            self._check_cells(where, extra=length * sheet.col_count)
            sheet.row_count += length
        else:
            if sheet.col_count + length > MAX_COLUMNS:
                raise invalid(f"Invalid {where}: too many columns")
            self._check_cells(where, extra=length * sheet.row_count)
            sheet.col_count += length

    def _other_side(self, sheet: Sheet, span: Json) -> int:
        return sheet.col_count if span.get("dimension") == "ROWS" else sheet.row_count

    def _check_cells(self, where: str, extra: int = 0) -> None:
        total = sum(sheet.row_count * sheet.col_count for sheet in self.sheets)
        if total + extra > MAX_CELLS:
            raise invalid(
                f"Invalid {where}: This action would increase the number of cells "
                f"in the workbook above the limit of {MAX_CELLS} cells."
            )

    def _free_title(self) -> str:
        number = len(self.sheets) + 1
        while self.sheet_by_title(f"Sheet{number}") is not None:
            number += 1
        return f"Sheet{number}"

    def _reindex(self) -> None:
        for index, sheet in enumerate(self.sheets):
            sheet.index = index


def _render_row(
    sheet: Sheet,
    row: int,
    c1: int,
    c2: int,
    value_render: str,
    date_render: str,
    lookup: Any,
) -> list[Scalar]:
    values = sheet.rows[row - 1][c1 - 1 : c2]
    out: list[Scalar] = []
    plain = value_render != "FORMATTED_VALUE"
    for cell in values:
        if cell is None:
            out.append("")
        elif plain and type(cell) in (str, int, float, bool):
            out.append(cell)  # type: ignore[arg-type]
        else:
            out.append(render(cell, value_render, date_render, lookup))
    return out


def _find_table(
    sheet: Sheet, rect: tuple[int, int, int, int]
) -> tuple[int, int, int, int] | None:
    """The last table in the range: the final run of filled cells and rows above."""
    r1, c1, r2, c2 = rect

    def filled(row: int, col: int) -> bool:
        return holds_value(sheet.cell(row, col))

    last_row = next(
        (
            row
            for row in range(min(r2, len(sheet.rows)), r1 - 1, -1)
            if any(filled(row, col) for col in range(c1, c2 + 1))
        ),
        None,
    )
    if last_row is None:
        return None
    end_col = max(col for col in range(c1, c2 + 1) if filled(last_row, col))
    start_col = end_col
    while start_col > c1 and filled(last_row, start_col - 1):
        start_col -= 1
    top = last_row
    while top > r1 and any(
        filled(top - 1, col) for col in range(start_col, end_col + 1)
    ):
        top -= 1
    return top, start_col, last_row, end_col


def _fields(mask: str, props: Json) -> list[list[str]]:
    if mask.strip() == "*":
        return [[key] for key in props]
    return [
        [part for part in path.strip().replace(".", "/").split("/") if part]
        for path in mask.split(",")
        if path.strip()
    ]


def _get_path(props: Json, path: list[str]) -> object:
    value: object = props
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _transpose(values: list[list[Any]]) -> list[list[Any]]:
    width = max((len(line) for line in values), default=0)
    return [
        [line[i] if i < len(line) else None for line in values] for i in range(width)
    ]


def _a1(rect: tuple[int, int, int, int]) -> str:
    return a1_range("x", *rect).split("!", 1)[1]


def _letters(col: int) -> str:
    return _a1((1, col, 1, col)).rstrip("0123456789")


def _update_fields(body: Json, where: str) -> set[str]:
    """The parts of cells a request's ``fields`` names; required."""
    fields = {part.strip() for part in str(body.get("fields", "")).split(",")}
    if fields == {""}:
        raise invalid(f"Invalid {where}: fields is required")
    return fields


def _sets_number_format(fields: set[str]) -> bool:
    return bool(fields & {"*", "userEnteredFormat", "userEnteredFormat.numberFormat"})


def _number_format(given: Json, where: str) -> tuple[str, str]:
    """A number format's type and pattern (the type's own if none is given)."""
    kind = str(given.get("type", ""))
    if kind not in NUMBER_FORMAT_TYPES:
        raise invalid(
            f"Invalid {where}: Invalid value at 'cell.user_entered_format."
            f"number_format.type' ({kind!r})"
        )
    return kind, given.get("pattern") or DEFAULT_PATTERNS.get(kind, "")


def _typed_value(given: object, where: str) -> Stored:
    """A cell's ``userEnteredValue`` as stored: text stays text."""
    if given is None:
        return None
    if not isinstance(given, dict) or len(given) != 1:
        raise invalid(f"Invalid {where}: a userEnteredValue holds one value")
    ((kind, value),) = given.items()
    if kind == "stringValue" and isinstance(value, str):
        if len(value) > MAX_CELL_CHARS:
            raise invalid(
                "Your input contains more than the maximum of "
                f"{MAX_CELL_CHARS} characters in a single cell."
            )
        return value
    if (
        kind == "numberValue"
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    ):
        return number(value)
    if kind == "boolValue" and isinstance(value, bool):
        return value
    if kind == "formulaValue" and isinstance(value, str):
        return Rich(0, formula=value)
    raise invalid(f"Invalid {where}: {kind} {value!r} is no cell value")


def _check_values(values: list[list[Any]]) -> None:
    for offset, line in enumerate(values):
        if not isinstance(line, list):
            raise invalid(f"Invalid values[{offset}]: expected a list of cells")
        for index, value in enumerate(line):
            if isinstance(value, str) and len(value) > MAX_CELL_CHARS:
                raise invalid(
                    "Your input contains more than the maximum of "
                    f"{MAX_CELL_CHARS} characters in a single cell."
                )
            if isinstance(value, dict | list):
                raise invalid(
                    f"Invalid values[{offset}][{index}]: a cell must be a string, "
                    "number, boolean or null"
                )


def new_spreadsheet(spreadsheet_id: str, body: Json) -> Spreadsheet:
    """A spreadsheet as ``POST /v4/spreadsheets`` creates it from ``body``."""
    props = body.get("properties", {}) or {}
    book = Spreadsheet(
        spreadsheet_id=spreadsheet_id,
        title=props.get("title") or "Untitled spreadsheet",
        locale=props.get("locale") or "en_US",
        time_zone=props.get("timeZone") or "Etc/GMT",
    )
    tabs = body.get("sheets") or [{"properties": {}}]
    for index, tab in enumerate(tabs):
        tab_props = tab.get("properties", {}) or {}
        grid = tab_props.get("gridProperties", {}) or {}
        book.sheets.append(
            Sheet(
                sheet_id=tab_props.get("sheetId", 0 if index == 0 else index),
                title=tab_props.get("title") or f"Sheet{index + 1}",
                index=index,
                row_count=grid.get("rowCount", 1000),
                col_count=grid.get("columnCount", 26),
            )
        )
    return book


def as_rich(value: Scalar, kind: str, pattern: str) -> Rich:
    """A stored value with a number format (used by fixtures)."""
    return Rich(value, kind=kind, pattern=pattern)


def _merges_within(
    sheet: Sheet,
    rows: tuple[int, int],
    cols: tuple[int, int],
    where: str,
    verb: str,
) -> list[Json]:
    """The sheet's merges inside the span; refused if one is only partly in."""
    inside = []
    for merge in sheet.merges:
        overlaps = (
            rows[0] < merge["endRowIndex"]
            and merge["startRowIndex"] < rows[1]
            and cols[0] < merge["endColumnIndex"]
            and merge["startColumnIndex"] < cols[1]
        )
        if not overlaps:
            continue
        if not (
            rows[0] <= merge["startRowIndex"]
            and merge["endRowIndex"] <= rows[1]
            and cols[0] <= merge["startColumnIndex"]
            and merge["endColumnIndex"] <= cols[1]
        ):
            raise invalid(
                f"Invalid {where}: You must select all cells in a merged range "
                f"to {verb} them."
            )
        inside.append(merge)
    return inside


def _format_only(cell: Stored) -> Stored:
    """A cell emptied, its number format kept."""
    if isinstance(cell, Rich) and cell.kind:
        return Rich(None, kind=cell.kind, pattern=cell.pattern)
    return None


def _keep_format(before: Stored, after: Stored) -> Stored:
    """A value written into a cell keeps the cell's number format, as the
    values API never changes a format (but for a date typed USER_ENTERED,
    which brings its own)."""
    if isinstance(before, Rich) and before.kind and not isinstance(after, Rich):
        if after is None:
            return _format_only(before)
        return Rich(after, kind=before.kind, pattern=before.pattern)
    return after


# The number format types a repeatCell may give, and the pattern a date type
# shows without one (en_US, the emulator's locale for display).
NUMBER_FORMAT_TYPES = frozenset(
    ("TEXT", "NUMBER", "PERCENT", "CURRENCY", "DATE", "TIME", "DATE_TIME", "SCIENTIFIC")
)
DEFAULT_PATTERNS = {"DATE": "M/d/yyyy", "DATE_TIME": "M/d/yyyy H:mm:ss"}


def _span(grid_range: Json, axis: str, size: int, where: str) -> tuple[int, int]:
    """A GridRange's 0-based, end-exclusive rows or columns (the whole grid
    where unbounded), checked against the grid."""
    start = int(grid_range.get(f"start{axis}Index", 0))
    end = int(grid_range.get(f"end{axis}Index", size))
    if not 0 <= start < end <= size:
        raise invalid(
            f"Invalid {where}: range {axis.lower()}s {start}..{end} are outside "
            f"the grid (1..{size})"
        )
    return start, end


def _move_merges(
    sheet: Sheet, dimension: str, move: Callable[[int, int], tuple[int, int]]
) -> None:
    """Move the sheet's merges along rows or columns inserted or deleted;
    a merge that shrinks to a single cell (or to none) is gone."""
    first_key, last_key = (
        ("startRowIndex", "endRowIndex")
        if dimension == "ROWS"
        else ("startColumnIndex", "endColumnIndex")
    )
    kept = []
    for merge in sheet.merges:
        first, last = move(merge[first_key], merge[last_key])
        moved = merge | {first_key: first, last_key: last}
        height = moved["endRowIndex"] - moved["startRowIndex"]
        width = moved["endColumnIndex"] - moved["startColumnIndex"]
        if height * width >= 2:
            kept.append(moved)
    sheet.merges = kept
