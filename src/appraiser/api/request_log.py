"""The JSON request log (APPRAISER_LOG_FORMAT=json): one Cloud Logging line per request.

Apart from the metrics: `appraiser serve` configures its logging with it, and that needs no
Prometheus.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.types import Scope

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


_REQUEST_ID = re.compile(r"[\w.:/+=-]{1,128}")


def request_id(scope: Scope) -> str:
    """The caller's X-Request-ID when it is a sane token, else a new random one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if _REQUEST_ID.fullmatch(given):
                return given
    return uuid.uuid4().hex


def log_request(scope: Scope, request_id: str, route: str, status: int, elapsed: float) -> None:
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
