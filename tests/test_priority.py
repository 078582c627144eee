"""A niced worker thread holds database transactions at the web's priority."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from sqlalchemy import text

from sheetbridge import priority
from sheetbridge.db import Database

T = TypeVar("T")


@pytest.fixture(autouse=True)
def _forget_after() -> Iterator[None]:
    yield
    priority.forget()


def _own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def in_own_thread(work: Callable[[], T]) -> T:
    """Run ``work`` in a thread of its own: lowering a thread's priority can't
    always be undone, so the test runner's threads are left alone."""
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(work())
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


def test_a_lowered_thread_runs_at_its_old_priority_only_while_it_holds_a_transaction(
    db: Database,
) -> None:
    def work() -> tuple[int, bool, list[int], int]:
        before = _own_nice()
        allowed = priority.lower(5)
        seen = []
        with db.session() as session:
            session.execute(text("SELECT 1"))
            seen.append(_own_nice())
            with priority.holding():  # nested: no change, none on leaving
                seen.append(_own_nice())
        with db.transaction() as connection:
            connection.execute(text("SELECT 1"))
            seen.append(_own_nice())
        return before, allowed, seen, _own_nice()

    before, allowed, seen, after = in_own_thread(work)

    assert after == min(before + 5, 19)
    if allowed:
        assert seen == [before, before, before]
    else:  # without CAP_SYS_NICE or a RLIMIT_NICE that allows it
        assert seen == [after, after, after]


def test_threads_a_lowered_thread_starts_hold_transactions_at_the_old_priority(
    db: Database,
) -> None:
    def work() -> tuple[int, bool, list[int]]:
        before = _own_nice()
        allowed = priority.lower(3)
        return before, allowed, in_own_thread(lambda: seen_in_transaction(db))

    before, allowed, (inside, outside) = in_own_thread(work)

    assert outside == min(before + 3, 19)
    assert inside == (before if allowed else outside)


def seen_in_transaction(db: Database) -> list[int]:
    with db.transaction() as connection:
        connection.execute(text("SELECT 1"))
        inside = _own_nice()
    return [inside, _own_nice()]


def test_a_thread_never_lowered_is_left_at_its_priority(db: Database) -> None:
    before = _own_nice()

    with db.session() as session:
        session.execute(text("SELECT 1"))
        inside = _own_nice()

    assert inside == before == _own_nice()
