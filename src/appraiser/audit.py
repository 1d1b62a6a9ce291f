"""The audit trail: every admin and expert action, who did it, when, and its details.

Actions: key_created, key_revoked, feedback_sent, feedback_approved, feedback_rejected, upload,
promotion, rollback, retrain_started, batch_released, batch_dropped. `record` can join the caller's
transaction (`session=`), so an action and its audit row are written together or not at all.
"""

from __future__ import annotations

import getpass
import json
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from appraiser import clock, store

ACTIONS = (
    "key_created",
    "key_revoked",
    "feedback_sent",
    "feedback_approved",
    "feedback_rejected",
    "upload",
    "promotion",
    "rollback",
    "retrain_started",
    "batch_released",
    "batch_dropped",
)


def cli_actor() -> str:
    """Who acts from the command line: the operating-system user (the CLI runs on the host)."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in a bare container
        user = "unknown"
    return f"cli:{user}"


def record(actor: str, action: str, *, session: Session | None = None, **details: Any) -> None:
    """Keep one action. With `session`, inside the caller's transaction."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    row = store.AuditEvent(
        actor=actor[:200], action=action, details=json.dumps(details, default=str)
    )
    if session is not None:
        session.add(row)
        return
    store.ready()
    with store.session() as s, s.begin():
        s.add(row)


def events(
    *,
    limit: int = 100,
    action: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
) -> list[dict[str, Any]]:
    """The newest actions first (at most `limit`), optionally of one kind or one actor."""
    store.ready()
    table = store.AuditEvent
    query = select(table).order_by(table.id.desc()).limit(limit)
    if action:
        query = query.where(table.action == action)
    if actor:
        query = query.where(table.actor == actor)
    if since:  # stored in UTC (naive on SQLite): compare in UTC
        query = query.where(table.created_at >= clock.utc(since))
    with store.session() as s:
        return [
            {
                "id": r.id,
                "at": r.created_at,
                "actor": r.actor,
                "action": r.action,
                "details": json.loads(r.details),
            }
            for r in s.scalars(query).all()
        ]
