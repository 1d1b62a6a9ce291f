"""The audit trail: every change of state, who did it (and the person behind them), when, and
its details.

Actions: see ACTIONS. `record` joins the caller's transaction (`session=`), so an action and its
audit row are written together or not at all. The trail is append-only: the store refuses to
update or delete its rows (migration 0006: triggers on both backends, and on PostgreSQL no role
but the tables' owner holds UPDATE, DELETE or TRUNCATE on it).

Who acts, as the trail names them (`actor`):
- a key's name (the API); the key's `person` is who holds it (auth.py);
- `cli:<user>`, the operating-system user of the command line, whose person is `<user>`;
- `system:<what>` for the system itself (`system:gate`, `system:inbox`, `system:pipeline`,
  `system:guard`, `system:job <id>`): no key's name may hold a ':', so none looks like one.
`person_of` answers who the person behind an actor is; `canonical` when two names are one.
"""

from __future__ import annotations

import json
import os
import pwd
import re
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
    "ingest",
    "retention",
    "export",
)

SYSTEM = "system:"  # the system's own actors
CLI = "cli:"  # a person at the command line
GATE = SYSTEM + "gate"  # a retrain's promotion when nobody asked for it in person
PIPELINE = SYSTEM + "pipeline"  # a scheduled pass (`appraiser pipeline run`, `watch`)
INBOX = SYSTEM + "inbox"  # files dropped into the inbox
GUARD = SYSTEM + "guard"  # a held batch released once another source corroborates it
_SEPARATORS = re.compile(r"[\s._@-]+")


def system_actor(what: str) -> str:
    """The trail's name for the system doing `what` (e.g. a retrain job: `system:job <id>`)."""
    return SYSTEM + what


def canonical(name: str) -> str:
    """The form in which two names are the same name: case folded, every run of spaces, '.',
    '_', '@' or '-' one space, none at either end (`Bootstrap-Admin.` is `bootstrap admin`)."""
    return " ".join(part for part in _SEPARATORS.split(name.casefold()) if part)


def person_of(actor: str, session: Session | None = None) -> str | None:
    """The person behind `actor` (canonical), None for the system: `cli:<user>` is `<user>`, a
    key's name the key's person, any other name (a library caller's) that name."""
    if actor.startswith(SYSTEM):
        return None
    if actor.startswith(CLI):
        return canonical(actor.removeprefix(CLI)) or "unknown"
    query = select(store.ApiKey.person).where(store.ApiKey.name == actor)
    if session is not None:
        found = session.scalar(query)
    else:
        store.ready()
        with store.session() as s:
            found = s.scalar(query)
    return found if found is not None else canonical(actor) or None


def cli_actor() -> str:
    """Who acts from the command line: the operating-system user the process runs as (its
    effective uid's name: USER and LOGNAME are the caller's to set, so they name nobody)."""
    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid with no passwd entry (a bare container)
        user = f"uid {uid}"
    return f"cli:{user}"


def record(
    actor: str,
    action: str,
    *,
    session: Session | None = None,
    person: str | None = None,
    **details: Any,
) -> None:
    """Keep one action by `actor`, and the person behind it (`person`, else `person_of`). With
    `session`, inside the caller's transaction: a change and its row commit or fail together."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    if session is None:
        store.ready()
        with store.session() as s, s.begin():
            record(actor, action, session=s, person=person, **details)
        return
    who = person if person is not None else person_of(actor, session)
    session.add(
        store.AuditEvent(
            actor=actor[:200],
            person=who[:100] if who else None,
            action=action,
            details=json.dumps(details, default=str),
        )
    )


def events(
    *,
    limit: int = 100,
    action: str | None = None,
    actor: str | None = None,
    person: str | None = None,
    since: datetime | None = None,
) -> list[dict[str, Any]]:
    """The newest actions first (at most `limit`), optionally of one kind, actor or person."""
    store.ready()
    table = store.AuditEvent
    query = select(table).order_by(table.id.desc()).limit(limit)
    if action:
        query = query.where(table.action == action)
    if actor:
        query = query.where(table.actor == actor)
    if person:
        query = query.where(table.person == canonical(person))
    if since:  # stored in UTC (naive on SQLite): compare in UTC
        query = query.where(table.created_at >= clock.utc(since))
    with store.session() as s:
        return [
            {
                "id": r.id,
                "at": r.created_at,
                "actor": r.actor,
                "person": r.person,
                "action": r.action,
                "details": json.loads(r.details),
            }
            for r in s.scalars(query).all()
        ]
