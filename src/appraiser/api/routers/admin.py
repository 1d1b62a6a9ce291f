"""Keys and the audit trail (admin key): who may do what, and who did what."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool

from appraiser import audit, auth
from appraiser.api import deps
from appraiser.api.schemas import ERRORS, AuditEventOut, KeyCreated, KeyIn, KeyInfo

router = APIRouter(tags=["admin"], responses=ERRORS)


@router.get("/v1/keys", response_model=list[KeyInfo], summary="API keys (never the keys)")
async def list_keys(_: deps.Admin) -> list[dict[str, Any]]:
    """Every key ever made, active or revoked: name, role, first characters, who made it."""
    return await run_in_threadpool(auth.list_keys)


@router.post("/v1/keys", response_model=KeyCreated, status_code=201, summary="Make an API key")
async def create_key(body: KeyIn, who: deps.Admin) -> dict[str, Any]:
    """The key is in this answer only: the store keeps its hash."""
    try:
        key = await run_in_threadpool(lambda: auth.create_key(body.name, body.role, actor=who.name))
    except auth.KeyRefused as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    return {"name": body.name, "role": body.role, "key": key}


@router.post("/v1/keys/{name}/revoke", response_model=KeyInfo, summary="Revoke an API key")
async def revoke_key(
    name: Annotated[str, PathParam(min_length=1, max_length=100)], who: deps.Admin
) -> dict[str, Any]:
    """The key stops working at once on this server, within seconds on the others."""
    try:
        await run_in_threadpool(lambda: auth.revoke_key(name, actor=who.name))
    except auth.KeyRefused as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    return next(k for k in await run_in_threadpool(auth.list_keys) if k["name"] == name)


@router.get("/v1/audit", response_model=list[AuditEventOut], summary="The audit trail")
async def audit_trail(
    _: deps.Admin,
    action: Annotated[str | None, Query(max_length=40, description="one kind of action")] = None,
    actor: Annotated[str | None, Query(max_length=200, description="one key's name")] = None,
    since: Annotated[datetime | None, Query(description="from this time (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Newest first: key created/revoked, expert price sent/approved/rejected, upload,
    promotion, rollback, retrain started, batch released/dropped; who, when, details."""
    if action is not None and action not in audit.ACTIONS:
        raise HTTPException(422, f"action: one of {', '.join(audit.ACTIONS)}")
    return await run_in_threadpool(
        lambda: audit.events(limit=limit, action=action, actor=actor, since=since)
    )
