"""Errors as clients see them: JSON whose `message` says what to fix; no 500 for their mistakes."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from appraiser import schema
from appraiser.api.batching import Overloaded

logger = logging.getLogger("appraiser.api")


def _located(error: dict[str, Any]) -> dict[str, Any]:
    """Point an error at the field a client should fix: malformed JSON at the body (FastAPI puts
    it at a bare position), the depth rule (checked on the whole stone) at `depth`."""
    if error.get("type") in ("json_invalid", "json_type"):
        reason = error.get("ctx", {}).get("error", error.get("msg"))
        return {**error, "loc": ("body",), "msg": f"not valid JSON ({reason})"}
    if schema.DEPTH_RULE in str(error.get("msg", "")):
        return {**error, "loc": (*error.get("loc", ("body",)), "depth")}
    return error


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_located(e) for e in exc.errors()]
    # pydantic's entries may hold the raw input and exception objects: keep what serializes
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in errors
    ]
    return JSONResponse({"message": schema.error_message(errors), "detail": detail}, 422)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail: Any = exc.detail
    if exc.status_code == 422 and isinstance(detail, str):  # a 422's detail is always a list
        field = detail.split(":")[0] if ":" in detail else "body"
        detail = [{"loc": ["body", field], "msg": detail, "type": "value_error"}]
    body = {"message": str(exc.detail), "detail": detail}
    return JSONResponse(body, exc.status_code, headers=getattr(exc, "headers", None))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    text = "internal error: the server could not answer; it has been logged"
    return JSONResponse({"message": text, "detail": text}, 500)


async def _on_overloaded(request: Request, exc: Exception) -> JSONResponse:
    text = f"the server is busy ({exc}): retry in a second"
    return JSONResponse({"message": text, "detail": text}, 503, headers={"Retry-After": "1"})


async def _on_disconnect(request: Request, exc: Exception) -> JSONResponse:
    # the client left before its body arrived: nobody reads this answer, but a 4xx keeps it out
    # of the server-error rate (and its alert) and out of the error log
    text = "the client closed the connection before sending its whole body"
    return JSONResponse({"message": text, "detail": text}, 400)


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Overloaded, _on_overloaded)
    app.add_exception_handler(ClientDisconnect, _on_disconnect)
    app.add_exception_handler(Exception, _on_unexpected)
