"""A sheet backend on a local .xlsx workbook (openpyxl).

Reads use cached values (``data_only``) so a formula a person typed imports as
its result. Writes load the full workbook (formulas kept), change only the
given cells, save to a temporary file in the same folder and ``os.replace`` it
over the original, so a crash never leaves a half-written workbook.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
from openpyxl.styles.numbers import is_date_format
from openpyxl.utils.exceptions import IllegalCharacterError, InvalidFileException

from sheetbridge.sheets.base import (
    XLSX_CELL_LIMIT,
    Cell,
    ClippedText,
    TabChanges,
    TabData,
)
from sheetbridge.sheets.errors import (
    SheetChanged,
    SheetInvalidRequest,
    SheetLocked,
    SheetNotFound,
    SheetPermissionDenied,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None  # type: ignore[assignment]

DATE_FORMAT = "yyyy-mm-dd"
DATETIME_FORMAT = "yyyy-mm-dd hh:mm:ss"
MONEY_FORMAT = "#,##0.00"
TEXT_FORMAT = "@"

_thread_locks: dict[Path, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


class XlsxBackend:
    """Tabs of one local workbook file."""

    def __init__(
        self, path: Path, latency_ms: int = 0, *, respect_lock_files: bool = True
    ) -> None:
        """Use the workbook at ``path`` (it need not exist yet).

        ``latency_ms`` sleeps that long per call to imitate a slow API.
        ``respect_lock_files`` refuses to write (transient :class:`SheetLocked`)
        while Excel or LibreOffice has the workbook open, since their next save
        would silently overwrite what the sync wrote.
        """
        self.path = Path(path)
        self.latency_ms = latency_ms
        self.respect_lock_files = respect_lock_files
        self.location = str(self.path)

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
        result = self._read_values(tabs, before)
        if self.version() != before:
            raise SheetChanged(location=self.location)
        return result

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
            if expected_version is not None and before != expected_version:
                raise SheetChanged(location=self.location)
            workbook = self._load_for_write(before)
            for tab, tab_changes in changes.items():
                sheet = _ensure_sheet(workbook, tab, self.location)
                try:
                    _apply(sheet, tab_changes)
                except IllegalCharacterError as exc:
                    raise SheetInvalidRequest(
                        "a value contains a control character a workbook cannot store",
                        location=self.location,
                        tab=tab,
                    ) from exc
            self._save_atomically(workbook, before)

    # reading

    def _read_values(
        self, tabs: Sequence[str], version: str
    ) -> dict[str, TabData | None]:
        workbook = self._open(read_only=True, data_only=True)
        try:
            result: dict[str, TabData | None] = {}
            for tab in tabs:
                if tab not in workbook.sheetnames:
                    result[tab] = None
                    continue
                sheet = workbook[tab]
                sheet.reset_dimensions()  # stored dimensions are often wrong
                result[tab] = TabData(_trimmed_rows(sheet), version)
            return result
        finally:
            workbook.close()

    def _open(self, *, read_only: bool, data_only: bool) -> Any:
        try:
            return openpyxl.load_workbook(
                self.path, read_only=read_only, data_only=data_only
            )
        except FileNotFoundError as exc:
            raise SheetChanged(location=self.location) from exc
        except PermissionError as exc:
            raise SheetPermissionDenied(location=self.location) from exc
        except (zipfile.BadZipFile, InvalidFileException, KeyError, OSError) as exc:
            raise SheetInvalidRequest(
                f"{self.location} is not a readable .xlsx workbook ({exc})",
                location=self.location,
            ) from exc

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
                    f"{lock}); close it and the sync will continue",
                    location=self.location,
                )

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Serialise writers of this folder, across threads and processes."""
        key = self.path.absolute()
        with _thread_locks_guard:
            lock = _thread_locks.setdefault(key, threading.Lock())
        with lock:
            fd = _lock_folder(self.path.parent)
            try:
                yield
            finally:
                if fd is not None:
                    os.close(fd)

    def _load_for_write(self, version: str) -> Any:
        if not version:
            workbook = openpyxl.Workbook()
            workbook.remove(workbook.active)  # drop the default "Sheet" tab
            return workbook
        return self._open(read_only=False, data_only=False)

    def _save_atomically(self, workbook: Any, before: str) -> None:
        folder = self.path.parent
        if not folder.is_dir():
            raise SheetNotFound(f"folder {folder} does not exist", location=str(folder))
        try:
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{self.path.stem}-", suffix=".xlsx.tmp", dir=folder
            )
        except PermissionError as exc:
            raise SheetPermissionDenied(location=self.location) from exc
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                workbook.save(handle)
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


def _trimmed_rows(sheet: Any) -> list[list[Cell]]:
    rows: list[list[Cell]] = []
    last_used = 0
    for values in sheet.iter_rows(values_only=True):
        row = [
            ClippedText(v) if isinstance(v, str) and len(v) >= XLSX_CELL_LIMIT else v
            for v in values
        ]
        while row and _is_empty(row[-1]):
            row.pop()
        rows.append(row)
        if row:
            last_used = len(rows)
    del rows[last_used:]
    return rows


def _is_empty(value: object) -> bool:
    return value is None or value == ""


def _ensure_sheet(workbook: Any, tab: str, location: str) -> Any:
    if tab in workbook.sheetnames:
        return workbook[tab]
    try:
        return workbook.create_sheet(title=tab)
    except ValueError as exc:
        raise SheetInvalidRequest(
            f"cannot create tab {tab!r}: {exc}", location=location, tab=tab
        ) from exc


def _apply(sheet: Any, changes: TabChanges) -> None:
    for (row, col), value in changes.cells.items():
        _set_cell(sheet.cell(row=row, column=col), value)
    if changes.append:
        first = _last_non_empty_row(sheet) + 1
        for offset, values in enumerate(changes.append):
            for index, value in enumerate(values):
                if value is not None:
                    _set_cell(sheet.cell(row=first + offset, column=index + 1), value)
    for row in sorted(set(changes.delete_rows), reverse=True):
        sheet.delete_rows(row)  # highest first: deleting shifts the rows below


def _last_non_empty_row(sheet: Any) -> int:
    for row in range(sheet.max_row, 0, -1):
        cells = next(sheet.iter_rows(min_row=row, max_row=row, values_only=True))
        if any(not _is_empty(value) for value in cells):
            return row
    return 0


def _set_cell(cell: Any, value: Cell) -> None:
    was_date = is_date_format(cell.number_format)
    cell.value = value
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


def _lock_folder(folder: Path) -> int | None:
    if fcntl is None:
        return None
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
