"""The market level (GET /v1/market): the monthly series the store keeps and the level on a day,
for anyone who may appraise."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from starlette.concurrency import run_in_threadpool

from appraiser import clock
from appraiser.api import deps
from appraiser.api.schemas import ERRORS, MarketOut

router = APIRouter(tags=["market"], responses=ERRORS)


@router.get("/v1/market", response_model=MarketOut, summary="The market level over time")
async def market_level(
    _: deps.Appraising,
    as_of: Annotated[
        date | None, Query(description="the level on this day (YYYY-MM-DD); today by default")
    ] = None,
) -> dict[str, Any]:
    """Prices per month over the champion's prices on the base level (1.0), with a 90% interval
    and the stones behind each month; `current` is the level on `as_of` (the last month's
    estimate carried forward)."""
    from appraiser.store import market

    today = clock.today()
    if as_of is not None and as_of > today:
        raise HTTPException(422, f"as_of: must not be after today ({today.isoformat()}, UTC)")
    series = await run_in_threadpool(market.load)
    return series.to_dict(as_of or today)
