"""create_app: the API and the web page, assembled from the routers, over one running context."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from appraiser import store
from appraiser.api import deps, errors
from appraiser.api.batching import MicroBatcher
from appraiser.api.metrics import (
    CHAMPION,
    DROPPED,
    LOADS,
    QUEUED,
    REFUSED,
    WRITE_FAILURES,
    WRITTEN,
)
from appraiser.api.middleware import (
    InFlight,
    LimitBodySize,
    MetricsPort,
    SecurityHeaders,
    TimeRequests,
)
from appraiser.api.routers import admin, appraisals, diamonds, feedback, models, operations
from appraiser.api.routers import market as market_routes
from appraiser.api.routers import monitoring as monitoring_routes
from appraiser.api.schemas import ErrorOut
from appraiser.config import Settings, settings
from appraiser.predict import ChampionWatcher

DESCRIPTION = (
    "Send a stone's carat, cut, color, clarity, depth, table and measurements; get its price in "
    "US dollars, a range that holds the true price 90% of the time, and, on request, the "
    "dollars each characteristic adds and comparable stones. Errors are JSON: `message` says "
    "what to fix. Keys (`Authorization: Bearer <key>`) carry a role: staff appraise (anyone "
    "may, unless the server requires keys), experts also send expert prices, admins review "
    "them and run the models. Guide: docs/api.md."
)


def create_app(
    config: Settings | None = None, *, watcher: ChampionWatcher | None = None
) -> FastAPI:
    """The API and the web page. `watcher` defaults to one polling the registry every
    APPRAISER_RELOAD_SECONDS; appraisals are written to the store in the background."""
    cfg = config or settings()
    cfg.check_serving()  # a weak bootstrap key is refused by any server, not only `serve`
    ctx = deps.Context(
        config=cfg,
        champions=watcher or ChampionWatcher(cfg.reload_seconds, settle_heap=cfg.settle_heap),
        batcher=MicroBatcher(lambda *a: [], cfg.max_queued),  # priced below, once ctx exists
        batch_slots=asyncio.Semaphore(max(cfg.max_batch_calls, 1)),
        limits=deps.make_limits(cfg.rate_limit),
    )
    in_flight = InFlight()  # this app's requests (TimeRequests counts them)
    ctx.batcher = MicroBatcher(
        functools.partial(appraisals.price_and_store, ctx),
        cfg.max_queued,
        alone=lambda: in_flight.count <= 1,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(store.ready)
        ctx.writer = store.AppraisalWriter()
        await run_in_threadpool(ctx.champions.start)
        yield
        ctx.champions.stop()
        ctx.batcher.close()
        ctx.writer.close()

    app = FastAPI(
        title="Diamond Appraiser",
        version="1",
        summary="Prices a diamond from its characteristics and says why.",
        description=DESCRIPTION,
        lifespan=lifespan,
        responses={500: {"model": ErrorOut}},
        docs_url=None,  # served by operations.py from installed assets, not a CDN
        redoc_url=None,
    )
    app.state.ctx = ctx
    errors.install(app)
    app.add_middleware(LimitBodySize, limit=cfg.max_request_bytes)
    if cfg.cors_origin_list:  # outside the size limit, so a 413 reaches browsers with CORS headers
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cfg.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(SecurityHeaders)
    app.add_middleware(TimeRequests, in_flight=in_flight)
    # outermost: the metrics port serves nothing else, and nothing else serves the metrics
    app.add_middleware(MetricsPort, port=cfg.metrics_port, scrape=operations.scrape)
    for module in (appraisals, feedback, diamonds, models, admin, operations):
        app.include_router(module.router)
    app.include_router(monitoring_routes.router)  # GET /v1/monitoring
    app.include_router(market_routes.router)  # GET /v1/market
    app.mount("/static", StaticFiles(directory=operations.WEB), name="static")
    app.mount("/docs/assets", StaticFiles(directory=operations.DOCS_ASSETS), name="docs-assets")

    champions = ctx.champions
    CHAMPION.set_function(lambda: float(champions.current.version) if champions.current else 0)
    LOADS.set_function(lambda: champions.reloads)
    WRITTEN.set_function(lambda: ctx.writer.written if ctx.writer else 0)
    WRITE_FAILURES.set_function(lambda: ctx.writer.failures if ctx.writer else 0)
    REFUSED.set_function(lambda: ctx.writer.refused if ctx.writer else 0)
    DROPPED.set_function(lambda: ctx.writer.dropped if ctx.writer else 0)
    QUEUED.set_function(lambda: ctx.writer.queued if ctx.writer else 0)
    return app
