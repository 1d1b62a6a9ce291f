"""Appraisals: price one stone or a batch, read a stored appraisal, send the expert's price."""

from __future__ import annotations

import asyncio
import time
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool

from appraiser import clock, feedback, schema, store
from appraiser.api import batch_input, deps
from appraiser.api.batching import Overloaded
from appraiser.api.metrics import PRICED
from appraiser.api.schemas import (
    CURRENCY,
    ERRORS,
    MAX_COMPARABLES,
    AppraisalId,
    AppraisalOut,
    AsOf,
    BatchIn,
    BatchOut,
    DiamondIn,
    FeedbackIn,
    FeedbackOut,
    PriceListOut,
    StoredAppraisal,
)
from appraiser.config import MAX_BATCH
from appraiser.market_day import MarketDay

router = APIRouter(prefix="/v1/appraisals", tags=["appraisals"], responses=ERRORS)

RECENT = 2.0  # seconds: an id this young may still be queued in another worker's writer


def price_and_store(
    ctx: deps.Context,
    stones: list[dict[str, Any]],
    explain: bool,
    comparables: int,
    as_of: date | None = None,
    endpoint: str = "single",
) -> list[dict[str, Any]]:
    """Price stones with the champion as of a day (today, UTC, by default), give each answer its
    id, and queue the rows for storing."""
    start = time.perf_counter()
    current = deps.current_appraiser(ctx)
    asking = [stone.pop("asking_price", None) for stone in stones]  # not part of the stone
    answers = current.appraise(
        stones,
        explain=explain,
        comparables=comparables,
        asking_prices=asking if any(a is not None for a in asking) else None,
        market=ctx.champions.market.on(as_of),
    )
    latency_ms = round((time.perf_counter() - start) * 1000 / max(len(stones), 1), 3)
    now = clock.now()
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
    deps.writer(ctx).submit(rows)
    PRICED.labels(endpoint).inc(len(stones))
    return answers


@router.post(
    "",
    response_model=AppraisalOut,
    response_model_exclude_none=True,
    summary="Price one stone",
)
async def appraise(
    diamond: DiamondIn,
    ctx: deps.Ctx,
    _: deps.Appraising,
    explain: Annotated[bool, Query(description="add the dollars each characteristic adds")] = False,
    comparables: Annotated[
        int, Query(ge=0, le=MAX_COMPARABLES, description="add this many similar stones")
    ] = 0,
    as_of: AsOf = None,
) -> Response:
    """The price as of a day (today by default), its 90% range, the market level it stands on,
    the model version and any warnings. The appraisal is stored; its `id` fetches it later or
    carries an expert's price."""
    answer = await ctx.batcher.price(diamond.model_dump(), explain, comparables, as_of)
    if "what_if" in answer:  # the end of a scale is left out, not null
        answer["what_if"] = {
            grade: {side: other for side, other in sides.items() if other is not None}
            for grade, sides in answer["what_if"].items()
        }
    # the answer is built to AppraisalOut's schema, what is absent left out (only the base
    # level's month is null): written as JSON in one go (Rust), as batches are, rather than
    # validated a second time
    return Response(to_json(answer), media_type="application/json")


def _validated_by_pydantic(body: bytes) -> list[dict[str, Any]]:
    try:
        batch = BatchIn.model_validate_json(body)
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
    return [d.model_dump() for d in batch.diamonds]


@router.post(
    "/batch",
    response_model=BatchOut,
    response_model_exclude_none=True,
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
                                "items": {"$ref": "#/components/schemas/DiamondIn"},
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
async def appraise_batch(
    request: Request, ctx: deps.Ctx, _: deps.Appraising, as_of: AsOf = None
) -> Response:
    """One appraisal per stone, in the order sent, all as of one day (today by default). A bad
    stone fails the whole request (422, its index in `detail[].loc`); over the limit is 413; too
    many batches at once, 503; a body that does not arrive within APPRAISER_REQUEST_BODY_SECONDS,
    408."""
    # the body is read here rather than declared (FastAPI's generic path costs twice as much),
    # whole and in time before a place is taken: a slow sender must not hold one
    body = await deps.body_in_time(ctx, request.body())
    if ctx.batch_slots.locked():  # a cap on batch calls in flight: past it, say so at once
        raise Overloaded(f"{ctx.config.max_batch_calls} batch calls are being priced")
    async with ctx.batch_slots:
        # a valid batch is checked column by column, anything else by pydantic (Rust), whose
        # errors name the stone, the field and the rule
        stones = batch_input.valid_stones(body)
        if stones is None:
            stones = _validated_by_pydantic(body)
        answers = await run_in_threadpool(price_and_store, ctx, stones, False, 0, as_of, "batch")
    # the answers are built to BatchOut's schema: written as JSON in one go (Rust), where
    # FastAPI's validation and encoding of 1,000 answers would cost more than pricing them
    return Response(to_json({"appraisals": answers}), media_type="application/json")


@router.post(
    "/list",
    response_model=PriceListOut,
    summary=f"Price a supplier's list: a CSV of up to {MAX_BATCH:,} stones (nothing stored)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                }
            },
        }
    },
)
async def price_list(
    request: Request, ctx: deps.Ctx, _: deps.Appraising, as_of: AsOf = None
) -> dict[str, Any]:
    """Each row priced as of a day (today by default; `market_level` says the level) with its
    range and warnings, or refused with its reasons (`error`); an `asking_price` column adds the
    deal check (`bargain_probability`, `verdict`). For looking at a list before buying: nothing
    joins the collection and no appraisal is stored."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        raise HTTPException(415, "send multipart/form-data with the CSV as the field 'file'")
    form = await deps.body_in_time(ctx, request.form())  # before a place is taken, as batches
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise HTTPException(422, "file: attach the CSV as the form field 'file'")
    content = await upload.read()
    current = deps.current_appraiser(ctx)
    if ctx.batch_slots.locked():  # a list costs what a batch does: the same cap
        raise Overloaded(f"{ctx.config.max_batch_calls} batch calls are being priced")
    market = ctx.champions.market.on(as_of)
    async with ctx.batch_slots:
        return await run_in_threadpool(_price_list, current, content, market)


def _price_list(current: Any, content: bytes, market: MarketDay) -> dict[str, Any]:
    import io

    import numpy as np
    import pandas as pd

    from appraiser import data, features
    from appraiser.scoring import ASKING, score_frame

    wanted = {*schema.COLUMNS, ASKING}
    try:
        # only the columns a stone has (a header of 60,000 made-up columns costs nothing), at
        # most one row past the limit, and never a first column taken as the index
        raw = pd.read_csv(
            io.BytesIO(content),
            dtype=str,
            keep_default_na=False,
            usecols=lambda column: str(column).strip() in wanted,
            nrows=MAX_BATCH + 1,
            index_col=False,
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(422, f"file: not a readable CSV ({exc})") from exc
    raw.columns = [str(c).strip() for c in raw.columns]
    if len(raw) > MAX_BATCH:
        raise HTTPException(413, f"{len(raw):,} rows: send at most {MAX_BATCH:,} per list")
    if raw.empty:
        raise HTTPException(422, "file: the CSV has no rows")
    try:
        scored = score_frame(current.model, raw, level=market.factor)
    except data.DataError as exc:
        raise HTTPException(422, f"file: {exc}") from exc
    good = (scored["error"] == "").to_numpy()
    warnings: list[list[str]] = [[] for _ in range(len(scored))]
    if good.any():
        stones = data.validate(raw[good].reset_index(drop=True), labelled=False, dedupe=False)
        records = stones.clean[list(schema.FEATURES)].to_dict(orient="records")
        matrix = features.encode_stones(records)
        said = current.index.warnings_all(matrix, records)
        for row, reasons in zip(np.flatnonzero(good).tolist(), said, strict=True):
            warnings[row] = reasons
    rows = []
    for i, record in enumerate(scored.to_dict(orient="records")):
        record = {
            k: (None if isinstance(v, float) and not np.isfinite(v) else v)
            for k, v in record.items()
        }
        record["warnings"] = warnings[i]
        if not record.get("verdict"):  # verdicts come from score_frame (unrounded probability)
            record.pop("verdict", None)
        rows.append({str(k): v for k, v in record.items()})
    return {
        "rows": rows,
        "priced": int(good.sum()),
        "refused": int((~good).sum()),
        "model_version": current.version,
        "currency": CURRENCY,
        "market_level": market.field,
    }


async def _find(ctx: deps.Context, uid: str, lookup: Any, *args: Any) -> Any:
    """`lookup(uid, *args)` in the store; KeyError/None when unknown. Only an id made in the
    last RECENT seconds can still be on its way to the store (queued here or in another
    worker): only then flush and wait once; any other unknown id is a 404 at once."""
    age = store.uid_age(uid)
    recent = -1.0 < age < RECENT
    if recent:
        await run_in_threadpool(deps.writer(ctx).flush)
    try:
        return await run_in_threadpool(lookup, uid, *args)
    except KeyError:
        if not recent:
            raise
    await asyncio.sleep(deps.writer(ctx).interval * 1.5)  # on the event loop: no thread held
    return await run_in_threadpool(lookup, uid, *args)


def _stored(uid: str) -> dict[str, Any]:
    found = store.get_appraisal(uid)
    if found is None:
        raise KeyError(uid)
    return found


@router.get("/{appraisal_id}", response_model=StoredAppraisal, summary="A stored appraisal")
async def get_appraisal(appraisal_id: AppraisalId, ctx: deps.Ctx, who: deps.Appraising) -> Any:
    """What was asked, what was answered, by which model, how fast, and the expert prices given
    for it (shown to expert and admin keys only)."""
    try:
        found = await _find(ctx, appraisal_id, _stored)
    except KeyError as exc:
        raise HTTPException(404, f"no appraisal with id {appraisal_id}") from exc
    if not who.can("expert"):
        found["feedback"] = []
    return found


@router.post(
    "/{appraisal_id}/feedback",
    response_model=FeedbackOut,
    status_code=201,
    summary="Send an expert's price for an appraisal (expert or admin key)",
)
async def give_feedback(
    appraisal_id: AppraisalId, price: FeedbackIn, ctx: deps.Ctx, who: deps.Expert
) -> dict[str, Any]:
    """Kept as pending, with who sent it and a flag when it is far from the appraisal's range;
    it teaches the model only once an admin approves it (POST /v1/feedback/{id}/approve). One
    price per appraisal and per stone for each expert (409 for a second)."""
    try:
        sent = await _find(ctx, appraisal_id, _submit, price.price, who.name)
    except KeyError as exc:
        raise HTTPException(404, f"no appraisal with id {appraisal_id}") from exc
    except feedback.FeedbackRefused as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    return {**sent, "message": "kept as pending: an admin reviews it before it teaches the model"}


def _submit(uid: str, price: float, actor: str) -> dict[str, Any]:
    return feedback.submit(uid, price, actor=actor)
