"""Keep the garbage collector's pauses short in long-running processes.

CPython's full collection walks every object that has survived two earlier
ones, and while it runs no other thread of the process runs. After startup
that is mostly what startup built (modules, routes, mappers, schemas: about
150,000 objects, 70 ms a walk here), and it lives as long as the process. A
pause that lands while a thread holds the SQLite writer turn stalls the
writers of every process, so under load it became the slowest requests:
80 to 115 ms for an enqueue whose own work takes a millisecond.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram

GC_PAUSE_SECONDS = Histogram(
    "sheetbridge_gc_pause_seconds",
    "How long each garbage collection stopped this process, by generation.",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)

_started_at = 0.0


def _measure(phase: str, info: dict[str, Any]) -> None:
    # Collections never overlap: the collecting thread holds the GIL throughout.
    global _started_at
    if phase == "start":
        _started_at = time.perf_counter()
    else:
        seconds = time.perf_counter() - _started_at
        GC_PAUSE_SECONDS.labels(str(info["generation"])).observe(seconds)


def settle_after_startup() -> int:
    """Exempt everything alive now from future collections and measure the
    pauses from here on; returns how many objects were set aside.

    Call once, when the process has built what it serves with and before it
    takes work. Objects set aside are still freed when nothing refers to them;
    only reference cycles among them would stay, and startup's objects are
    meant to stay anyway.
    """
    gc.collect()
    gc.freeze()
    if _measure not in gc.callbacks:
        gc.callbacks.append(_measure)
    return gc.get_freeze_count()
