"""Pure ASGI middleware (cheap on the hot path), the Prometheus metrics they and the app keep, and
the JSON request log (APPRAISER_LOG_FORMAT=json).

Metrics and `--workers N`: `appraiser serve` points PROMETHEUS_MULTIPROC_DIR at a fresh folder
before any worker starts, so every worker keeps its figures in files there and `/metrics` sums
them all (`metrics_registry`), whichever worker answers the scrape. Without that variable (tests,
an app served some other way) each process reports its own figures, as before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appraiser.config import settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SYNC_SECONDS = 1.0  # how often a worker copies its live figures into its metric files

# --- metrics (Prometheus) ------------------------------------------------------------------------

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


# --- the JSON log (APPRAISER_LOG_FORMAT=json) ----------------------------------------------------

ACCESS = logging.getLogger("appraiser.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, in the shape Google Cloud Logging reads from a container's
    output: `severity`, `message`, `time`, an `httpRequest` object, any other key kept as is
    (`fields` given in `extra`)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        if record.exc_info:  # in the message, where Error Reporting looks for a stack trace
            entry["message"] += "\n" + self.formatException(record.exc_info)
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        return json.dumps(entry, default=str)


def json_log_config(access_log: bool = True) -> dict[str, Any]:
    """A `logging.config.dictConfig` (uvicorn's `log_config`) writing every log as JSON lines on
    stdout: uvicorn's and the app's. The request lines come from TimeRequests (they name the
    route and the model), so uvicorn's own access log is off; `access_log=False` silences ours."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            ACCESS.name: {"level": "INFO" if access_log else "WARNING"},
        },
        "root": {"handlers": ["stdout"], "level": "INFO"},
    }


# --- request-size limit and request timing ---------------------------------------------------


class BodyTooLarge(Exception):
    pass


class LimitBodySize:
    """Refuses request bodies over `limit` bytes with 413, by Content-Length or while reading."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _too_large(self.limit, send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"the request body is over {self.limit:,} bytes")
            return message

        await self.app(scope, counted, send)


async def _too_large(limit: int, send: Send) -> None:
    text = f"the request body is over {limit:,} bytes; send fewer stones per request"
    await JSONResponse({"message": text, "detail": text}, status_code=413)(
        {"type": "http"}, _no_receive, send
    )


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class InFlight:
    """HTTP requests an app is handling now (counted by TimeRequests in the event loop)."""

    def __init__(self) -> None:
        self.count = 0


class TimeRequests:
    """Prometheus request histogram by route template (not raw path: ids would explode it); with
    APPRAISER_LOG_FORMAT=json also one JSON log line per request, with its id (the caller's
    X-Request-ID, else a new one, sent back in X-Request-ID), route, status, latency and the
    model version served when it ended. It also counts the requests in flight (the pricer
    prices a lone one without a thread hop: batching.MicroBatcher)."""

    def __init__(self, app: ASGIApp, in_flight: InFlight | None = None) -> None:
        self.app = app
        self.json_log = settings().log_format == "json"
        self.in_flight = in_flight or InFlight()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.in_flight.count += 1
        try:
            if self.json_log:
                await self._logged(scope, receive, send)
            else:
                await self._timed(scope, receive, send)
        finally:
            self.in_flight.count -= 1

    async def _timed(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(scope["method"], path, str(status)).observe(time.perf_counter() - start)

    async def _logged(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        status = 500
        request_id = _request_id(scope)

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(scope["method"], path, str(status)).observe(elapsed)
            if ACCESS.isEnabledFor(logging.INFO):
                _log_request(scope, request_id, path, status, elapsed)


_REQUEST_ID = re.compile(r"[\w.:/+=-]{1,128}")


def _request_id(scope: Scope) -> str:
    """The caller's X-Request-ID when it is a sane token, else a new random one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if _REQUEST_ID.fullmatch(given):
                return given
    return uuid.uuid4().hex


def _log_request(scope: Scope, request_id: str, route: str, status: int, elapsed: float) -> None:
    ctx = getattr(getattr(scope.get("app"), "state", None), "ctx", None)
    current = getattr(getattr(ctx, "champions", None), "current", None)
    headers = dict(scope["headers"])
    client = scope.get("client")
    url = scope.get("path", "")
    if scope.get("query_string"):
        url += "?" + scope["query_string"].decode("latin-1")
    latency_ms = round(elapsed * 1000, 3)
    ACCESS.log(
        logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO,
        "%s %s %d %.1f ms",
        scope["method"],
        url,
        status,
        latency_ms,
        extra={
            "fields": {
                "request_id": request_id,
                "method": scope["method"],
                "route": route,
                "status": status,
                "latency_ms": latency_ms,
                "model_version": getattr(current, "version", None),
                "httpRequest": {
                    "requestMethod": scope["method"],
                    "requestUrl": url,
                    "status": status,
                    "latency": f"{elapsed:.6f}s",
                    "remoteIp": client[0] if client else None,
                    "userAgent": headers.get(b"user-agent", b"").decode("latin-1"),
                    "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
                },
                "logging.googleapis.com/labels": {"request_id": request_id},
            }
        },
    )


# Pages and docs load only what this server serves: no other origin, no inline script, no frames.
# Styles may be inline (Swagger UI sets some), nothing else may.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
]


class SecurityHeaders:
    """Adds the browser hardening headers to every response (JSON included: harmless there)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)
