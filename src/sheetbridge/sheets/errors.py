"""Errors raised by spreadsheet backends.

Every error carries a class attribute ``transient``: ``True`` means the same
request may succeed if retried later (the job queue retries it with backoff),
``False`` means retrying cannot help and the message tells the user what to do.
"""

from __future__ import annotations

from typing import ClassVar


class SheetError(Exception):
    """Root of every error raised by a sheet backend."""

    transient: ClassVar[bool] = False

    def __init__(
        self,
        message: str = "",
        *,
        location: str | None = None,
        tab: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.location = location
        self.tab = tab
        self.retry_after = retry_after
        self.message = message or self._default_message()
        super().__init__(self.message)

    def _default_message(self) -> str:
        return f"spreadsheet error{_where(self.location, self.tab)}"


class SheetNotFound(SheetError):
    """The workbook/spreadsheet or one of its tabs does not exist."""

    def _default_message(self) -> str:
        where = f" in {self.location}" if self.location else ""
        if self.tab is not None:
            return f"tab {self.tab!r} not found{where}"
        return f"spreadsheet {self.location or ''} not found".replace("  ", " ")


class SheetPermissionDenied(SheetError):
    """The backend may not read or write the workbook/spreadsheet."""

    def _default_message(self) -> str:
        return f"permission denied{_where(self.location, self.tab)}"


class SheetInvalidRequest(SheetError):
    """The request itself is wrong (bad tab name, unwritable value, bad file)."""

    def _default_message(self) -> str:
        return f"invalid spreadsheet request{_where(self.location, self.tab)}"


class SheetTransientError(SheetError):
    """A temporary failure (quota, 5xx, timeout); retry later."""

    transient: ClassVar[bool] = True

    def _default_message(self) -> str:
        return f"temporary spreadsheet error{_where(self.location, self.tab)}"


class SheetUnanswered(SheetTransientError):
    """A call sent that got no answer (it timed out, or the connection broke):
    the service may still apply it."""


class SheetRateLimited(SheetTransientError):
    """The service's request quota is used up; retry after ``retry_after`` s."""

    def _default_message(self) -> str:
        wait = f"; retry in {self.retry_after:.0f} s" if self.retry_after else ""
        return f"spreadsheet API quota exceeded{_where(self.location, None)}{wait}"


class SheetLocked(SheetTransientError):
    """The workbook is locked (open in another program); retry later."""

    def _default_message(self) -> str:
        return f"workbook is locked by another program{_where(self.location, None)}"


class SheetChanged(SheetTransientError):
    """The file changed since it was read (or while it was read); retry."""

    def _default_message(self) -> str:
        return f"workbook changed during sync{_where(self.location, None)}"


def _where(location: str | None, tab: str | None) -> str:
    parts = []
    if tab is not None:
        parts.append(f"tab {tab!r}")
    if location:
        parts.append(location)
    return f" ({' in '.join(parts)})" if parts else ""
