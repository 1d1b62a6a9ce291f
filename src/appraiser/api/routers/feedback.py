"""The review queue: admins approve or reject experts' prices before they teach the model."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool

from appraiser import feedback
from appraiser.api import deps
from appraiser.api.schemas import ERRORS, ExpertPrice, ReviewIn

router = APIRouter(prefix="/v1/feedback", tags=["review"], responses=ERRORS)

FeedbackId = Annotated[int, PathParam(ge=1, le=2**31 - 1, description="the expert price's id")]


@router.get("", response_model=list[ExpertPrice], summary="Experts' prices, by review status")
async def list_feedback(
    _: deps.Admin,
    status: Annotated[
        Literal["pending", "approved", "rejected"] | None,
        Query(description="only prices with this status (the review queue: pending)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[dict[str, Any]]:
    """Oldest first, each with its appraisal (the stone, the model's price and range), the
    expert's price, who sent it and the screening flag."""
    return await run_in_threadpool(feedback.listing, status, limit)


@router.post(
    "/{feedback_id}/{verdict}",
    response_model=ExpertPrice,
    summary="Approve or reject an expert's price",
)
async def review(
    feedback_id: FeedbackId,
    verdict: Literal["approve", "reject"],
    who: deps.Admin,
    body: ReviewIn | None = None,
) -> dict[str, Any]:
    """approve: the next retrain learns from it; reject: kept, never used. Either is final
    (409 for a price reviewed already, or sent by the person the key belongs to, whichever of
    their keys sent it) and is recorded in the audit trail."""
    try:
        return await run_in_threadpool(
            lambda: feedback.review(
                feedback_id,
                approve=verdict == "approve",
                actor=who.name,
                person=who.person,
                note=body.note if body else None,
            )
        )
    except KeyError as exc:
        raise HTTPException(404, f"no expert price with id {feedback_id}") from exc
    except feedback.FeedbackRefused as exc:
        raise HTTPException(exc.status, str(exc)) from exc
