"""A sheet backend on a local .xlsx workbook.

Reads return each formula's cached value, so a formula a person typed imports
as its result. They go through python-calamine, a compiled reader about eight
times faster than openpyxl's read-only mode on a 10,000-row tab; it reads
error cells (``#N/A``) as empty, though, so a workbook that has any is read
by openpyxl instead, which tells them apart: an error cell reads as an
:class:`~sheetbridge.sheets.base.ErrorValue`, which no import takes as a value,
while text that only looks like one stays text.

Writes to an existing workbook load it whole with openpyxl (formulas kept),
change only the given cells and save. openpyxl keeps comments, tables, charts
and pictures, but not shapes, form controls, macros and some more: a write to
a workbook holding any is refused, naming what a save would delete. A
workbook that does not exist yet is written by XlsxWriter, which needs about
half openpyxl's time for a big first sync. Either way the file is written to
a temporary file in the same folder and ``os.replace``-d over the original, so
a crash never leaves a half-written workbook.
"""

from __future__ import annotations

import bisect
import contextlib
import glob
import io
import os
import re
import stat
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any
from xml.etree.ElementTree import ParseError

import openpyxl
import python_calamine
import xlsxwriter
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE, MergedCell
from openpyxl.cell.text import Text as OpenpyxlText
from openpyxl.reader.excel import ExcelReader
from openpyxl.styles.numbers import is_date_format
from openpyxl.utils.cell import range_boundaries
from openpyxl.utils.exceptions import IllegalCharacterError, InvalidFileException
from openpyxl.xml.constants import SHARED_STRINGS, SHEET_MAIN_NS
from openpyxl.xml.functions import iterparse
from xlsxwriter.exceptions import XlsxInputError

from sheetbridge.sheets.base import (
    XLSX_TEXT_LIMIT,
    Cell,
    CellRange,
    ClippedText,
    DateSystem,
    ErrorValue,
    TabChanges,
    TabData,
    UncomputedFormula,
    cell_length,
)
from sheetbridge.sheets.errors import (
    SheetChanged,
    SheetInvalidRequest,
    SheetLocked,
    SheetNotFound,
    SheetPermissionDenied,
)
from sheetbridge.sheets.xlsx_package import (
    FormulaResults,
    RichTextCells,
    counts_days_from_1904,
    find_bad_xml,
    formula_results,
    put_back_formula_results,
    rich_text_cells,
    unkept_content,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None  # type: ignore[assignment]

DATE_FORMAT = "yyyy-mm-dd"
DATETIME_FORMAT = "yyyy-mm-dd hh:mm:ss"
MONEY_FORMAT = "#,##0.00"
TEXT_FORMAT = "@"
# A workbook that is no zip but was written this recently may be one that
# another program is still saving: it is read again later, not refused.
STILL_SAVING_S = 5.0

# A cell whose value is an error (t="e"), with any quoting XML allows.
_ERROR_CELL = re.compile(rb"""\st\s*=\s*["']e["']""")
# A formula cell saved without a cached result: <f>..</f> (or <f/>) followed by
# the cell's end, or by an empty <v/> or <v></v> (openpyxl writes the latter).
_FORMULA_WITHOUT_VALUE = re.compile(
    rb"(?:</f>|<f\b[^>]*/>)\s*(?:<v\s*/>|<v>\s*</v>)?\s*</c>"
)
# Whole numbers a float holds exactly; larger ones stay floats.
_EXACT_INTEGERS = 2**53

_thread_locks: dict[Path, threading.Lock] = {}
_thread_locks_guard = threading.Lock()

# openpyxl warns of each date cell whose number is no day it can make; the
# number is read as typed and a sync names the cell, so the warning is noise.
warnings.filterwarnings(
    "ignore", r"Cell \w+ is marked as a date", UserWarning, "openpyxl"
)


# A save's temporary file: ".<stem>-" and mkstemp's 8 random characters first.
TMP_SUFFIX = ".xlsx.tmp"
# How long a sync waits before it tries a workbook open elsewhere again: time
# to close it (a job's five tries then span about two minutes).
LOCKED_RETRY_S = 30.0


class _Unreadable(SheetInvalidRequest):
    """A file that does not read as a workbook, or a tab of it that does not
    read to its end."""


class XlsxBackend:
    """Tabs of one local workbook file."""

    cell_limit = XLSX_TEXT_LIMIT

    def __init__(
        self,
        path: Path,
        latency_ms: int = 0,
        *,
        respect_lock_files: bool = True,
        locked_retry_s: float = LOCKED_RETRY_S,
    ) -> None:
        """Use the workbook at ``path`` (it need not exist yet).

        ``latency_ms`` sleeps that long per call to imitate a slow API.
        ``respect_lock_files`` refuses to write (transient :class:`SheetLocked`)
        while Excel or LibreOffice has the workbook open, since their next save
        would silently overwrite what the sync wrote; the next try should wait
        ``locked_retry_s``, time enough to close it.
        """
        # A link (to a workbook on a shared drive, say) stays a link: the
        # workbook it names is read and replaced, and messages name the link.
        self.path = Path(os.path.realpath(path))
        self.latency_ms = latency_ms
        self.respect_lock_files = respect_lock_files
        self.locked_retry_s = locked_retry_s
        self.location = str(path)

    def version(self) -> str:
        """Return the current version token of the file ("" if missing)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return ""
        except PermissionError as exc:
            raise SheetPermissionDenied(location=self.location) from exc
        return f"{st.st_mtime_ns}-{st.st_size}-{st.st_ino}"

    def read_tabs(self, tabs: Sequence[str]) -> dict[str, TabData | None]:
        """Read the values of the named tabs; a missing tab maps to ``None``."""
        self._sleep()
        before = self.version()
        if not before:
            return dict.fromkeys(tabs)
        with self._maybe_being_saved(before):
            result = self._read_values(tabs, before)
        if self.version() != before:
            raise SheetChanged(location=self.location)
        return result

    @contextlib.contextmanager
    def _maybe_being_saved(self, before: str) -> Iterator[None]:
        """Half a file is no workbook: if another program is saving it (the
        file changed since it was read, or moments ago), a later attempt
        reads it whole. One broken for longer is broken."""
        try:
            yield
        except _Unreadable:
            if self.version() != before:
                raise SheetChanged(location=self.location) from None
            if self._saved_moments_ago():
                raise SheetChanged(
                    f"{self.location} is not a readable .xlsx workbook yet, and "
                    "it was saved moments ago: another program may still be "
                    "saving it; the sync tries again",
                    location=self.location,
                ) from None
            raise

    def _saved_moments_ago(self) -> bool:
        try:
            saved = self.path.stat()
        except OSError:
            return False
        # No program saves a workbook as a folder, however new the folder.
        is_file = stat.S_ISREG(saved.st_mode)
        return is_file and time.time() - saved.st_mtime < STILL_SAVING_S

    def write(
        self,
        changes: Mapping[str, TabChanges],
        *,
        expected_version: str | None = None,
    ) -> None:
        """Apply all changes in one atomic save; see :class:`SheetBackend`."""
        self._sleep()
        if all(ch.is_empty() for ch in changes.values()):
            return
        self._check_not_open_elsewhere()
        with self._exclusive():
            before = self.version()
            # An empty version: none of the tabs was there when read (nor,
            # perhaps, the file); that none has appeared since is checked
            # once the workbook is open.
            if expected_version and before != expected_version:
                raise SheetChanged(location=self.location)
            if not before and not any(ch.delete_rows for ch in changes.values()):
                self._save_atomically(self._new_book_writer(changes), before)
                return
            results: dict[str, FormulaResults] = {}
            rich: dict[str, RichTextCells] = {}
            with self._maybe_being_saved(before):
                if before:
                    self._refuse_to_delete_content()
                    results, rich = self._formula_results_and_rich_text()
                workbook = self._load_for_write(before)
            named = {tab: tab_named(workbook.sheetnames, tab) for tab in changes}
            if expected_version == "" and any(named.values()):
                raise SheetChanged(location=self.location)
            # A tab named in other letter case is that tab, as in Excel.
            changes = {named[tab] or tab: ch for tab, ch in changes.items()}
            _keep_rich_text(workbook, rich)
            for tab, tab_changes in changes.items():
                sheet = _ensure_sheet(workbook, tab, self.location)
                try:
                    _apply(sheet, tab_changes, self.location)
                except IllegalCharacterError as exc:
                    raise _control_character(self.location, tab) from exc
            _store_text_exactly(workbook)
            results = _after_changes(results, changes)
            self._save_atomically(_saver(workbook, results), before)

    # reading

    def _read_values(
        self, tabs: Sequence[str], version: str
    ) -> dict[str, TabData | None]:
        needs_openpyxl, date_system = self._look_inside()
        if needs_openpyxl:
            return self._read_with_openpyxl(tabs, version, date_system)
        try:
            return self._read_with_calamine(tabs, version, date_system)
        except BaseException as exc:
            # calamine panics (a BaseException, from Rust) on a cell it cannot
            # turn into a value, such as a date number no calendar holds;
            # openpyxl reads that cell as an error, which the sync reports.
            if type(exc).__name__ != "PanicException":
                raise
            return self._read_with_openpyxl(tabs, version, date_system)

    def _read_with_calamine(
        self, tabs: Sequence[str], version: str, date_system: DateSystem
    ) -> dict[str, TabData | None]:
        try:
            workbook = python_calamine.CalamineWorkbook.from_path(self.path)
        except OSError as exc:
            raise self._unreadable(exc) from exc
        except python_calamine.CalamineError as exc:
            raise self._not_a_workbook(exc) from exc
        try:
            result: dict[str, TabData | None] = {}
            for tab in tabs:
                name = tab_named(workbook.sheet_names, tab)
                if name is None:
                    result[tab] = None
                    continue
                try:
                    sheet = workbook.get_sheet_by_name(name)
                    values = sheet.to_python(skip_empty_area=False)
                except python_calamine.CalamineError as exc:
                    raise self._damaged(tab, exc) from exc
                result[tab] = TabData(
                    _trimmed(values, _calamine_cell),
                    version,
                    _calamine_merges(sheet.merged_cell_ranges),
                    date_system,
                )
            return result
        finally:
            workbook.close()

    def _look_inside(self) -> tuple[bool, DateSystem]:
        """Whether a cell holds an error or a formula without a result (calamine
        reads both as empty, openpyxl tells them apart), and the day the
        workbook's date numbers count from."""
        try:
            with zipfile.ZipFile(self.path) as archive:
                needs_openpyxl = any(
                    _ERROR_CELL.search(xml) or _FORMULA_WITHOUT_VALUE.search(xml)
                    for xml in (
                        archive.read(name)
                        for name in archive.namelist()
                        # cells live in the worksheets, not in shared strings
                        if name.startswith("xl/worksheets/") and name.endswith(".xml")
                    )
                )
                if counts_days_from_1904(archive):
                    return needs_openpyxl, DateSystem.EXCEL_1904
                return needs_openpyxl, DateSystem.EXCEL_1900
        except OSError as exc:
            raise self._unreadable(exc) from exc
        except (zipfile.BadZipFile, KeyError) as exc:
            raise self._not_a_workbook(exc) from exc

    def _read_with_openpyxl(
        self, tabs: Sequence[str], version: str, date_system: DateSystem
    ) -> dict[str, TabData | None]:
        workbook = self._open(read_only=True, data_only=True)
        formulas = self._open(read_only=True, data_only=False)
        # Its cells as typed: a date cell's number stays a number.
        formulas._date_formats = formulas._timedelta_formats = set()
        try:
            result: dict[str, TabData | None] = {}
            for tab in tabs:
                name = tab_named(workbook.sheetnames, tab)
                if name is None:
                    result[tab] = None
                    continue
                values = _sheet_values(workbook[name])
                typed = _sheet_rows(formulas[name])
                rows = (
                    map(_unknown_if_uncomputed, value_row, typed_row)
                    for value_row, typed_row in zip(values, typed, strict=True)
                )
                try:
                    result[tab] = TabData(
                        _trimmed(rows, _openpyxl_cell),
                        version,
                        _xml_merges(workbook[name]),
                        date_system,
                    )
                except ParseError as exc:
                    raise self._damaged(tab, exc) from exc
            return result
        finally:
            workbook.close()
            formulas.close()

    def _open(self, *, read_only: bool, data_only: bool) -> Any:
        try:
            reader = _StoredTextReader(
                self.path, read_only=read_only, data_only=data_only
            )
            reader.read()
            return reader.wb
        except (FileNotFoundError, PermissionError) as exc:
            raise self._unreadable(exc) from exc
        except (zipfile.BadZipFile, InvalidFileException, KeyError, OSError) as exc:
            raise self._not_a_workbook(exc) from exc
        except ParseError as exc:
            raise self._not_well_formed(exc) from exc

    def _unreadable(self, exc: OSError) -> Exception:
        if isinstance(exc, FileNotFoundError):
            return SheetChanged(location=self.location)  # replaced meanwhile
        if isinstance(exc, PermissionError):
            return SheetPermissionDenied(location=self.location)
        return self._not_a_workbook(exc)

    def _not_well_formed(self, exc: ParseError) -> Exception:
        """What is wrong, and where, in a workbook whose XML openpyxl rejects
        (calamine, which reads it, is more lenient)."""
        try:
            with zipfile.ZipFile(self.path) as archive:
                bad = find_bad_xml(archive)
        except (OSError, zipfile.BadZipFile):
            bad = None
        if bad is None:
            return self._not_a_workbook(exc)
        if bad.tab is not None:
            where = f"tab {bad.tab!r}"
            if bad.cell is not None:
                where += f", cell {bad.cell}"
            todo = "retype that cell's text"
        else:
            where = f"its part {bad.part}"
            todo = "save it again in Excel or LibreOffice, or rebuild that content"
        what = (
            "a character no workbook may contain"
            if "character" in bad.reason
            else "text the workbook format does not allow"
        )
        return SheetInvalidRequest(
            f"{self.location} cannot be synced: {where} holds {what} "
            f"({bad.reason}). Nothing was written. In the workbook, {todo}, "
            "then press Sync again",
            location=self.location,
            tab=bad.tab,
        )

    def _damaged(self, tab: str, exc: Exception) -> Exception:
        """A tab whose part of the package does not read to its end: cut short
        by a copy or a save that broke off, or garbled."""
        try:
            with zipfile.ZipFile(self.path) as archive:
                bad = find_bad_xml(archive)
        except (OSError, zipfile.BadZipFile):
            bad = None
        reason = bad.reason if bad is not None and bad.tab == tab else str(exc)
        return _Unreadable(
            f"{self.location} cannot be read: its tab {tab!r} is damaged "
            f"({reason or type(exc).__name__}). Nothing was imported or written. "
            "Open the workbook in Excel or LibreOffice and save it (they repair "
            "what they can), or put back a copy saved before, then press Sync "
            "again",
            location=self.location,
            tab=tab,
        )

    def _not_a_workbook(self, exc: Exception) -> Exception:
        if isinstance(exc, IsADirectoryError):
            return SheetInvalidRequest(
                f"{self.location} is a folder, not a workbook: put the workbook "
                "there, or point the link at one",
                location=self.location,
            )
        return _Unreadable(
            f"{self.location} is not a readable .xlsx workbook ({exc})",
            location=self.location,
        )

    # writing

    def _sleep(self) -> None:
        if self.latency_ms > 0:
            time.sleep(self.latency_ms / 1000)

    def _check_not_open_elsewhere(self) -> None:
        if not self.respect_lock_files:
            return
        name = self.path.name
        for lock in (f"~${name}", f".~lock.{name}#"):
            if (self.path.parent / lock).exists():
                raise SheetLocked(
                    f"{self.location} is open in another program (lock file "
                    f"{lock}); close it there. The sync tries again a few times, "
                    "then gives up: press Sync again after that. If it is open "
                    f"nowhere, the lock file was left by a crash: delete {lock}",
                    location=self.location,
                    retry_after=self.locked_retry_s,
                )

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Serialise writers of this workbook, across threads and processes;
        other workbooks in its folder are written meanwhile."""
        key = self.path.absolute()
        with _thread_locks_guard:
            lock = _thread_locks.setdefault(key, threading.Lock())
        with lock:
            fd = _lock_workbook(self.path)
            try:
                yield
            finally:
                if fd is not None:
                    os.close(fd)

    def _refuse_to_delete_content(self) -> None:
        """Refuse, writing nothing, a save that would delete what the workbook
        holds beyond cells and what openpyxl keeps (shapes, macros, …)."""
        try:
            with zipfile.ZipFile(self.path) as archive:
                unkept = unkept_content(archive)
        except (OSError, zipfile.BadZipFile):
            return  # the load that follows says what is wrong
        if not unkept:
            return
        by_tab: dict[str | None, list[str]] = {}
        for item in unkept:
            by_tab.setdefault(item.tab, []).append(item.what)
        listing = "; ".join(
            f"{'the workbook' if tab is None else f'tab {tab!r}'} holds " + _and(whats)
            for tab, whats in by_tab.items()
        )
        raise SheetInvalidRequest(
            f"{self.location} cannot be synced: {listing}, which the app cannot "
            "keep when it saves the workbook, so saving would delete them. "
            "Nothing was written. Move them to another workbook (or delete them "
            "yourself), then press Sync again",
            location=self.location,
            tab=next((item.tab for item in unkept if item.tab is not None), None),
        )

    def _formula_results_and_rich_text(
        self,
    ) -> tuple[dict[str, FormulaResults], dict[str, RichTextCells]]:
        """What openpyxl's load would drop and the save must have back: the
        formulas' results, and the formatted parts of text."""
        try:
            with zipfile.ZipFile(self.path) as archive:
                return formula_results(archive), rich_text_cells(archive)
        except (OSError, zipfile.BadZipFile, ParseError):
            return {}, {}  # the load that follows says what is wrong

    def _load_for_write(self, version: str) -> Any:
        if not version:
            workbook = openpyxl.Workbook()
            workbook.remove(workbook.active)  # drop the default "Sheet" tab
            return workbook
        return self._open(read_only=False, data_only=False)

    def _new_book_writer(
        self, changes: Mapping[str, TabChanges]
    ) -> Callable[[IO[bytes]], None]:
        def write(handle: IO[bytes]) -> None:
            _write_new_book(handle, changes, self.location)

        return write

    def _clear_killed_saves(self) -> None:
        """Delete the temporary files of this workbook's saves that a killed
        process left: with its write lock held, no save is under way."""
        pattern = f".{glob.escape(self.path.stem)}-{'?' * 8}{TMP_SUFFIX}"
        for leftover in self.path.parent.glob(pattern):
            leftover.unlink(missing_ok=True)

    def _save_atomically(self, save: Callable[[IO[bytes]], None], before: str) -> None:
        folder = self.path.parent
        if not folder.is_dir():
            raise SheetNotFound(f"folder {folder} does not exist", location=str(folder))
        self._clear_killed_saves()
        try:
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{self.path.stem}-", suffix=TMP_SUFFIX, dir=folder
            )
        except PermissionError as exc:
            raise SheetPermissionDenied(location=self.location) from exc
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                save(handle)
                handle.flush()
                os.fsync(handle.fileno())
            _copy_mode(self.path, tmp)
            if self.version() != before:
                raise SheetChanged(location=self.location)
            os.replace(tmp, self.path)
        except PermissionError as exc:
            raise SheetPermissionDenied(location=self.location) from exc
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_folder(folder)


def _trimmed(
    lines: Iterable[Iterable[Any]], cell: Callable[[Any], Cell]
) -> list[list[Cell]]:
    """Rows of cells without trailing empty cells and trailing empty rows."""
    rows: list[list[Cell]] = []
    last_used = 0
    for values in lines:
        if isinstance(values, list) and values.count("") == len(values):
            # An empty row as calamine reads it, passed over at C speed: a
            # tab used down to row 1,048,576 has a million of them.
            rows.append([])
            continue
        row = [cell(value) for value in values]
        while row and _is_empty(row[-1]):
            row.pop()
        rows.append(row)
        if row:
            last_used = len(rows)
    del rows[last_used:]
    return rows


def _calamine_merges(
    ranges: Iterable[tuple[tuple[int, int], tuple[int, int]]] | None,
) -> list[CellRange]:
    """Merged cells as calamine gives them, 0-based corners, as CellRanges."""
    return [
        CellRange(top + 1, left + 1, bottom + 1, right + 1)
        for (top, left), (bottom, right) in ranges or ()
    ]


# A merged block in a worksheet's XML, with or without a namespace prefix.
_MERGE_CELL = re.compile(
    rb"""<(?:\w+:)?mergeCell\b[^>]*?\sref\s*=\s*["']([A-Za-z0-9:$]+)["']"""
)


def _xml_merges(sheet: Any) -> list[CellRange]:
    """The merged cells of a tab openpyxl reads in read-only mode, which skips
    them: found in the tab's XML, which lists them after its cells."""
    with sheet._get_source() as source:
        xml = source.read()
    merges = []
    for found in _MERGE_CELL.finditer(xml):
        try:
            left, top, right, bottom = range_boundaries(found[1].decode())
        except (TypeError, ValueError):
            continue  # not a block of cells; nothing is merged there
        if None not in (left, top, right, bottom):
            merges.append(CellRange(top, left, bottom, right))
    return merges


def _sheet_rows(sheet: Any) -> Iterator[tuple[Any, ...]]:
    sheet.reset_dimensions()  # stored dimensions are often wrong
    return sheet.iter_rows(values_only=True)  # type: ignore[no-any-return]


def _unknown_if_uncomputed(value: Any, typed: Any) -> Any:
    """A cell's saved value; a formula saved without one is marked unknown.

    openpyxl reads a date cell whose number is no day it can make (1e300) as
    the error #VALUE!; the number typed is what was there.
    """
    if value is None and isinstance(typed, str) and typed.startswith("="):
        return UncomputedFormula(typed)
    if isinstance(value, ErrorValue) and type(typed) in (int, float):
        return typed
    return value


def _text(value: str) -> str:
    """Text as read, marked when it may have been cut at the cell limit."""
    return ClippedText(value) if cell_length(value) > XLSX_TEXT_LIMIT else value


def _sheet_values(sheet: Any) -> Iterator[list[Any]]:
    """Rows of values; an error cell's (t="e") as an ErrorValue, so that only
    a real error is one, not text that reads like one."""
    sheet.reset_dimensions()  # stored dimensions are often wrong
    for cells in sheet.iter_rows():
        yield [
            ErrorValue(cell.value) if cell.data_type == "e" else cell.value
            for cell in cells
        ]


# A workbook's XML writes some characters as _xHHHH_, and text that reads like
# such an escape as _x005F_ (an escaped "_") followed by the rest. Calamine
# and XlsxWriter know this; openpyxl leaves it to its caller. Readers decode
# only a lowercase "x"; LibreOffice escapes "_X0041_" too, and so does the app,
# in case a reader takes it for an escape.
_ESCAPE_LIKE = re.compile(r"_(?=[xX][0-9A-Fa-f]{4}_)")
_ESCAPED = re.compile(r"_x([0-9A-Fa-f]{4})_")


def _keep_carriage_returns(text: str) -> str:
    # The one character XML itself changes: a parser reads a carriage return,
    # alone or before a line feed, as a line feed.
    return text.replace("\r", "_x000D_")


def _stored(text: str) -> str:
    """Text as a workbook's XML stores it, escapes and all: what openpyxl
    writes as given."""
    return _keep_carriage_returns(_ESCAPE_LIKE.sub("_x005F_", text))


def _openpyxl_cell(value: Cell) -> Cell:
    if type(value) is not str:
        return value  # no text, or marked already (an error, a formula)
    return _text(_ESCAPED.sub(lambda found: chr(int(found[1], 16)), value))


class _StoredTextReader(ExcelReader):  # type: ignore[misc]
    """openpyxl's reader, but keeping shared strings as the workbook stores
    them, escapes and all, as it already keeps text stored in the cells.

    openpyxl drops every "x005F_" from shared strings, which turns a literal
    "_x0041_" (stored "_x005F_x0041_") into an escaped "A" and cuts "x005F_"
    out of text that merely contains it; a save writes that back changed.
    """

    def read_strings(self) -> None:
        part = self.package.find(SHARED_STRINGS)
        if part is None:
            return
        strings: list[str] = []
        with self.archive.open(part.PartName[1:]) as source:
            for _, node in iterparse(source):
                if node.tag == _SHARED_STRING:
                    strings.append(OpenpyxlText.from_tree(node).content)
                    node.clear()
        self.shared_strings = strings


_SHARED_STRING = f"{{{SHEET_MAIN_NS}}}si"


def _store_text_exactly(workbook: Any) -> None:
    """Make every text cell of every tab save as it reads.

    Text loaded from the workbook is as stored, escapes and all, and openpyxl
    writes it as it is; only characters XML itself changes (a lone carriage
    return, read back as a line feed) need escaping. Cells the app wrote were
    stored by :func:`_set_cell` already.
    """
    for sheet in workbook.worksheets:
        for cell in sheet._cells.values():
            value = cell._value
            if type(value) is str and cell.data_type == "s" and "\r" in value:
                cell._value = _keep_carriage_returns(value)


def _calamine_cell(value: Cell) -> Cell:
    """A value as openpyxl reads it: empty cells as ``None``, whole numbers as
    ``int``, dates as datetimes at midnight."""
    if isinstance(value, str):
        return _text(value) if value else None
    if isinstance(value, float):
        if value.is_integer() and abs(value) < _EXACT_INTEGERS:
            return int(value)
        return value
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day)
    return value


def _keep_rich_text(workbook: Any, rich: dict[str, RichTextCells]) -> None:
    """Give cells the formatted parts of their text back, where their text
    is as loaded; the changes applied next replace what the app writes."""
    for tab, cells in rich.items():
        if tab not in workbook.sheetnames:
            continue
        loaded = workbook[tab]._cells
        for key, runs in cells.items():
            cell = loaded.get(key)
            if cell is not None and cell.data_type == "s" and cell._value == str(runs):
                cell._value = runs


def _is_empty(value: object) -> bool:
    return value is None or value == ""


def tab_named(names: Sequence[str], tab: str) -> str | None:
    """Which of a workbook's tab ``names`` is ``tab``: the same name in any
    letter case, as Excel and LibreOffice compare them (a workbook cannot
    have both "customers" and "Customers")."""
    if tab in names:
        return tab
    return next((name for name in names if name.casefold() == tab.casefold()), None)


def _ensure_sheet(workbook: Any, tab: str, location: str) -> Any:
    if tab in workbook.sheetnames:
        return workbook[tab]
    try:
        return workbook.create_sheet(title=tab)
    except ValueError as exc:
        raise SheetInvalidRequest(
            f"cannot create tab {tab!r}: {exc}", location=location, tab=tab
        ) from exc


def _apply(sheet: Any, changes: TabChanges, location: str) -> None:
    for (row, col), value in changes.cells.items():
        _set_cell(_writable(sheet, row, col, location), value)
    if changes.append:
        first = _last_non_empty_row(sheet) + 1
        for offset, values in enumerate(changes.append):
            for index, value in enumerate(values):
                if value is not None:
                    cell = _writable(sheet, first + offset, index + 1, location)
                    _set_cell(cell, value)
    for row in sorted(set(changes.delete_rows), reverse=True):
        sheet.delete_rows(row)  # highest first: deleting shifts the rows below


def _writable(sheet: Any, row: int, col: int, location: str) -> Any:
    """The cell at (row, col), refused if a merge hides it: a value there
    would not show, and openpyxl cannot hold one."""
    cell = sheet.cell(row=row, column=col)
    if isinstance(cell, MergedCell):
        block = next(
            (str(r) for r in sheet.merged_cells.ranges if cell.coordinate in r), "?"
        )
        raise SheetInvalidRequest(
            f"cannot write cell {cell.coordinate} of tab {sheet.title!r}: cells "
            f"{block} are merged; unmerge them so each column has its own value",
            location=location,
            tab=sheet.title,
        )
    return cell


def _last_non_empty_row(sheet: Any) -> int:
    for row in range(sheet.max_row, 0, -1):
        cells = next(sheet.iter_rows(min_row=row, max_row=row, values_only=True))
        if any(not _is_empty(value) for value in cells):
            return row
    return 0


def _set_cell(cell: Any, value: Cell) -> None:
    was_date = is_date_format(cell.number_format)
    cell.value = _stored(value) if isinstance(value, str) else value
    if isinstance(value, str):
        # openpyxl turns a str starting with "=" into a formula; keep it text.
        cell.data_type = "s"
        cell.number_format = TEXT_FORMAT
    elif isinstance(value, datetime):
        cell.number_format = DATETIME_FORMAT
    elif isinstance(value, date):
        if not was_date:
            cell.number_format = DATE_FORMAT
    elif isinstance(value, Decimal):
        cell.number_format = MONEY_FORMAT
    elif isinstance(value, int | float) and not isinstance(value, bool) and was_date:
        cell.number_format = "General"


def _write_new_book(
    handle: IO[bytes], changes: Mapping[str, TabChanges], location: str
) -> None:
    """Write ``changes`` as a new workbook, cell by cell as :func:`_set_cell` would."""
    book = xlsxwriter.Workbook(
        handle,
        {
            "in_memory": True,
            "strings_to_formulas": False,
            "strings_to_numbers": False,
            "strings_to_urls": False,
        },
    )
    formats = {
        str: book.add_format({"num_format": TEXT_FORMAT}),
        date: book.add_format({"num_format": DATE_FORMAT}),
        datetime: book.add_format({"num_format": DATETIME_FORMAT}),
        Decimal: book.add_format({"num_format": MONEY_FORMAT}),
    }
    for tab, ch in changes.items():
        try:
            sheet = book.add_worksheet(tab)
        except XlsxInputError as exc:
            raise SheetInvalidRequest(
                f"cannot create tab {tab!r}: {exc}", location=location, tab=tab
            ) from exc
        cells = dict(ch.cells)
        first = max(
            (row for (row, _), v in cells.items() if not _is_empty(v)), default=0
        )
        for offset, values in enumerate(ch.append, start=first + 1):
            for index, value in enumerate(values, start=1):
                if value is not None:
                    cells[(offset, index)] = value
        for (row, col), value in cells.items():
            if _is_empty(value):
                continue
            if isinstance(value, str) and ILLEGAL_CHARACTERS_RE.search(value):
                raise _control_character(location, tab)
            status = _put(sheet, row - 1, col - 1, value, formats)
            if status not in (0, -2):  # -2: text cut to what a cell holds
                raise SheetInvalidRequest(
                    f"cannot write {value!r} to row {row}, column {col} of tab {tab!r}",
                    location=location,
                    tab=tab,
                )
    book.close()


def _put(sheet: Any, row: int, col: int, value: Cell, formats: dict[type, Any]) -> int:
    if isinstance(value, str):
        return int(sheet.write_string(row, col, value, formats[str]))
    if isinstance(value, bool):
        return int(sheet.write_boolean(row, col, value))
    if isinstance(value, datetime):
        return int(sheet.write_datetime(row, col, value, formats[datetime]))
    if isinstance(value, date):
        return int(sheet.write_datetime(row, col, value, formats[date]))
    if isinstance(value, Decimal):
        return int(sheet.write_number(row, col, value, formats[Decimal]))
    return int(sheet.write_number(row, col, value))


def _and(items: Sequence[str]) -> str:
    if len(items) < 2:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


def _control_character(location: str, tab: str) -> SheetInvalidRequest:
    return SheetInvalidRequest(
        "a value contains a control character a workbook cannot store",
        location=location,
        tab=tab,
    )


def _after_changes(
    results: dict[str, FormulaResults], changes: Mapping[str, TabChanges]
) -> dict[str, FormulaResults]:
    """The saved formula results, moved to where their cells are once
    ``changes`` are applied: none for cells written or rows deleted."""
    moved: dict[str, FormulaResults] = {}
    for tab, found in results.items():
        tab_changes = changes.get(tab)
        if tab_changes is None:
            moved[tab] = found
            continue
        deleted = sorted(set(tab_changes.delete_rows))
        moved[tab] = {
            (row - bisect.bisect_left(deleted, row), col): result
            for (row, col), result in found.items()
            if (row, col) not in tab_changes.cells and not _in_sorted(deleted, row)
        }
    return moved


def _in_sorted(items: list[int], item: int) -> bool:
    at = bisect.bisect_left(items, item)
    return at < len(items) and items[at] == item


def _saver(
    workbook: Any, results: dict[str, FormulaResults]
) -> Callable[[IO[bytes]], None]:
    """Save ``workbook`` with openpyxl, which saves formulas without results,
    then put back the results the workbook had for the formulas it keeps."""
    if not any(results.values()):
        return workbook.save  # type: ignore[no-any-return]
    # A result may be out of date once the write changed the cells it is
    # computed from: have Excel and LibreOffice compute every formula anew.
    workbook.calculation.fullCalcOnLoad = True

    def save(handle: IO[bytes]) -> None:
        buffer = io.BytesIO()
        workbook.save(buffer)
        with (
            zipfile.ZipFile(buffer) as saved,
            zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as out,
        ):
            put_back_formula_results(saved, out, results)

    return save


def _lock_workbook(path: Path) -> int | None:
    """An exclusive lock on the workbook at ``path`` (one not there yet: on
    its folder, until it is): its descriptor, or None where files cannot be
    locked (then threads alone are serialised). A save replaces the file,
    so a lock taken on the file it replaced is given up and taken again."""
    if fcntl is None:
        return None
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            folder = _lock_folder(path.parent)
            if folder is None or not path.exists():
                return folder
            os.close(folder)  # made meanwhile: locked as a workbook
            continue
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except OSError:
            pass  # gone meanwhile: locked again as it is now
        os.close(fd)


def _lock_folder(folder: Path) -> int | None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _copy_mode(original: Path, tmp: Path) -> None:
    # mkstemp creates 0600; keep the original's mode, or a usual one if new.
    try:
        mode = original.stat().st_mode & 0o7777
    except OSError:
        mode = 0o644
    with contextlib.suppress(OSError):
        os.chmod(tmp, mode)


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
