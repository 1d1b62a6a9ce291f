"""What every route may depend on: the running context, who is calling, what they may do, and
how often they may ask (one module, so each rule is written once)."""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.concurrency import run_in_threadpool

from appraiser import auth, store
from appraiser.api.batching import MicroBatcher
from appraiser.config import Settings
from appraiser.predict import Appraiser, ChampionWatcher

bearer = HTTPBearer(
    auto_error=False,
    description="an API key (`appraiser keys create`) or the bootstrap APPRAISER_API_KEY",
)


@dataclass
class Context:
    """What one app instance runs with (app.state.ctx)."""

    config: Settings
    champions: ChampionWatcher
    batcher: MicroBatcher
    batch_slots: asyncio.Semaphore
    limits: list[RateLimitItem]
    limiter: MovingWindowRateLimiter = field(
        default_factory=lambda: MovingWindowRateLimiter(MemoryStorage())
    )
    writer: store.AppraisalWriter | None = None


def context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


Ctx = Annotated[Context, Depends(context)]


def make_limits(spec: str | None) -> list[RateLimitItem]:
    """APPRAISER_RATE_LIMIT as limits (',' or ';' between several; 'none' or empty: none);
    ValueError names the rule."""
    if not spec or not spec.strip() or spec.strip().lower() == "none":
        return []
    try:
        return list(parse_many(spec.replace(",", ";")))
    except ValueError as exc:
        raise ValueError(
            f"APPRAISER_RATE_LIMIT={spec!r}: write e.g. '50/second' or '50/second;1000/minute', "
            "or 'none'"
        ) from exc


def _limit(ctx: Context, identity: str) -> None:
    """429 with Retry-After when `identity` has used up one of its limits."""
    for item in ctx.limits:
        if not ctx.limiter.hit(item, identity):
            reset = ctx.limiter.get_window_stats(item, identity).reset_time
            wait = max(1, math.ceil(reset - time.time()))
            raise HTTPException(
                429,
                f"too many requests: the limit is {item}; retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )


def _test_limit(ctx: Context, identity: str) -> None:
    """429 when `identity` is already over a limit (without counting this request)."""
    for item in ctx.limits:
        if not ctx.limiter.test(item, identity):
            _limit(ctx, identity)


def _client_ip(request: Request) -> str:
    """The client's address: the connection's peer, or behind a proxy named in
    APPRAISER_TRUSTED_PROXIES the one uvicorn takes from its X-Forwarded-For (`appraiser serve`;
    anyone else's header is ignored); IPv6 by its /64, which one client holds whole."""
    host = request.client.host if request.client else "unknown"
    if ":" in host:
        try:
            return str(ipaddress.ip_network(f"{host}/64", strict=False))
        except ValueError:
            return host
    return host


async def caller(
    request: Request,
    ctx: Ctx,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> auth.Principal:
    """Who is calling (anonymous without a key; 401 for a key nobody holds), counted against
    their rate limit: their key's, else their IP's (a bad key counts against the IP, so
    inventing keys does not escape the limit)."""
    if credentials is None or not credentials.credentials:
        _limit(ctx, f"ip:{_client_ip(request)}")
        return auth.ANONYMOUS
    key = credentials.credentials
    bootstrap = ctx.config.api_key.get_secret_value() if ctx.config.api_key else ""
    found = auth.authenticate(key, bootstrap) if not auth.KEY_PATTERN.match(key) else None
    if found is None and auth.KEY_PATTERN.match(key):
        # a store key: the database (or its cache). The IP's limit is checked first, so a
        # stream of invented keys costs the store nothing once the IP is over its limit
        _test_limit(ctx, f"ip:{_client_ip(request)}")
        found = await run_in_threadpool(auth.authenticate, key, bootstrap)
    if found is None:
        _limit(ctx, f"ip:{_client_ip(request)}")
        raise HTTPException(
            401,
            "that key is unknown or revoked: send 'Authorization: Bearer <key>' with a key "
            "from `appraiser keys create`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    _limit(ctx, f"key:{found.name}")
    return found


Caller = Annotated[auth.Principal, Depends(caller)]


async def observer(
    request: Request,
    ctx: Ctx,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> auth.Principal:
    """Who asks /health or /ready, which probes must always reach: never refused for the rate
    limit. Without a key nothing is counted; a key is checked as `caller` does (so invented
    keys still cost the store nothing past the limit) and, past the limit, the caller is simply
    anonymous."""
    if credentials is None or not credentials.credentials:
        return auth.ANONYMOUS
    try:
        return await caller(request, ctx, credentials)
    except HTTPException as exc:
        if exc.status_code != 429:
            raise
        return auth.ANONYMOUS


Observer = Annotated[auth.Principal, Depends(observer)]

T = TypeVar("T")


async def body_in_time(ctx: Context, reading: Awaitable[T]) -> T:
    """`reading` (the request's body or form) within APPRAISER_REQUEST_BODY_SECONDS, else 408:
    a client that sends headers and then trickles its body holds nothing but its connection."""
    seconds = ctx.config.request_body_seconds
    try:
        async with asyncio.timeout(seconds):
            return await reading
    except TimeoutError:
        raise HTTPException(
            408,
            f"the request body did not arrive within {seconds:g} s "
            "(APPRAISER_REQUEST_BODY_SECONDS): send it whole, at once",
            headers={"Connection": "close"},
        ) from None


def role(needed: str) -> Callable[..., Awaitable[auth.Principal]]:
    """A dependency: the caller, if they hold `needed` (401 without a key, 403 with too little)."""

    async def check(who: Caller) -> auth.Principal:
        if who.role is None:
            raise HTTPException(
                401,
                f"this needs {'an' if needed[0] in 'aeiou' else 'a'} {needed} key: send "
                "'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not who.can(needed):
            raise HTTPException(
                403, f"this needs the {needed} role; the key {who.name!r} is {who.role}"
            )
        return who

    return check


Staff = Annotated[auth.Principal, Depends(role("staff"))]
Expert = Annotated[auth.Principal, Depends(role("expert"))]
Admin = Annotated[auth.Principal, Depends(role("admin"))]


async def appraising_caller(who: Caller, ctx: Ctx) -> auth.Principal:
    """Anyone may appraise, unless APPRAISER_REQUIRE_KEYS=true: then staff or above."""
    if ctx.config.require_keys:
        return await role("staff")(who)
    return who


Appraising = Annotated[auth.Principal, Depends(appraising_caller)]


def current_appraiser(ctx: Ctx) -> Appraiser:
    found = ctx.champions.current
    if found is None:
        raise HTTPException(
            503,
            "no model to price with yet: train one (`appraiser train`), the server picks it up "
            "within seconds",
        )
    return found


def writer(ctx: Ctx) -> store.AppraisalWriter:
    assert ctx.writer is not None, "the app's lifespan starts the writer"
    return ctx.writer


def is_admin(who: auth.Principal) -> bool:
    return who.can("admin")
