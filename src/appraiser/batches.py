"""The store's batches as people review them: listed with their screening, and released or
dropped (under the pipeline lock, audited). What an acceptance sets off (the market level, held
batches screened again) is the caller's: ingest.set_batch_status."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from appraiser import audit, store
from appraiser.store import Batch


def listed(status: str | None = None, engine: Engine | None = None) -> list[dict[str, Any]]:
    """The store's batches (newest first), with their status and the champion's screening."""
    engine = engine or store.ready()
    query = select(Batch).order_by(Batch.id.desc())
    if status is not None:
        query = query.where(Batch.status == status)
    with Session(engine) as s:
        rows = s.scalars(query).all()
        screened = {
            e.batch_id: json.loads(e.details or "{}")
            for e in s.scalars(
                select(store.Evaluation).where(store.Evaluation.kind == "batch")
            ).all()
        }
        return [
            {
                "id": b.id,
                "source": b.source,
                "file_name": b.file_name,
                "received_at": b.received_at,
                "rows_read": b.rows_read,
                "rows_accepted": b.rows_accepted,
                "rows_rejected": b.rows_rejected,
                "status": b.status,
                "status_reason": b.status_reason,
                "screening": screened.get(b.id),
            }
            for b in rows
        ]


def set_status(
    batch_id: int,
    status: str,
    engine: Engine | None = None,
    *,
    actor: str = "unknown",
    note: str | None = None,
) -> str:
    """Release a held or dropped batch (status `accepted`) or drop one (kept, never used); returns
    its former status. Under the pipeline lock, so no retrain runs on a batch as it changes; in
    the audit trail under `actor`, with `note` (why). KeyError for an unknown batch, ValueError
    for a move that changes nothing."""
    from appraiser.locking import exclusive

    if status not in ("accepted", "dropped"):
        raise ValueError(f"a batch can be released (accepted) or dropped, not {status!r}")
    engine = engine or store.ready()
    with exclusive(), Session(engine) as s, s.begin():
        batch = s.get(Batch, batch_id)
        if batch is None:
            raise KeyError(f"no batch {batch_id}")
        before = batch.status
        if before == status:
            raise ValueError(f"batch {batch_id} is already {status}")
        batch.status = status
        why = "released" if status == "accepted" else "dropped"
        said = f"{why} by {actor}" + (f": {note}" if note else "")
        batch.status_reason = f"{said} (was {before}: {batch.status_reason or 'ok'})"[:5000]
        audit.record(
            actor,
            "batch_released" if status == "accepted" else "batch_dropped",
            session=s,
            batch_id=batch_id,
            previous=before,
            **({"note": note} if note else {}),
        )
        return before
