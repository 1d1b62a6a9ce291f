"""The REST API and the web page: a thin layer over the Appraiser, the store and the registry.

`appraiser serve` runs it under uvicorn; `create_app()` builds it (tests call it directly).
Every client mistake is a 4xx whose body says what to fix: `{"message": "...", "detail": ...}`.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appraiser import champion, jobs, registry, schema, store
from appraiser.config import MAX_BATCH, Settings, settings
from appraiser.predict import Appraiser, ChampionWatcher

logger = logging.getLogger("appraiser.api")
WEB = Path(__file__).resolve().parent / "web"
CURRENCY = "USD"
MAX_COMPARABLES = 50

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


# --- request and response models ----------------------------------------------------------------

# ids are 32 lowercase hex digits (store.new_uid): anything else cannot exist, and is refused
# before it reaches the database (PostgreSQL refuses some characters with an error of its own)
ID_PATTERN = r"^[0-9a-f]{32}$"
AppraisalId = Annotated[
    str, PathParam(pattern=ID_PATTERN, description="the id an appraisal was answered with")
]
JobId = Annotated[str, PathParam(pattern=ID_PATTERN, description="the id POST /v1/retrain gave")]


def _utc(moment: datetime) -> datetime:
    # SQLite returns naive datetimes; every time stored is UTC, and RFC 3339 wants the offset
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


Timestamp = Annotated[datetime, AfterValidator(_utc)]


class Comparable(BaseModel):
    """A stone of the collection like the one asked about."""

    carat: float
    cut: str
    color: str
    clarity: str
    depth: float
    table: float
    x: float
    y: float
    z: float
    price: float = Field(description="its appraised price, USD")
    carat_difference: float = Field(description="its carat minus the asked carat")


class AppraisalOut(BaseModel):
    """A price with its 90% range; with ?explain=true the dollars behind it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "3f2b8c1e9a7d4e0f8b6a5c4d3e2f1a0b",
                    "price": 4843.12,
                    "price_low": 4301.5,
                    "price_high": 5452.9,
                    "coverage": 0.9,
                    "currency": "USD",
                    "model_version": "3",
                    "warnings": [],
                }
            ]
        }
    )

    id: str = Field(description="keep it to fetch this appraisal or give the expert's price")
    price: float = Field(description="the appraised price")
    price_low: float = Field(description="low end of the range that holds the true price 90%")
    price_high: float = Field(description="high end of that range")
    coverage: float = Field(description="how often the range holds the true price (0.9 = 90%)")
    currency: str = CURRENCY
    model_version: str = Field(description="registry version of the model that priced it")
    warnings: list[str] = Field(description="why to treat this price with care, if anything")
    baseline: float | None = Field(
        default=None, description="the average stone's price (?explain=true)"
    )
    contributions: dict[str, float] | None = Field(
        default=None,
        description="dollars each characteristic adds to the baseline (?explain=true); "
        "baseline + contributions = price",
    )
    comparables: list[Comparable] | None = Field(
        default=None, description="similar stones of the collection (?comparables=N)"
    )


class BatchIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"diamonds": [schema.EXAMPLE_STONE]}]}
    )

    diamonds: list[schema.Diamond] = Field(description=f"1 to {MAX_BATCH:,} stones")


class BatchOut(BaseModel):
    appraisals: list[AppraisalOut] = Field(description="one per stone, in the order sent")


class StoredAppraisal(BaseModel):
    id: str
    created_at: Timestamp
    stone: dict[str, Any]
    price: float
    price_low: float | None
    price_high: float | None
    currency: str = CURRENCY
    model_version: str | None
    latency_ms: float | None = Field(description="time the server took to price it")
    warnings: list[str]
    feedback: list[dict[str, Any]] = Field(description="expert prices given for it, oldest first")


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"price": 5100}]})

    price: float = Field(
        description="the expert's price, USD",
        gt=schema.BOUNDS["price"].low,
        le=schema.BOUNDS["price"].high,
    )


class FeedbackOut(BaseModel):
    id: int
    appraisal_id: str
    price: float
    message: str


class SimilarOut(BaseModel):
    diamonds: list[Comparable]


class IngestOut(BaseModel):
    batch_id: int | None
    already_ingested: bool
    rows_read: int
    rows_accepted: int
    rows_rejected: int
    rejected_by_reason: dict[str, int]
    rejected_rows: list[dict[str, Any]] = Field(description="the first 100 rows refused, with why")
    held: bool = Field(
        default=False,
        description="true: the champion found these prices far from everything known; the batch "
        "waits for an admin (POST /v1/batches/{id}/release or /drop) and trains nothing until then",
    )
    screening: dict[str, Any] | None = Field(
        default=None, description="the champion's errors on the batch against the expected ones"
    )
    message: str


class ModelOut(BaseModel):
    version: str
    champion: bool
    created: Timestamp
    model: str
    description: str
    metrics: dict[str, float] = Field(description="on the holdout stones of its training run")


class ModelsOut(BaseModel):
    champion: str | None
    models: list[ModelOut]


class PromoteOut(BaseModel):
    champion: str
    message: str


class StoredBatchOut(BaseModel):
    id: int
    source: str
    file_name: str
    received_at: datetime
    rows_read: int
    rows_accepted: int
    rows_rejected: int
    status: str
    status_reason: str | None
    screening: dict[str, Any] | None


class BatchStatusOut(BaseModel):
    batch_id: int
    status: str
    previous: str


class RetrainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trials: int = Field(default=12, ge=1, le=200, description="Optuna trials per candidate")
    timeout: float = Field(default=120, ge=1, le=3600, description="seconds of tuning in all")


class JobOut(BaseModel):
    id: str
    kind: str
    status: Literal["queued", "running", "succeeded", "failed"]
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None


class JobStarted(BaseModel):
    job_id: str
    status_url: str
    message: str


class HealthOut(BaseModel):
    status: Literal["ok"]
    champion: str | None = Field(description="version served; null until a model is trained")
    model: str | None
    loaded_at: float | None
    reload_error: str | None


class ErrorOut(BaseModel):
    message: str = Field(description="what went wrong and what to do, in one sentence")
    detail: Any = Field(description="FastAPI's detail: the field-by-field list for a 422")


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 415, 422, 503)
}


# --- request-size limit (pure ASGI: cheap on the hot path) ---------------------------------------


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


# --- pricing concurrent requests together ---------------------------------------------------------


Pending = tuple[dict[str, Any], bool, int, "asyncio.Future[dict[str, Any]]"]


class MicroBatcher:
    """Prices single-stone requests that arrive together in one model call.

    A request joins a queue; one model call at a time runs in a worker thread and takes the
    whole queue. Alone, a request is priced at once (no waiting for company); under load the
    requests that arrived during a call share the next one, which spreads the boosters' fixed
    cost per call (a few hundred microseconds) over all of them. The answers are the same as
    pricing each stone alone.
    """

    def __init__(self, price: Callable[[list[dict[str, Any]], bool, int], list[dict[str, Any]]]):
        self._price = price
        self._queue: list[Pending] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None
        self._thread: ThreadPoolExecutor | None = None  # made when first needed (and again
        # after close: an app's lifespan may run more than once)

    async def price(self, stone: dict[str, Any], explain: bool, comparables: int) -> dict:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((stone, explain, comparables, future))
        if not self._running:
            self._running = True
            self._task = asyncio.get_running_loop().create_task(self._drain())  # keep a reference
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                if self._thread is None:
                    self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pricer")
                try:
                    answers = await loop.run_in_executor(self._thread, self._price_all, batch)
                except Exception as exc:  # e.g. no champion: every waiting request gets it
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (*_, future), answer in zip(batch, answers, strict=True):
                    if not future.done():  # the client may have gone
                        future.set_result(answer)
        finally:
            self._running = False

    def _price_all(self, batch: list[Pending]) -> list[dict[str, Any]]:
        """Price the batch, one model call per kind of request (explained or not...)."""
        answers: list[dict[str, Any] | None] = [None] * len(batch)
        kinds: dict[tuple[bool, int], list[int]] = {}
        for i, (_, explain, comparables, _) in enumerate(batch):
            kinds.setdefault((explain, comparables), []).append(i)
        for (explain, comparables), positions in kinds.items():
            priced = self._price([batch[i][0] for i in positions], explain, comparables)
            for i, answer in zip(positions, priced, strict=True):
                answers[i] = answer
        return [a for a in answers if a is not None]

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=False)
            self._thread = None


# --- errors ----------------------------------------------------------------------------------


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


# --- the app ---------------------------------------------------------------------------------

bearer = HTTPBearer(auto_error=False, description="APPRAISER_API_KEY, for admin endpoints")


def create_app(
    config: Settings | None = None, *, watcher: ChampionWatcher | None = None
) -> FastAPI:
    """The API and the web page. `watcher` defaults to one polling the registry every
    APPRAISER_RELOAD_SECONDS; appraisals are written to the store in the background."""
    cfg = config or settings()
    champions = watcher or ChampionWatcher(cfg.reload_seconds)
    writer_box: dict[str, store.AppraisalWriter] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(store.ready)
        writer_box["writer"] = store.AppraisalWriter()
        await run_in_threadpool(champions.start)
        yield
        champions.stop()
        batcher.close()
        writer_box["writer"].close()

    app = FastAPI(
        title="Diamond Appraiser",
        version="1",
        summary="Prices a diamond from its characteristics and says why.",
        description=(
            "Send a stone's carat, cut, color, clarity, depth, table and measurements; get its "
            "price in US dollars, a range that holds the true price 90% of the time, and, on "
            "request, the dollars each characteristic adds and comparable stones. "
            "Errors are JSON: `message` says what to fix. Admin endpoints need "
            "`Authorization: Bearer <APPRAISER_API_KEY>`. Guide: docs/api.md."
        ),
        lifespan=lifespan,
        responses={500: {"model": ErrorOut}},
    )
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
    app.add_middleware(LimitBodySize, limit=cfg.max_request_bytes)
    if cfg.cors_origin_list:  # outside the size limit, so a 413 reaches browsers with CORS headers
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cfg.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(TimeRequests)

    def appraiser() -> Appraiser:
        current = champions.current
        if current is None:
            raise HTTPException(
                503,
                "no model to price with yet: train one (`appraiser train`), the server picks "
                "it up within seconds",
            )
        return current

    def writer() -> store.AppraisalWriter:
        return writer_box["writer"]

    async def admin(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        key = cfg.api_key.get_secret_value() if cfg.api_key else ""
        if not key:
            raise HTTPException(
                403, "admin endpoints are disabled: start the server with APPRAISER_API_KEY set"
            )
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise HTTPException(
                401,
                "admin endpoint: send the header 'Authorization: Bearer <APPRAISER_API_KEY>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def price_and_store(
        stones: list[dict[str, Any]], explain: bool, comparables: int, endpoint: str = "single"
    ) -> list[dict[str, Any]]:
        start = time.perf_counter()
        current = appraiser()
        answers = current.appraise(stones, explain=explain, comparables=comparables)
        latency_ms = round((time.perf_counter() - start) * 1000 / max(len(stones), 1), 3)
        now = store.utcnow()
        uids = store.new_uids(len(stones))
        rows = []
        for stone, answer, uid in zip(stones, answers, uids, strict=True):
            row = store.appraisal_row(
                stone,
                answer["price"],
                price_low=answer["price_low"],
                price_high=answer["price_high"],
                model_version=current.version,
                latency_ms=latency_ms,
                warnings=answer["warnings"],
                created_at=now,
                uid=uid,
            )
            answer.update(
                id=row["uid"],
                coverage=current.model.coverage,
                currency=CURRENCY,
                model_version=current.version,
            )
            rows.append(row)
        writer().submit(rows)
        PRICED.labels(endpoint).inc(len(stones))
        return answers

    batcher = MicroBatcher(price_and_store)

    # --- appraisals ---

    @app.post(
        "/v1/appraisals",
        response_model=AppraisalOut,
        response_model_exclude_none=True,
        responses=ERRORS,
        tags=["appraisals"],
        summary="Price one stone",
    )
    async def appraise(
        diamond: schema.Diamond,
        explain: Annotated[
            bool, Query(description="add the dollars each characteristic adds")
        ] = False,
        comparables: Annotated[
            int, Query(ge=0, le=MAX_COMPARABLES, description="add this many similar stones")
        ] = 0,
    ) -> dict[str, Any]:
        """The price, its 90% range, the model version and any warnings. The appraisal is
        stored; its `id` fetches it later or carries the expert's price as feedback."""
        return await batcher.price(diamond.model_dump(), explain, comparables)

    @app.post(
        "/v1/appraisals/batch",
        response_model=BatchOut,
        response_model_exclude_none=True,
        responses=ERRORS,
        tags=["appraisals"],
        summary=f"Price up to {MAX_BATCH:,} stones",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["diamonds"],
                            "additionalProperties": False,
                            "properties": {
                                "diamonds": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Diamond"},
                                    "description": f"1 to {MAX_BATCH:,} stones",
                                }
                            },
                        },
                        "example": {"diamonds": [schema.EXAMPLE_STONE]},
                    }
                },
            }
        },
    )
    async def appraise_batch(request: Request) -> Response:
        """One appraisal per stone, in the order sent. A bad stone fails the whole request
        (422, its index in `detail[].loc`); over the limit is 413."""
        # parsed and validated straight from the bytes by pydantic (Rust): the body is read
        # here rather than declared, because FastAPI's generic path costs twice as much
        try:
            batch = BatchIn.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
            ) from exc
        if len(batch.diamonds) > MAX_BATCH:
            raise HTTPException(
                413, f"{len(batch.diamonds):,} stones: send at most {MAX_BATCH:,} per request"
            )
        if not batch.diamonds:
            raise HTTPException(422, "diamonds: send at least one stone")
        stones = [d.model_dump() for d in batch.diamonds]
        answers = await run_in_threadpool(price_and_store, stones, False, 0, "batch")
        # the answers are built to BatchOut's schema: written as JSON in one go (Rust), where
        # FastAPI's validation and encoding of 1,000 answers would cost more than pricing them
        return Response(to_json({"appraisals": answers}), media_type="application/json")

    @app.get(
        "/v1/appraisals/{appraisal_id}",
        response_model=StoredAppraisal,
        responses=ERRORS,
        tags=["appraisals"],
        summary="A stored appraisal",
    )
    async def get_appraisal(
        appraisal_id: AppraisalId,
    ) -> dict[str, Any]:
        """What was asked, what was answered, by which model, how fast, and any feedback."""
        found = await run_in_threadpool(_stored, writer(), appraisal_id)
        if found is None:
            raise HTTPException(404, f"no appraisal with id {appraisal_id}")
        return found

    @app.post(
        "/v1/appraisals/{appraisal_id}/feedback",
        response_model=FeedbackOut,
        status_code=201,
        responses=ERRORS,
        tags=["appraisals"],
        summary="Give the expert's price for an appraisal",
    )
    async def give_feedback(appraisal_id: AppraisalId, feedback: FeedbackIn) -> dict[str, Any]:
        """Kept in the store; the next retrain learns from it."""
        try:
            feedback_id = await run_in_threadpool(_feedback, writer(), appraisal_id, feedback.price)
        except KeyError as exc:
            raise HTTPException(404, f"no appraisal with id {appraisal_id}") from exc
        return {
            "id": feedback_id,
            "appraisal_id": appraisal_id,
            "price": feedback.price,
            "message": "kept: the next retrain learns from it",
        }

    # --- the collection ---

    @app.get(
        "/v1/diamonds/similar",
        response_model=SimilarOut,
        responses=ERRORS,
        tags=["diamonds"],
        summary="Stones of the collection like this one",
    )
    async def similar(
        carat: Annotated[float, Query(gt=0, le=schema.BOUNDS["carat"].high, examples=[1.1])],
        cut: Annotated[schema.Cut, Query(examples=["Ideal"])],
        color: Annotated[schema.Color, Query(examples=["H"])],
        clarity: Annotated[schema.Clarity, Query(examples=["SI2"])],
        n: Annotated[int, Query(ge=1, le=MAX_COMPARABLES)] = 5,
    ) -> dict[str, Any]:
        """The n stones with the same cut, color and clarity and the closest carat (fewer when
        the collection has fewer), with their prices."""
        stone = {"carat": carat, "cut": cut, "color": color, "clarity": clarity}
        found = appraiser().index.comparables(stone, n)
        return {"diamonds": found.to_dict(orient="records")}

    @app.post(
        "/v1/diamonds",
        response_model=IngestOut,
        responses=ERRORS,
        tags=["admin"],
        summary="Add appraised stones (JSON or a CSV upload)",
        dependencies=[Depends(admin)],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["diamonds"],
                            "properties": {
                                "diamonds": {
                                    "type": "array",
                                    "items": {"type": "object"},
                                    "description": "stones with their price (all columns)",
                                },
                                "source": {"type": "string", "maxLength": 200},
                            },
                        },
                        "example": {"diamonds": [{**schema.EXAMPLE_STONE, "price": 4900}]},
                    },
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {
                                "file": {"type": "string", "format": "binary"},
                                "source": {"type": "string", "maxLength": 200},
                            },
                        }
                    },
                },
            }
        },
    )
    async def add_diamonds(request: Request) -> dict[str, Any]:
        """Validated like every ingested file: bad rows are kept with their reasons (listed here
        and by `appraiser rejected`), good ones join the store for the next retrain. The same
        content sent twice is stored once."""
        content, source, name = await _ingest_payload(request)
        report = await run_in_threadpool(_ingest_bytes, content, source, name)
        return report

    # --- models and jobs ---

    @app.get("/v1/models", response_model=ModelsOut, tags=["models"], summary="Model versions")
    async def models() -> dict[str, Any]:
        """Every registered version, newest first, with its holdout metrics (MAPE in %...)."""
        found = await run_in_threadpool(registry.versions)
        return {
            "champion": next((v.version for v in found if v.champion), None),
            "models": [
                {
                    "version": v.version,
                    "champion": v.champion,
                    "created": v.created.to_pydatetime(),
                    "model": v.model,
                    "description": v.description,
                    "metrics": {k: float(m) for k, m in v.metrics.items()},
                }
                for v in found
            ],
        }

    @app.post(
        "/v1/models/{version}/promote",
        response_model=PromoteOut,
        responses=ERRORS,
        tags=["admin"],
        summary="Make a version the champion",
        dependencies=[Depends(admin)],
    )
    async def promote(
        version: Annotated[str, PathParam(pattern=r"^[0-9]{1,9}$")],
        expected: Annotated[
            str | None,
            Query(
                pattern=r"^[0-9]{1,9}$",
                description="promote only if this version is champion now (else 409)",
            ),
        ] = None,
    ) -> dict:
        """Every server serves it within seconds (this one at once); the previous champion can
        be restored with POST /v1/models/rollback."""
        version = str(int(version))  # "007" is version 7
        expect: object = champion.ANY if expected is None else str(int(expected))
        await run_in_threadpool(
            _move_champion, functools.partial(champion.promote, expected=expect), version
        )
        await run_in_threadpool(champions.check)
        return {"champion": version, "message": f"version {version} is now the champion"}

    @app.post(
        "/v1/models/rollback",
        response_model=PromoteOut,
        responses=ERRORS,
        tags=["admin"],
        summary="Give the champion back to the one the current champion replaced",
        dependencies=[Depends(admin)],
    )
    async def rollback() -> dict:
        """Walks the promotion history back one step (a rollback of a rollback does not return
        to the bad version). 409 while a retrain or pipeline pass runs."""
        version = await run_in_threadpool(_move_champion, champion.rollback, None)
        await run_in_threadpool(champions.check)
        return {"champion": version, "message": f"rolled back: version {version} is champion"}

    @app.get(
        "/v1/batches",
        response_model=list[StoredBatchOut],
        responses=ERRORS,
        tags=["admin"],
        summary="Ingested batches (held ones wait for review)",
        dependencies=[Depends(admin)],
    )
    async def list_batches(
        status: Annotated[
            Literal["accepted", "held", "dropped"] | None,
            Query(description="only batches with this status"),
        ] = None,
    ) -> list[dict[str, Any]]:
        """Newest first, with the champion's screening of each: held batches train nothing
        until released."""
        from appraiser import ingest

        return await run_in_threadpool(ingest.batches, status)

    @app.post(
        "/v1/batches/{batch_id}/{action}",
        response_model=BatchStatusOut,
        responses=ERRORS,
        tags=["admin"],
        summary="Release or drop a held batch",
        dependencies=[Depends(admin)],
    )
    async def set_batch(
        batch_id: Annotated[int, PathParam(ge=1, le=2**31 - 1)],
        action: Literal["release", "drop"],
    ) -> dict[str, Any]:
        """release: its stones train the next retrain; drop: kept, never used."""
        from appraiser import ingest

        status = "accepted" if action == "release" else "dropped"
        try:
            before = await run_in_threadpool(ingest.set_batch_status, batch_id, status)
        except KeyError as exc:
            raise HTTPException(404, f"no batch {batch_id}") from exc
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from exc
        return {"batch_id": batch_id, "status": status, "previous": before}

    @app.post(
        "/v1/retrain",
        response_model=JobStarted,
        status_code=202,
        responses=ERRORS,
        tags=["admin"],
        summary="Train a challenger on the store (in the background)",
        dependencies=[Depends(admin)],
    )
    async def retrain(request: Request, params: RetrainIn | None = None) -> dict[str, Any]:
        """Starts a retrain in its own process and answers at once with the job's id. The
        challenger replaces the champion only if the gate finds it measurably better."""
        try:
            job_id = await run_in_threadpool(
                jobs.start_retrain, (params or RetrainIn()).model_dump()
            )
        except jobs.JobConflict as exc:
            raise HTTPException(409, str(exc)) from exc
        return {
            "job_id": job_id,
            "status_url": f"/v1/jobs/{job_id}",
            "message": "retrain started: poll status_url until status is succeeded or failed",
        }

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=JobOut,
        responses=ERRORS,
        tags=["models"],
        summary="A background job's status",
    )
    async def job(job_id: JobId) -> dict[str, Any]:
        found = await run_in_threadpool(store.get_job, job_id)
        if found is None:
            raise HTTPException(404, f"no job with id {job_id}")
        return found

    # --- reference, health, metrics ---

    @app.get("/v1/schema", tags=["reference"], summary="The fields, grades and rules")
    async def describe_schema() -> dict[str, Any]:
        """What a stone is made of: grade orders (worst first), bounds, units, the depth rule,
        an example. The web page builds its form from it."""
        return {
            "grades": {k: list(v) for k, v in schema.GRADES.items()},
            "numeric": {
                c: {
                    "min": schema.BOUNDS[c].low,
                    "min_inclusive": schema.BOUNDS[c].low_inclusive,
                    "max": schema.BOUNDS[c].high,
                    "unit": schema.UNITS[c],
                }
                for c in schema.NUMERIC_FEATURES
            },
            "descriptions": {c: schema.DESCRIPTIONS[c] for c in schema.COLUMNS},
            "rules": [schema.DEPTH_RULE],
            "example": schema.example_stone(),
            "max_batch": MAX_BATCH,
            "currency": CURRENCY,
        }

    @app.get("/health", response_model=HealthOut, tags=["reference"], summary="Liveness")
    async def health() -> dict[str, Any]:
        """200 while the process runs; `champion` is the version it serves (null: none yet)."""
        current = champions.current
        return {
            "status": "ok",
            "champion": current.version if current else None,
            "model": current.model.name if current else None,
            "loaded_at": current.loaded_at if current else None,
            "reload_error": champions.last_error,
        }

    @app.get(
        "/ready",
        response_model=HealthOut,
        responses={503: {"model": ErrorOut}},
        tags=["reference"],
        summary="Readiness: a model is loaded",
    )
    async def ready() -> dict[str, Any]:
        """200 once a champion is loaded and appraisals can be served, 503 before: for load
        balancers and start-up probes (`/health` is liveness only)."""
        if champions.current is None:
            raise HTTPException(503, "no model loaded yet: train one (`appraiser train`)")
        return await health()

    CHAMPION.set_function(lambda: float(champions.current.version) if champions.current else 0)
    LOADS.set_function(lambda: champions.reloads)
    WRITTEN.set_function(lambda: writer_box["writer"].written if writer_box else 0)
    WRITE_FAILURES.set_function(lambda: writer_box["writer"].failures if writer_box else 0)
    REFUSED.set_function(lambda: writer_box["writer"].refused if writer_box else 0)
    DROPPED.set_function(lambda: writer_box["writer"].dropped if writer_box else 0)
    QUEUED.set_function(lambda: writer_box["writer"].queued if writer_box else 0)

    @app.get(
        "/metrics",
        tags=["reference"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        """Request latency by route and status, stones priced, the model served, store writes."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # --- the web page ---

    if WEB.is_dir():
        app.mount("/static", StaticFiles(directory=WEB), name="static")

        @app.get("/", include_in_schema=False)
        async def page() -> FileResponse:
            return FileResponse(WEB / "index.html")

        @app.get("/admin", include_in_schema=False)
        async def admin_page() -> FileResponse:
            return FileResponse(WEB / "admin.html")

    return app


# --- service calls made off the event loop ------------------------------------------------------


def _stored(writer: store.AppraisalWriter, uid: str) -> dict[str, Any] | None:
    writer.flush()  # an appraisal served a moment ago may still be queued
    found = store.get_appraisal(uid)
    if found is None:  # or queued in another worker process, written within one interval
        time.sleep(writer.interval * 1.5)
        found = store.get_appraisal(uid)
    return found


def _feedback(writer: store.AppraisalWriter, uid: str, price: float) -> int:
    writer.flush()
    try:
        return store.add_feedback(uid, price)
    except KeyError:  # perhaps still queued in another worker process
        time.sleep(writer.interval * 1.5)
        return store.add_feedback(uid, price)


async def _ingest_payload(request: Request) -> tuple[bytes, str, str]:
    """The CSV bytes to ingest, their source and a name for them (the uploaded file's name)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(422, "file: attach the CSV as the form field 'file'")
        source = _printable(str(form.get("source") or "upload"))
        return await upload.read(), source, _printable(upload.filename or "upload.csv")
    if kind == "application/json":
        try:
            body = await request.json()
        except ValueError as exc:
            raise HTTPException(422, f"body: not valid JSON ({exc})") from exc
        stones = body.get("diamonds") if isinstance(body, dict) else None
        if not isinstance(stones, list) or not all(isinstance(s, dict) for s in stones):
            raise HTTPException(422, 'diamonds: send {"diamonds": [{...stone with price...}, ...]}')
        if not stones:
            raise HTTPException(422, "diamonds: send at least one stone")
        import pandas as pd

        frame = pd.DataFrame(stones)
        source = _printable(str(body.get("source") or "api"))
        return frame.to_csv(index=False).encode(), source, "JSON request"
    raise HTTPException(
        415, "send application/json ({'diamonds': [...]}) or multipart/form-data with a CSV 'file'"
    )


def _printable(text: str, limit: int = 200) -> str:
    """A client's label as stored: printable characters only (no NUL, which PostgreSQL refuses)."""
    return "".join(c for c in text if c.isprintable())[:limit] or "api"


def _move_champion(move: Any, version: str | None) -> str:
    """A champion move for the API: 409 while the pipeline is busy or the champion moved, 404 for
    an unknown version or nothing to roll back to, 503 when the registry cannot be read."""
    from appraiser import champion
    from appraiser.locking import PipelineBusy

    try:
        if version is None:
            return str(move(actor="api"))
        move(version, actor="api")
        return version
    except (PipelineBusy, champion.ChampionChanged) as exc:
        raise HTTPException(409, str(exc)) from exc
    except registry.RegistryUnavailable as exc:
        raise HTTPException(503, "the model registry cannot be read; try again later") from exc
    except registry.RegistryError as exc:
        raise HTTPException(404, str(exc)) from exc


def _ingest_bytes(content: bytes, source: str, name: str) -> dict[str, Any]:
    from appraiser import data, ingest

    with tempfile.TemporaryDirectory(prefix="appraiser-upload-") as folder:
        path = Path(folder) / "upload.csv"
        path.write_bytes(content)
        try:
            report = ingest.ingest_file(path, source=source, name=name[:200])
        except data.DataError as exc:
            raise HTTPException(422, str(exc).replace(str(path), "the upload")) from exc
    rejected = []
    if report.rows_rejected and report.batch_id is not None:
        rows = ingest.rejected(report.batch_id).head(100)
        rejected = json.loads(rows.to_json(orient="records", date_format="iso"))
    return {
        "batch_id": report.batch_id,
        "already_ingested": report.already_ingested,
        "rows_read": report.rows_read,
        "rows_accepted": report.rows_accepted,
        "rows_rejected": report.rows_rejected,
        "rejected_by_reason": dict(report.reasons),
        "rejected_rows": rejected,
        "held": report.held,
        "screening": report.screening.to_dict() if report.screening else None,
        "message": report.summary(),
    }
