"""Prometheus metrics of the job queue.

Counters and histograms count the transitions that happen in this process.
The jobs-by-state gauge is read from the database at scrape time, so any
process (a web process, a worker) reports the same queue-wide figures.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sheetbridge.queue.store import JobQueue

log = logging.getLogger(__name__)

_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

JOB_WAIT_SECONDS = Histogram(
    "sheetbridge_job_wait_seconds",
    "Time from a job becoming due (enqueue or retry time) to its start.",
    ["kind"],
    buckets=_SECONDS,
)
JOB_RUN_SECONDS = Histogram(
    "sheetbridge_job_run_seconds",
    "Time from a job's start to its end, per attempt.",
    ["kind", "outcome"],
    buckets=_SECONDS,
)
JOB_RETRIES = Counter(
    "sheetbridge_job_retries_total", "Attempts scheduled for a retry.", ["kind"]
)
LEASE_TAKEOVERS = Counter(
    "sheetbridge_job_lease_takeovers_total",
    "Running jobs taken back because their worker stopped renewing the lease.",
    ["kind"],
)
JOB_TRANSITIONS = Counter(
    "sheetbridge_job_transitions_total", "Job transitions, by event.", ["event"]
)


class JobStateCollector(Collector):
    """``sheetbridge_jobs{state}``: queued and running jobs, read at scrape time."""

    def __init__(self) -> None:
        self._queues: weakref.WeakSet[JobQueue] = weakref.WeakSet()

    def track(self, queue: JobQueue) -> None:
        self._queues.add(queue)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "sheetbridge_jobs", "Queued and running jobs.", labels=["state"]
        )
        totals: dict[str, int] = {}
        # Several queue objects may share one database; count each once.
        seen: set[str] = set()
        for queue in list(self._queues):
            if queue.db.url in seen:
                continue
            seen.add(queue.db.url)
            try:
                counts = queue.counts_by_state()
            except Exception:
                log.warning("metrics.count_failed", extra={"action": "metrics"})
                continue
            for state, count in counts.items():
                totals[state] = totals.get(state, 0) + count
        for state, count in sorted(totals.items()):
            family.add_metric([state], count)
        yield family


STATE_COLLECTOR = JobStateCollector()
REGISTRY.register(STATE_COLLECTOR)
