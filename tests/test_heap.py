"""What a long-running process builds at startup stays out of the garbage
collector's way, and every collection's pause is measured."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from sheetbridge.heap import settle_after_startup


@pytest.fixture
def settled() -> Iterator[int]:
    try:
        yield settle_after_startup()
    finally:
        gc.unfreeze()


def _pauses(generation: int) -> float:
    value = REGISTRY.get_sample_value(
        "sheetbridge_gc_pause_seconds_count", {"generation": str(generation)}
    )
    return value or 0.0


def test_startup_objects_are_no_longer_walked_by_full_collections(
    settled: int,
) -> None:
    assert settled > 10_000
    startup = [{"kept": n} for n in range(50_000)]  # alive when the process settles
    gc.unfreeze()
    settle_after_startup()
    started = time.perf_counter()
    gc.collect()
    settled_s = time.perf_counter() - started
    gc.unfreeze()
    started = time.perf_counter()
    gc.collect()
    walked_s = time.perf_counter() - started
    assert len(startup) == 50_000
    assert settled_s < walked_s


def test_every_collection_pause_is_measured_by_generation(settled: int) -> None:
    before = [_pauses(generation) for generation in (0, 1, 2)]
    gc.collect(0)
    gc.collect(2)
    # Other threads of the test run may trigger collections of their own.
    assert _pauses(0) >= before[0] + 1
    assert _pauses(2) >= before[2] + 1


def test_settling_twice_measures_each_pause_once(settled: int) -> None:
    settle_after_startup()
    before = _pauses(1)
    gc.disable()  # no automatic collection in between
    try:
        gc.collect(1)
    finally:
        gc.enable()
    assert _pauses(1) == before + 1
