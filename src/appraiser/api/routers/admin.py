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
    """The key is in this answer only: the store keeps its hash. It belongs to `person`, or
    else to the person of the key that makes it."""
    try:
        key = await run_in_threadpool(
            lambda: auth.create_key(body.name, body.role, actor=who.name, person=body.person)
        )
    except auth.KeyRefused as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    kept = auth.check_name(body.name)[0]
    made = next(k for k in await run_in_threadpool(auth.list_keys) if k["name"] == kept)
    return {"name": made["name"], "person": made["person"], "role": body.role, "key": key}


@router.post("/v1/keys/{name}/revoke", response_model=KeyInfo, summary="Revoke an API key")
async def revoke_key(
    name: Annotated[str, PathParam(min_length=1, max_length=100)], who: deps.Admin
) -> dict[str, Any]:
    """The key stops working at once on this server, within seconds on the others."""
    try:
        revoked = await run_in_threadpool(lambda: auth.revoke_key(name, actor=who.name))
    except auth.KeyRefused as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    return next(k for k in await run_in_threadpool(auth.list_keys) if k["name"] == revoked)


@router.get("/v1/audit", response_model=list[AuditEventOut], summary="The audit trail")
async def audit_trail(
    _: deps.Admin,
    action: Annotated[str | None, Query(max_length=40, description="one kind of action")] = None,
    actor: Annotated[str | None, Query(max_length=200, description="one key's name")] = None,
    person: Annotated[str | None, Query(max_length=100, description="one person")] = None,
    since: Annotated[datetime | None, Query(description="from this time (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Newest first: key created/revoked, expert price sent/approved/rejected, upload,
    promotion, rollback, retrain started, batch released/dropped; who, when, details."""
    if action is not None and action not in audit.ACTIONS:
        raise HTTPException(422, f"action: one of {', '.join(audit.ACTIONS)}")
    return await run_in_threadpool(
        lambda: audit.events(limit=limit, action=action, actor=actor, person=person, since=since)
    )
