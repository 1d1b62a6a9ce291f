"""Pure ASGI middleware (cheap on the hot path) and the Prometheus metrics they and the app keep."""

from __future__ import annotations

import os
import time

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# --- metrics (Prometheus); one registry per process ---------------------------------------------

REQUESTS = Histogram(
    "appraiser_request_seconds",
    "time to answer a request, by route and status",
    ["method", "route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
PRICED = Counter("appraiser_stones_priced_total", "stones priced", ["endpoint"])
# read from the live objects when scraped (set_function in create_app)
CHAMPION = Gauge("appraiser_champion_version", "registry version of the model being served")
LOADS = Gauge("appraiser_model_loads", "champions loaded by this process (1 + hot reloads)")
WRITTEN = Gauge("appraiser_appraisals_written", "appraisals this process wrote to the store")
WRITE_FAILURES = Gauge("appraiser_store_write_failures", "failed appraisal writes (retried)")
REFUSED = Gauge("appraiser_appraisals_refused", "appraisals the store refused (logged, dropped)")
DROPPED = Gauge("appraiser_appraisals_dropped", "appraisals dropped: too many waited for the store")
QUEUED = Gauge("appraiser_appraisals_queued", "appraisals waiting to be written")

_aggregated: CollectorRegistry | None = None


def metrics_registry() -> CollectorRegistry:
    """The registry `/metrics` reads: in multiprocess mode (PROMETHEUS_MULTIPROC_DIR set, as
    `appraiser serve` does) one that sums every worker's figures; else this process's own."""
    global _aggregated
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    if _aggregated is None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        _aggregated = registry
    return _aggregated


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


class TimeRequests:
    """Prometheus request histogram by route template (not raw path: ids would explode it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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
