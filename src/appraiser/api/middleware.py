"""Pure ASGI middleware, cheap on the hot path: the metrics port, the request-size limit, request
timing (metrics and the JSON request log) and the browser hardening headers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fastapi import HTTPException
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appraiser.api import request_log
from appraiser.api.metrics import REQUESTS
from appraiser.config import settings


class BodyTooLarge(Exception):
    pass


class MetricsPort:
    """GET /metrics only on connections to the metrics port (APPRAISER_METRICS_PORT, a listener
    `appraiser serve` opens beside the API's), where nothing else is served; the API's port
    answers /metrics with 404. Anonymous callers of the API learn nothing from the figures, and
    the scraper needs no key (the Cloud Run collector cannot send one)."""

    def __init__(self, app: ASGIApp, port: int | None, scrape: Callable[[], bytes]) -> None:
        self.app = app
        self.port = port
        self.scrape = scrape

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        server = scope.get("server")
        if self.port is not None and server is not None and server[1] == self.port:
            if scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
                body = await run_in_threadpool(self.scrape)
                answer: Response = Response(body, media_type=CONTENT_TYPE_LATEST)
            else:
                answer = _message(404, "only GET /metrics is served on the metrics port")
            await answer(scope, receive, send)
        elif scope["path"] == "/metrics":
            await _message(
                404, "metrics are served on their own port (APPRAISER_METRICS_PORT), not here"
            )(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _message(status: int, text: str) -> JSONResponse:
    return JSONResponse({"message": text, "detail": text}, status_code=status)


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
    await _message(413, text)({"type": "http"}, _no_receive, send)


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
        request_id = request_log.request_id(scope)

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
            if request_log.ACCESS.isEnabledFor(logging.INFO):
                request_log.log_request(scope, request_id, path, status, elapsed)


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
