"""The monitoring view's figures (admin key): traffic, latency, the champion's history, its
accuracy, drift, refused rows, held batches and the market level, as one JSON document (see
monitoring.py)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from appraiser import monitoring
from appraiser.api import deps
from appraiser.api.metrics import metrics_registry
from appraiser.api.schemas import ERRORS, MarketOut, Timestamp

router = APIRouter(tags=["admin"], responses=ERRORS)

# the routes that price stones: their latency is the one people feel
APPRAISING = {("POST", "/v1/appraisals"), ("POST", "/v1/appraisals/batch")} | {
    ("POST", "/v1/appraisals/list")
}
HISTOGRAM = "appraiser_request_seconds"


# --- the response ---------------------------------------------------------------------------


class HourCount(BaseModel):
    hour: Timestamp = Field(description="the hour's start (UTC)")
    count: int = Field(description="appraisals stored in that hour (a batch counts each stone)")


class VersionCount(BaseModel):
    version: str | None = Field(description="the model version that priced them")
    count: int


class Percentiles(BaseModel):
    p50: float | None
    p90: float | None
    p99: float | None
    n: int = Field(description="how many values they summarise")


class AppraisalFigures(BaseModel):
    total: int = Field(description="appraisals in the window, every server process included")
    per_hour: list[HourCount] = Field(description="every hour of the window, oldest first")
    by_version: list[VersionCount]
    pricing_ms: Percentiles = Field(
        description="pricing time per stone stored with each appraisal (server side, ms), over "
        "the newest 100,000 appraisals of the window"
    )


class RouteLatency(BaseModel):
    method: str
    route: str = Field(description="the route template, or `appraising` for the pricing routes")
    count: int = Field(description="requests answered")
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None


class RequestFigures(BaseModel):
    source: str = Field(description="where the figures come from")
    appraising: RouteLatency | None = Field(
        description="POST /v1/appraisals, /batch and /list together; null before any"
    )
    routes: list[RouteLatency] = Field(description="each route and method, busiest first")


class ChampionMove(BaseModel):
    at: Timestamp
    kind: str = Field(description="gate (a retrain's promotion), promote (by hand) or rollback")
    version: str = Field(description="the new champion")
    previous: str | None = Field(description="the champion it replaced")
    actor: str = Field(description="who moved it (a key's name, cli:user or gate)")
    reason: str


class FeedbackAccuracy(BaseModel):
    version: str | None = Field(description="the model version that made the appraisals")
    n: int = Field(description="approved expert prices for its appraisals")
    mape: float | None = Field(description="mean absolute error against the experts, %")
    coverage: float | None = Field(description="share of expert prices inside the 90% range, %")
    with_range: int = Field(description="appraisals that had a range")
    bias: float | None = Field(description="median of expert over model price, % above")
    last_reviewed: Timestamp | None


class BatchAccuracy(BaseModel):
    batch_id: int | None
    at: Timestamp = Field(description="when the batch was screened (at ingestion)")
    version: str = Field(description="the champion that screened it")
    stones: int
    mape: float | None = Field(description="%")
    coverage: float | None = Field(description="share of true prices inside the 90% range, %")
    bias: float | None = Field(description="median of true over champion's price, % above")
    status: str | None = Field(description="the batch now: accepted, held or dropped")
    file_name: str | None
    held: bool = Field(description="the guard held it at ingestion")
    worse: list[str] = Field(description="why the champion looked worse than expected on it")


class VersionAccuracy(BaseModel):
    version: str
    batches: int
    stones: int
    mape: float | None = Field(description="over its batches, weighted by stones, %")
    coverage: float | None = Field(description="over its batches, weighted by stones, %")


class SealedAccuracy(BaseModel):
    at: Timestamp
    version: str
    stones: int
    mape: float | None
    coverage: float | None


class AccuracyFigures(BaseModel):
    nominal_coverage: float = Field(description="what the ranges promise, %")
    feedback: list[FeedbackAccuracy] = Field(description="from reviewed expert prices")
    batches: list[BatchAccuracy] = Field(description="from each newly labelled batch")
    batches_by_version: list[VersionAccuracy]
    sealed: list[SealedAccuracy] = Field(description="on the sealed stones, after each change")


class FeatureDrift(BaseModel):
    test: str | None = Field(description="KS (numbers) or chi2 (grades)")
    effect: float | None = Field(description="KS statistic, or total variation distance")
    p_value: float | None
    drift: bool = Field(description="significant and large enough to matter")


class BatchDrift(BaseModel):
    batch_id: int | None
    at: Timestamp
    version: str = Field(description="the champion whose training stones it is compared with")
    stones: int
    judged: bool = Field(description="large enough to be judged (smaller batches never drift)")
    features: dict[str, FeatureDrift]


class DriftFigures(BaseModel):
    features: list[str]
    thresholds: dict[str, float] = Field(description="the effect a feature must pass to drift")
    batches: list[BatchDrift] = Field(description="oldest first")


class ReasonCount(BaseModel):
    reason: str = Field(description="the rule broken, without the value")
    rows: int


class RejectedFigures(BaseModel):
    rows: int = Field(description="rows refused in batches received in the window")
    by_reason: list[ReasonCount] = Field(description="most frequent first; a row may have several")


class HeldBatch(BaseModel):
    batch_id: int
    source: str
    file_name: str
    received_at: Timestamp
    rows_accepted: int
    reason: str | None
    summary: str | None = Field(description="the champion's screening, in one sentence")


class MonitoringOut(BaseModel):
    """Everything the monitoring view draws."""

    generated_at: Timestamp
    since: Timestamp = Field(description="the window's start (appraisals, rejected rows)")
    hours: int
    champion: str | None = Field(description="the version this server prices with")
    appraisals: AppraisalFigures
    requests: RequestFigures | None
    champion_history: list[ChampionMove] = Field(description="oldest first")
    accuracy: AccuracyFigures
    drift: DriftFigures
    rejected: RejectedFigures
    held_batches: list[HeldBatch] = Field(description="newest first; release or drop each")
    market: MarketOut | None = Field(
        default=None,
        description="the market level this server prices with, month by month with its 90% "
        "interval (as GET /v1/market gives it; `current` is today's)",
    )


# --- request latency from the Prometheus histogram --------------------------------------------


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The q-quantile of a histogram's cumulative (upper bound, count) buckets, interpolated
    within its bucket as Prometheus's histogram_quantile does; None when it is empty."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(bound):  # past the last finite bound: that bound is all we know
                return lower
            if cumulative == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (cumulative - below)
        lower, below = bound, cumulative
    return lower


def _latency(method: str, route: str, buckets: dict[float, float]) -> RouteLatency:
    cumulative = list(buckets.items())
    found = {q: quantile(q, cumulative) for q in (0.5, 0.9, 0.99)}
    return RouteLatency(
        method=method,
        route=route,
        count=int(max(buckets.values(), default=0)),
        **{
            f"p{round(q * 100)}_ms": None if v is None else round(v * 1000, 3)
            for q, v in found.items()
        },
    )


def request_latency() -> RequestFigures:
    """p50/p90/p99 per route from the request histogram (since the server started)."""
    per_route: dict[tuple[str, str], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for metric in metrics_registry().collect():  # every worker's figures
        if metric.name != HISTOGRAM:
            continue
        for sample in metric.samples:
            if not sample.name.endswith("_bucket"):
                continue
            labels = sample.labels
            key = (labels.get("method", ""), labels.get("route", ""))
            per_route[key][float(labels["le"])] += sample.value  # summed over statuses
    routes = [_latency(m, r, b) for (m, r), b in per_route.items()]
    appraising: dict[float, float] = defaultdict(float)
    for key, b in per_route.items():
        if key in APPRAISING:
            for bound, n in b.items():
                appraising[bound] += n
    return RequestFigures(
        source="the request histogram (appraiser_request_seconds) since the server started",
        appraising=_latency("POST", "appraising", appraising) if appraising else None,
        routes=sorted((r for r in routes if r.count), key=lambda r: (-r.count, r.route)),
    )


# --- the route ------------------------------------------------------------------------------


@router.get(
    "/v1/monitoring",
    response_model=MonitoringOut,
    summary="The running system in figures (admin key)",
)
async def monitoring_view(
    ctx: deps.Ctx,
    _: deps.Admin,
    hours: Annotated[
        int,
        Query(ge=1, le=monitoring.MAX_HOURS, description="the window for appraisals per hour"),
    ] = monitoring.DEFAULT_HOURS,
) -> dict[str, Any]:
    """Appraisals per hour and request latency; the champion's promotions and rollbacks (who,
    why); its accuracy and 90%-range coverage per version from approved expert prices and from
    each newly labelled batch; drift per feature batch by batch; rejected rows by reason; batches
    held for review; the market level this server prices with. What the admin page's Monitoring
    section draws."""
    served = ctx.champions.current
    figures = await run_in_threadpool(
        monitoring.overview, hours, champion=served.version if served else None
    )
    figures["requests"] = request_latency()
    figures["market"] = ctx.champions.market.series.to_dict()  # in memory: what prices use
    return figures
