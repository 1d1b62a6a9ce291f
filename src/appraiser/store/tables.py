"""The store's tables: batches, accepted stones, rejected rows, appraisals, feedback, keys, the
audit trail, jobs, model versions, champion moves, evaluations and the market level.

The schema is owned by the Alembic migrations in `appraiser/migrations` (store.migrate applies
them); the classes here must match them (tests/test_store.py checks).
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Date,
    DateTime,
    Double,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from appraiser import schema
from appraiser.clock import now


class Base(DeclarativeBase):
    """Declarative base of the store's tables."""


class Batch(Base):
    """One ingested file: where it came from, its hash (ingesting it twice adds nothing), counts."""

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(200))
    file_name: Mapped[str] = mapped_column(String(2000))
    file_hash: Mapped[str] = mapped_column(String(64), unique=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    rows_read: Mapped[int] = mapped_column(Integer)
    rows_accepted: Mapped[int] = mapped_column(Integer)
    rows_rejected: Mapped[int] = mapped_column(Integer)
    # accepted: stones train models; held: the champion found its prices far from everything
    # known (see screening.py), so it waits for an admin to release or drop it; dropped: kept,
    # never used
    status: Mapped[str] = mapped_column(String(20), default="accepted", index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)


BATCH_STATUSES = ("accepted", "held", "dropped")


class StoredDiamond(Base):
    """An accepted, priced stone, with the batch and file line it came from."""

    __tablename__ = "diamonds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    line: Mapped[int] = mapped_column(Integer)
    carat: Mapped[float] = mapped_column(Double)
    cut: Mapped[str] = mapped_column(String(20))
    color: Mapped[str] = mapped_column(String(20))
    clarity: Mapped[str] = mapped_column(String(20))
    depth: Mapped[float] = mapped_column(Double)
    table: Mapped[float] = mapped_column(Double)
    x: Mapped[float] = mapped_column(Double)
    y: Mapped[float] = mapped_column(Double)
    z: Mapped[float] = mapped_column(Double)
    price: Mapped[float] = mapped_column(Double)
    # the day the price was given, when the file said (schema.APPRAISED_AT); else its batch's
    appraised_at: Mapped[date | None] = mapped_column(Date)


class RejectedRow(Base):
    """A row refused by validation: its raw values (JSON text), file line and reasons."""

    __tablename__ = "rejected_rows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    line: Mapped[int] = mapped_column(Integer)
    raw: Mapped[str] = mapped_column(Text)
    reasons: Mapped[str] = mapped_column(Text)


class Appraisal(Base):
    """A price served: the stone asked about (JSON text), the answer, the model that gave it.

    `uid` is the id clients see (made by the serving process, see new_uid); `id` is internal.
    """

    __tablename__ = "appraisals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(32), index=True, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, index=True)
    input: Mapped[str] = mapped_column(Text)
    price: Mapped[float] = mapped_column(Double)
    price_low: Mapped[float | None] = mapped_column(Double)
    price_high: Mapped[float | None] = mapped_column(Double)
    model_version: Mapped[str | None] = mapped_column(String(100))
    latency_ms: Mapped[float | None] = mapped_column(Double)
    warnings: Mapped[str | None] = mapped_column(Text)  # JSON list of strings


APPRAISALS: Table = Appraisal.__table__  # type: ignore[assignment]  # the Core table


class Feedback(Base):
    """An expert's price for a past appraisal. It teaches the model only once an admin approved
    it (`status`: pending, approved or rejected). One per appraisal per expert, and one per stone
    per expert (`stone_key`: lineage.stone_keys in hex); `flag` says why a reviewer should look
    twice. Rows from before review existed have no actor and stay pending."""

    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("appraisal_id", "actor", name="uq_feedback_appraisal_actor"),
        UniqueConstraint("actor", "stone_key", name="uq_feedback_actor_stone"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    appraisal_id: Mapped[int] = mapped_column(ForeignKey("appraisals.id"), index=True)
    price: Mapped[float] = mapped_column(Double)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    status: Mapped[str] = mapped_column(String(20), index=True, default="pending")
    actor: Mapped[str | None] = mapped_column(String(200))
    stone_key: Mapped[str | None] = mapped_column(String(16))
    flag: Mapped[str | None] = mapped_column(Text)
    reviewed_by: Mapped[str | None] = mapped_column(String(200))
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    review_note: Mapped[str | None] = mapped_column(Text)


class ApiKey(Base):
    """A key for the API: only its SHA-256 is kept (keys are 256-bit random, so a fast hash is
    enough: there is nothing to guess); `prefix` lets people tell keys apart. `name_key` is the
    name's canonical form (audit.canonical), unique, so no two keys' names look alike; `person`
    is who holds the key (auth.py says how it is decided)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    name_key: Mapped[str] = mapped_column(String(120), unique=True, index=True)
    person: Mapped[str] = mapped_column(String(100), index=True)
    role: Mapped[str] = mapped_column(String(20))  # staff, expert or admin
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    created_by: Mapped[str] = mapped_column(String(200))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_by: Mapped[str | None] = mapped_column(String(200))


class AuditEvent(Base):
    """One change of state: who (`actor`, and the `person` behind it: None for the system and
    for rows from before persons were kept), when, what, and its details (JSON text). Rows are
    never updated nor deleted (the store refuses: migration 0006)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, index=True)
    actor: Mapped[str] = mapped_column(String(200), index=True)
    person: Mapped[str | None] = mapped_column(String(100), index=True)
    action: Mapped[str] = mapped_column(String(40), index=True)
    details: Mapped[str] = mapped_column(Text)


JOB_ACTIVE = ("queued", "running")  # a job's statuses before it ends


class Job(Base):
    """Work started through the API (a retrain), run by another process; any API process reports
    on it. `status`: queued, running, succeeded or failed; `result` and `params` are JSON text."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    params: Mapped[str] = mapped_column(Text)
    result: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)


class ModelVersionRecord(Base):
    """A registered model version's lineage (the keys of the stones it trained on, packed by
    lineage.pack) and the decision made about it (JSON text)."""

    __tablename__ = "model_versions"

    version: Mapped[str] = mapped_column(String(40), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(20))  # train (from a file) or retrain (the store)
    source: Mapped[str] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    stones: Mapped[int] = mapped_column(Integer)
    batches: Mapped[str] = mapped_column(Text)  # JSON list of store batch ids
    max_batch_id: Mapped[int | None] = mapped_column(Integer)
    max_feedback_id: Mapped[int | None] = mapped_column(Integer)
    training_keys: Mapped[bytes] = mapped_column(LargeBinary)
    decision: Mapped[str | None] = mapped_column(Text)


class Promotion(Base):
    """One move of the champion alias, in order: who moved it, from what, to what, and why."""

    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(40))
    previous: Mapped[str | None] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(20))  # gate, promote or rollback
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Evaluation(Base):
    """A model measured on labelled stones it never trained on: the sealed set over time, or a
    newly ingested batch (screening). Figures in percent; bias is the median of
    log(price / model's price)."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    kind: Mapped[str] = mapped_column(String(20), index=True)  # sealed or batch
    model_version: Mapped[str] = mapped_column(String(40))
    batch_id: Mapped[int | None] = mapped_column(BigInteger)
    stones: Mapped[int] = mapped_column(Integer)
    mape: Mapped[float | None] = mapped_column(Double)
    coverage: Mapped[float | None] = mapped_column(Double)
    bias: Mapped[float | None] = mapped_column(Double)
    details: Mapped[str | None] = mapped_column(Text)  # JSON


class MarketLevel(Base):
    """One month of the market level (market.py): prices that month over the champion's prices
    on the base level, smoothed, with a 90% interval and the stones behind it. Rewritten whole
    by each refresh; `details` (JSON) names the sources left out that month and why."""

    __tablename__ = "market_levels"

    month: Mapped[date] = mapped_column(Date, primary_key=True)  # its first day
    level: Mapped[float] = mapped_column(Double)
    low: Mapped[float] = mapped_column(Double)
    high: Mapped[float] = mapped_column(Double)
    observed: Mapped[float | None] = mapped_column(Double)  # the month's own median, unsmoothed
    stones: Mapped[int] = mapped_column(Integer)
    excluded: Mapped[int] = mapped_column(Integer)
    model_version: Mapped[str | None] = mapped_column(String(40))
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    details: Mapped[str | None] = mapped_column(Text)


TABLES: tuple[str, ...] = (
    "batches",
    "diamonds",
    "rejected_rows",
    "appraisals",
    "feedback",
    "jobs",
    "model_versions",
    "promotions",
    "evaluations",
    "api_keys",
    "audit_events",
    "market_levels",
)
STONE_COLUMNS: tuple[str, ...] = schema.COLUMNS
