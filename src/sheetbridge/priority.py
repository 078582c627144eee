"""CPU priority of a worker process beside a web server.

A worker process runs below the web's priority, so a click is answered before
sync work goes on. But its threads also hold database transactions that web
requests wait for (SQLite's write turn, a queue's row and key locks); a
holder left waiting for a core makes every such request wait with it. So
while a thread holds a transaction it runs at the web's priority again.

Linux keeps a nice value per thread, and any thread may lower its own
priority; raising it back needs CAP_SYS_NICE or an RLIMIT_NICE that allows it
(``ulimit -e``, systemd's ``LimitNICE=``). Where neither is granted, holders
stay at the lower priority, as they did before.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

_lock = threading.Lock()
# The nice value a thread holding a transaction runs at; None: leave it be.
_holder_nice: int | None = None


def lower(by: int) -> bool:
    """Lower the calling thread's CPU priority (and that of the threads it
    starts from now on) by ``by``, keeping the current one for holders of a
    transaction where that is allowed. Returns whether it is."""
    global _holder_nice
    tid = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, tid)
    os.nice(by)
    if by <= 0:
        return False
    after = os.getpriority(os.PRIO_PROCESS, tid)
    try:
        os.setpriority(os.PRIO_PROCESS, tid, before)
    except PermissionError:
        log.info(
            "priority.holders_stay_low",
            extra={
                "reason": "raising a thread's priority is not permitted "
                "(CAP_SYS_NICE or RLIMIT_NICE)"
            },
        )
        return False
    os.setpriority(os.PRIO_PROCESS, tid, after)
    with _lock:
        _holder_nice = before
    return True


def forget() -> None:
    """Stop raising holders' priority (tests; a process that calls lower() again)."""
    global _holder_nice
    with _lock:
        _holder_nice = None


@contextmanager
def holding() -> Iterator[None]:
    """Run the calling thread at the priority lower() kept while it holds a
    transaction; nothing to do in a process that never lowered its own."""
    target = _holder_nice
    if target is None:
        yield
        return
    tid = threading.get_native_id()
    lowered = os.getpriority(os.PRIO_PROCESS, tid)
    if lowered <= target:  # not lowered, or a nested transaction
        yield
        return
    try:
        os.setpriority(os.PRIO_PROCESS, tid, target)
    except PermissionError:
        forget()
        yield
        return
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, tid, lowered)
