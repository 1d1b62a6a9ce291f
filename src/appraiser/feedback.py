"""Expert prices for past appraisals, reviewed before they teach the model.

An expert (or admin) sends the price they would put on an appraised stone. It is kept as pending
with who sent it, screened (a price far outside the appraisal's 90% range is flagged with the
reason), and accepted once per appraisal and once per stone per expert. Only an admin approves
or rejects it; only approved prices reach training, comparables or any comparison
(`approved_stones`). Every step is in the audit trail.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from appraiser import audit, clock, data, lineage, schema, store
from appraiser.auth import BOOTSTRAP

STATUSES = ("pending", "approved", "rejected")
FAR = 2.0  # flagged when the price is this many times as far (in log) as the range's edge


class FeedbackRefused(ValueError):
    """A price that cannot be taken (the message says why); `status` is the HTTP answer."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


def screen(price: float, appraised: float, low: float | None, high: float | None) -> str | None:
    """Why a reviewer should look twice at `price`, or None: flagged when it lies FAR times
    further from the appraised price than the edge of the 90% range on its side."""
    if low is None or high is None or min(price, appraised, low, high) <= 0:
        return None
    edge = math.log(high / appraised) if price >= appraised else math.log(appraised / low)
    distance = abs(math.log(price / appraised))
    if edge <= 0 or distance <= FAR * edge:
        return None
    side = "above" if price > appraised else "below"
    return (
        f"${price:,.0f} is {abs(price / appraised - 1):.0%} {side} the appraisal "
        f"(${appraised:,.0f}), {distance / edge:.1f} times as far as its 90% range reaches "
        f"(${low:,.0f} to ${high:,.0f})"
    )


def submit(appraisal_uid: str, price: float, *, actor: str) -> dict[str, Any]:
    """Keep an expert's price as pending; KeyError for an unknown appraisal, FeedbackRefused for
    a second price on the same appraisal or stone from the same expert."""
    store.ready()
    with store.session() as s, s.begin():
        appraisal = s.scalars(
            select(store.Appraisal).where(store.Appraisal.uid == appraisal_uid)
        ).one_or_none()
        if appraisal is None:
            raise KeyError(f"no appraisal with id {appraisal_uid}")
        stone = json.loads(appraisal.input)
        key = f"{int(lineage.stone_keys(pd.DataFrame([stone]))[0]):016x}"
        earlier = s.scalars(
            select(store.Feedback).where(
                store.Feedback.actor == actor,
                (store.Feedback.appraisal_id == appraisal.id) | (store.Feedback.stone_key == key),
            )
        ).first()
        if earlier is not None:
            raise FeedbackRefused(
                f"price: you sent a price for this stone already (feedback {earlier.id}, "
                f"{earlier.status}); one price per stone per expert"
            )
        flag = screen(price, appraisal.price, appraisal.price_low, appraisal.price_high)
        row = store.Feedback(
            appraisal_id=appraisal.id,
            price=float(price),
            status="pending",
            actor=actor[:200],
            stone_key=key,
            flag=flag,
        )
        s.add(row)
        try:
            s.flush()
        except IntegrityError as exc:  # the same expert, at the same moment, from elsewhere
            raise FeedbackRefused(
                "price: you sent a price for this stone already; one per stone per expert"
            ) from exc
        audit.record(
            actor,
            "feedback_sent",
            session=s,
            feedback_id=row.id,
            appraisal_id=appraisal_uid,
            price=float(price),
            flag=flag,
        )
        return _as_dict(row, appraisal)


def review(
    feedback_id: int,
    *,
    approve: bool,
    actor: str,
    note: str | None = None,
    person: str | None = None,
) -> dict:
    """An admin's verdict on a pending price (KeyError: no such price; FeedbackRefused: it was
    reviewed already, or the reviewer is the person who sent it, whatever key or command line
    each used). `person`: the reviewer's, when the caller knows it (else audit.person_of)."""
    store.ready()
    with store.session() as s, s.begin():
        row = s.get(store.Feedback, feedback_id, with_for_update=True)
        if row is None:
            raise KeyError(f"no expert price with id {feedback_id}")
        if actor == BOOTSTRAP:  # it is no one's: a review needs a person's own admin key
            raise FeedbackRefused(
                "the bootstrap key makes the first keys; an admin reviews with their own key"
            )
        reviewer = audit.canonical(person) if person else audit.person_of(actor, s)
        sender = audit.person_of(row.actor, s) if row.actor is not None else None
        if row.actor == actor or (sender is not None and sender == reviewer):
            raise FeedbackRefused(
                f"expert price {feedback_id} was sent by {row.actor} (person {sender!r}), the "
                f"person reviewing it as {actor}: another admin reviews it"
            )
        if row.status != "pending":
            raise FeedbackRefused(
                f"expert price {feedback_id} was {row.status} already by {row.reviewed_by}"
            )
        row.status = "approved" if approve else "rejected"
        row.reviewed_by = actor[:200]
        row.reviewed_at = clock.now()
        row.review_note = (note or "")[:2000] or None
        appraisal = s.get(store.Appraisal, row.appraisal_id)
        assert appraisal is not None
        audit.record(
            actor,
            "feedback_approved" if approve else "feedback_rejected",
            session=s,
            person=reviewer,
            feedback_id=feedback_id,
            expert=row.actor,
            price=row.price,
            note=row.review_note,
        )
        s.flush()
        return _as_dict(row, appraisal)


def listing(status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Expert prices, oldest first (a review queue is worked from its head), with their
    appraisal."""
    store.ready()
    query = (
        select(store.Feedback, store.Appraisal)
        .join(store.Appraisal, store.Appraisal.id == store.Feedback.appraisal_id)
        .order_by(store.Feedback.id)
        .limit(limit)
    )
    if status is not None:
        query = query.where(store.Feedback.status == status)
    with store.session() as s:
        return [_as_dict(f, a) for f, a in s.execute(query).all()]


def _as_dict(row: store.Feedback, appraisal: store.Appraisal) -> dict[str, Any]:
    return {
        "id": row.id,
        "appraisal_id": appraisal.uid,
        "stone": json.loads(appraisal.input),
        "appraised_price": appraisal.price,
        "price_low": appraisal.price_low,
        "price_high": appraisal.price_high,
        "price": row.price,
        "status": row.status,
        "flag": row.flag,
        "expert": row.actor,
        "created_at": row.created_at,
        "reviewed_by": row.reviewed_by,
        "reviewed_at": row.reviewed_at,
        "review_note": row.review_note,
    }


def approved_stones() -> pd.DataFrame:
    """The approved expert prices as labelled stones with `feedback_id` and `appraised_at` (the
    UTC day the expert sent the price), validated, one per stone (the latest approved price when
    experts priced the same stone)."""
    engine = store.ready()
    query = (
        select(
            store.Appraisal.input,
            store.Feedback.price,
            store.Feedback.id,
            store.Feedback.created_at,
        )
        .join(store.Feedback, store.Feedback.appraisal_id == store.Appraisal.id)
        .where(store.Feedback.status == "approved")
        .order_by(store.Feedback.id)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    if not rows:
        return pd.DataFrame(columns=[*schema.COLUMNS, "feedback_id", schema.APPRAISED_AT])
    frame = pd.DataFrame(
        [
            {
                **json.loads(text),
                schema.TARGET: price,
                "feedback_id": fid,
                schema.APPRAISED_AT: clock.utc(sent).date(),
            }
            for text, price, fid, sent in rows
        ]
    )
    keys = lineage.stone_keys(frame)
    frame = frame[~pd.Series(keys).duplicated(keep="last").to_numpy()]
    checked = data.validate(
        frame[list(schema.COLUMNS)].astype(str), dedupe=False, source="feedback"
    )
    kept = frame.loc[checked.clean.index]
    return checked.clean.assign(
        feedback_id=kept["feedback_id"].to_numpy(),
        **{schema.APPRAISED_AT: kept[schema.APPRAISED_AT].to_numpy()},
    ).reset_index(drop=True)
