"""What operators and pages need: the schema, liveness and readiness, the metrics' figures (served
on their own port: api.middleware.MetricsPort), the web pages and the API docs (served from
assets installed with the package: nothing from another origin)."""

from __future__ import annotations

import json
import logging
import math
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse
from prometheus_client import generate_latest

from appraiser import schema, store
from appraiser.api import deps
from appraiser.api.metrics import (
    BATCH_COVERAGE,
    BATCH_DRIFTED,
    BATCH_ID,
    BATCH_STONES,
    metrics_registry,
    sync_live,
)
from appraiser.api.schemas import CURRENCY, ErrorOut, HealthOut
from appraiser.config import MAX_BATCH

router = APIRouter()
logger = logging.getLogger(__name__)
BATCH_FIGURES_SECONDS = 10.0  # a scrape reads the newest batch's screening at most this often
WEB = Path(__file__).resolve().parents[2] / "web"
DOCS_ASSETS = Path(str(files("fastapi_offline") / "static"))  # Swagger UI 5


@router.get("/v1/schema", tags=["reference"], summary="The fields, grades and rules")
async def describe_schema() -> dict[str, Any]:
    """What a stone is made of: grade orders (worst first), bounds, units, the depth rule, an
    example. The web page builds its form from it."""
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


def _health(ctx: deps.Context, who: Any) -> dict[str, Any]:
    current = ctx.champions.current
    return {
        "status": "ok",
        "champion": current.version if current else None,
        "model": current.model.name if current else None,
        "loaded_at": current.loaded_at if current else None,
        # why a reload failed names files and the registry: for admins only
        "reload_error": ctx.champions.last_error if deps.is_admin(who) else None,
    }


@router.get("/health", response_model=HealthOut, tags=["reference"], summary="Liveness")
async def health(ctx: deps.Ctx, who: deps.Observer) -> dict[str, Any]:
    """200 while the process runs, never rate-limited; `champion` is the version it serves
    (null: none yet); `reload_error` (admin key only) says why the last reload failed."""
    return _health(ctx, who)


@router.get(
    "/ready",
    response_model=HealthOut,
    responses={503: {"model": ErrorOut}},
    tags=["reference"],
    summary="Readiness: a model is loaded",
)
async def ready(ctx: deps.Ctx, who: deps.Observer) -> dict[str, Any]:
    """200 once a champion is loaded and appraisals can be served, 503 before: for load
    balancers and start-up probes (`/health` is liveness only); never rate-limited."""
    if ctx.champions.current is None:
        raise HTTPException(503, "no model loaded yet: train one (`appraiser train`)")
    return _health(ctx, who)


_batch_read_at = -math.inf


def scrape() -> bytes:
    """The metrics in Prometheus's text format (api.middleware.MetricsPort serves them):
    request latency by route and status, stones priced, the model served, store writes, the
    newest labelled batch's range coverage and drift; summed over the server's workers."""
    global _batch_read_at
    sync_live()
    if time.monotonic() - _batch_read_at > BATCH_FIGURES_SECONDS:
        _batch_read_at = time.monotonic()
        try:
            _read_newest_batch()
        except Exception as exc:  # the store unreachable: the figures stay as they were
            logger.warning("could not read the newest batch's screening for /metrics: %s", exc)
    return generate_latest(metrics_registry())


def _read_newest_batch() -> None:
    """The gauges of the newest labelled batch's screening (store table `evaluations`, written
    when a batch is ingested): range coverage, drifted features (NaN: drift not measured, e.g.
    a batch too small to judge), its size and id."""
    from sqlalchemy import select

    newest = (
        select(store.Evaluation)
        .where(store.Evaluation.kind == "batch")
        .order_by(store.Evaluation.id.desc())
        .limit(1)
    )
    with store.session() as s:
        row = s.scalars(newest).first()
        figures = (row.coverage, row.stones, row.batch_id, row.details) if row is not None else None
    nan = float("nan")
    if figures is None:
        for gauge in (BATCH_COVERAGE, BATCH_DRIFTED, BATCH_STONES, BATCH_ID):
            gauge.set(nan)
        return
    coverage, stones, batch_id, details = figures
    drift = json.loads(details or "{}").get("drift") or []
    BATCH_COVERAGE.set(nan if coverage is None else coverage)
    BATCH_DRIFTED.set(sum(bool(r.get("drift")) for r in drift) if drift else nan)
    BATCH_STONES.set(stones)
    BATCH_ID.set(nan if batch_id is None else batch_id)


# --- pages and docs ---


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(WEB / "index.html")


@router.get("/admin", include_in_schema=False)
async def admin_page() -> FileResponse:
    return FileResponse(WEB / "admin.html")


DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Diamond Appraiser API</title>
<link rel="icon" href="/docs/assets/favicon.png">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script>
</body>
</html>
"""


@router.get("/docs", include_in_schema=False)
async def docs() -> HTMLResponse:
    """Swagger UI 5, from fastapi-offline's installed assets; started by /static/docs.js (the
    Content-Security-Policy allows no inline script)."""
    return HTMLResponse(DOCS_PAGE)
