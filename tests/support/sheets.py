"""Writing to a sheet as a sync does: a write cut short is planned again."""

from __future__ import annotations

import time
from collections.abc import Mapping

from sheetbridge.sheets.base import SheetBackend, TabChanges
from sheetbridge.sheets.errors import SheetChanged


def write_until_done(
    backend: SheetBackend, changes: Mapping[str, TabChanges], *, tries: int = 20
) -> int:
    """Write ``changes``, again after each write the backend cut short (as a
    sync's next attempt would, reading the sheet first); returns how many
    were cut. The changes must not name rows (appends do not), since a sync
    would plan those anew."""
    for cut in range(tries):
        try:
            backend.write(changes)
        except SheetChanged as exc:
            time.sleep(min(exc.retry_after or 0.01, 2.0))
            continue
        return cut
    raise AssertionError(f"every one of {tries} writes was cut short")
