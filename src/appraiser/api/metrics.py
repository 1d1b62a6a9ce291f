"""The Prometheus metrics the middleware and the app keep, and their sync across workers.

Metrics and `--workers N`: `appraiser serve` points PROMETHEUS_MULTIPROC_DIR at a fresh folder
before any worker starts, so every worker keeps its figures in files there and `/metrics` sums
them all (`metrics_registry`), whichever worker answers the scrape. Without that variable (tests,
an app served some other way) each process reports its own figures.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SYNC_SECONDS = 1.0  # how often a worker copies its live figures into its metric files

REQUESTS = Histogram(
    "appraiser_request_seconds",
    "time to answer a request, by route and status",
    ["method", "route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
PRICED = Counter("appraiser_stones_priced_total", "stones priced", ["endpoint"])


class Live:
    """A figure read from a live object (`set_function(f)`, as on a Gauge): the app's writer and
    champion watcher keep their own counts. The figure is copied into `metric` when `/metrics` is
    scraped and, in multiprocess mode, by each worker every SYNC_SECONDS (a worker's figures reach
    another worker's scrape only through its files). A Counter grows by the figure's increase; a
    smaller figure means a new source (a new app in this process), counted from there."""

    def __init__(self, metric: Counter | Gauge) -> None:
        self.metric = metric
        self.read: Callable[[], float] | None = None
        self.last = 0.0

    def set_function(self, read: Callable[[], float]) -> None:
        with _SYNC_LOCK:
            self.read, self.last = read, 0.0
        if os.environ.get(MULTIPROC_ENV):
            _start_syncing()

    def sync(self) -> None:
        if self.read is None:
            return
        value = float(self.read())
        if isinstance(self.metric, Counter):
            if value > self.last:
                self.metric.inc(value - self.last)
            self.last = value
        else:
            self.metric.set(value)


# the champion and the queue are read from live objects too; counts become `_total` counters
CHAMPION = Live(
    Gauge(
        "appraiser_champion_version",
        "registry version of the model being served (workers: the highest; they agree within "
        "APPRAISER_RELOAD_SECONDS)",
        multiprocess_mode="livemax",
    )
)
LOADS = Live(Counter("appraiser_model_loads", "champions loaded (first load and hot reloads)"))
WRITTEN = Live(Counter("appraiser_appraisals_written", "appraisals written to the store"))
WRITE_FAILURES = Live(
    Counter("appraiser_store_write_failures", "failed appraisal writes (the rows are retried)")
)
REFUSED = Live(
    Counter("appraiser_appraisals_refused", "appraisals the store refused (logged, dropped)")
)
DROPPED = Live(
    Counter("appraiser_appraisals_dropped", "appraisals dropped: too many waited for the store")
)
QUEUED = Live(
    Gauge(
        "appraiser_appraisals_queued",
        "appraisals waiting to be written",
        multiprocess_mode="livesum",
    )
)
LIVE = (CHAMPION, LOADS, WRITTEN, WRITE_FAILURES, REFUSED, DROPPED, QUEUED)

# the newest labelled batch's screening (store table `evaluations`, kind=batch), read by
# `/metrics` from the store (see operations.py); NaN until a batch has been screened
BATCH_COVERAGE = Gauge(
    "appraiser_batch_range_coverage_percent",
    "share of the newest labelled batch's true prices inside the champion's 90% range (%)",
    multiprocess_mode="livemostrecent",
)
BATCH_DRIFTED = Gauge(
    "appraiser_batch_drifted_features",
    "features of the newest labelled batch that drift from the champion's training stones",
    multiprocess_mode="livemostrecent",
)
BATCH_STONES = Gauge(
    "appraiser_batch_stones",
    "stones in the newest labelled batch (coverage and drift above are measured on them)",
    multiprocess_mode="livemostrecent",
)
BATCH_ID = Gauge(
    "appraiser_batch_id",
    "store id of the newest labelled batch (the figures above are its)",
    multiprocess_mode="livemostrecent",
)
if not os.environ.get(MULTIPROC_ENV):  # workers set theirs when first scraped (operations.py)
    for _gauge in (BATCH_COVERAGE, BATCH_DRIFTED, BATCH_STONES, BATCH_ID):
        _gauge.set(float("nan"))

_SYNC_LOCK = threading.Lock()
_syncing = False
_aggregated: CollectorRegistry | None = None


def sync_live() -> None:
    """Copy the live figures into their metrics (before a scrape; a worker's thread, every
    SYNC_SECONDS, in multiprocess mode)."""
    with _SYNC_LOCK:
        for live in LIVE:
            live.sync()


def metrics_registry() -> CollectorRegistry:
    """The registry `/metrics` reads: in multiprocess mode (PROMETHEUS_MULTIPROC_DIR set, as
    `appraiser serve` does) one that sums every worker's figures; else this process's own."""
    global _aggregated
    if not os.environ.get(MULTIPROC_ENV):
        return REGISTRY
    if _aggregated is None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        _aggregated = registry
    return _aggregated


def _start_syncing() -> None:
    """Once per worker: a thread keeps this worker's live figures in its files, and its gauges
    leave the sums when it exits (or, if it was killed, when another worker sees it gone)."""
    global _syncing
    with _SYNC_LOCK:
        if _syncing:
            return
        _syncing = True
    import atexit

    atexit.register(_mark_dead, os.getpid())
    threading.Thread(target=_sync_forever, name="metrics-sync", daemon=True).start()


def _sync_forever() -> None:
    rounds = 0
    while True:
        time.sleep(SYNC_SECONDS)
        try:
            sync_live()
            rounds += 1
            if rounds % 10 == 0:
                _forget_dead_workers()
        except Exception:  # never let the thread die: the next round tries again
            logging.getLogger("appraiser.api").exception("could not update the metrics")


def _mark_dead(pid: int) -> None:
    with contextlib.suppress(OSError):  # another worker removed the files first
        multiprocess.mark_process_dead(pid)


_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db")


def _forget_dead_workers() -> None:
    """A worker killed without its exit handlers (SIGKILL, out of memory) leaves its gauges in
    the folder; uvicorn starts a new one without telling anyone. Its files are removed here."""
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder:
        return
    for name in os.listdir(folder):
        found = _GAUGE_FILE.fullmatch(name)
        if found is None:
            continue
        pid = int(found.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _mark_dead(pid)
        except PermissionError:  # alive, another user's
            pass
