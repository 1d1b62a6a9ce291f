"""The store: batches, accepted stones, rejected rows, appraisals and feedback, in one database.

A SQLite file under APPRAISER_HOME by default, any SQLAlchemy URL (PostgreSQL in production) when
APPRAISER_DATABASE_URL is set. The schema is owned by the Alembic migrations in
`appraiser/migrations`, applied by `upgrade()`; the models here must match them (a test checks).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic_core import to_json
from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Double,
    Engine,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from appraiser import schema
from appraiser.config import STORE_FILE, StoreSettings, settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
logger = logging.getLogger(__name__)


def utcnow() -> datetime:
    """The current time in UTC (stored with every batch, appraisal and feedback)."""
    return datetime.now(UTC)


def database_url() -> str:
    """APPRAISER_DATABASE_URL when set, else a SQLite file under APPRAISER_HOME (folder created).

    Read on every call (not cached) so tests and long-running processes see the current setting.
    A bare postgresql:// URL is pointed at psycopg 3 (see `driver_url`).
    """
    url = StoreSettings().database_url
    if not url:
        home = settings().home.resolve()
        home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{home / STORE_FILE}"
    return driver_url(url)


def driver_url(url: str) -> str:
    """`url` with a bare postgresql:// (or postgres://) scheme mapped to postgresql+psycopg://.

    SQLAlchemy's default PostgreSQL driver is psycopg2; this project ships psycopg 3, so a plain
    URL would otherwise fail to load its driver. Only when psycopg2 is the one installed (and
    psycopg is not) is the URL left alone. Other URLs, and explicit drivers, are unchanged.
    """
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            if (
                importlib.util.find_spec("psycopg") is None
                and importlib.util.find_spec("psycopg2") is not None
            ):
                return "postgresql://" + url.removeprefix(scheme)
            return "postgresql+psycopg://" + url.removeprefix(scheme)
    return url


# --- models -------------------------------------------------------------------------------------


class Base(DeclarativeBase):
    """Declarative base of the store's tables."""


class Batch(Base):
    """One ingested file: where it came from, its hash (ingesting it twice adds nothing), counts."""

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(200))
    file_name: Mapped[str] = mapped_column(String(2000))
    file_hash: Mapped[str] = mapped_column(String(64), unique=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
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
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )
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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    status: Mapped[str] = mapped_column(String(20), index=True, default="pending")
    actor: Mapped[str | None] = mapped_column(String(200))
    stone_key: Mapped[str | None] = mapped_column(String(16))
    flag: Mapped[str | None] = mapped_column(Text)
    reviewed_by: Mapped[str | None] = mapped_column(String(200))
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    review_note: Mapped[str | None] = mapped_column(Text)


class ApiKey(Base):
    """A key for the API: only its SHA-256 is kept (keys are 256-bit random, so a fast hash is
    enough: there is nothing to guess); `prefix` lets people tell keys apart."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(20))  # staff, expert or admin
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_by: Mapped[str | None] = mapped_column(String(200))


class AuditEvent(Base):
    """One admin or expert action: who, when, what, and its details (JSON text)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )
    actor: Mapped[str] = mapped_column(String(200), index=True)
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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Evaluation(Base):
    """A model measured on labelled stones it never trained on: the sealed set over time, or a
    newly ingested batch (screening). Figures in percent; bias is the median of
    log(price / model's price)."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(20), index=True)  # sealed or batch
    model_version: Mapped[str] = mapped_column(String(40))
    batch_id: Mapped[int | None] = mapped_column(BigInteger)
    stones: Mapped[int] = mapped_column(Integer)
    mape: Mapped[float | None] = mapped_column(Double)
    coverage: Mapped[float | None] = mapped_column(Double)
    bias: Mapped[float | None] = mapped_column(Double)
    details: Mapped[str | None] = mapped_column(Text)  # JSON


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
)
STONE_COLUMNS: tuple[str, ...] = schema.COLUMNS


# --- engines, sessions, migrations --------------------------------------------------------------


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """SQLite enforces foreign keys only when asked; WAL lets readers work during an ingest."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()
_ready: set[str] = set()


def engine(url: str | None = None) -> Engine:
    """The engine for `url` (default: `database_url()`), one per URL per process."""
    url = driver_url(url or database_url())
    with _engines_lock:
        eng = _engines.get(url)
        if eng is None:
            from sqlalchemy import make_url

            # a server database may drop pooled connections (restart, failover, idle timeout):
            # test each at checkout and replace a dead one, or a request fails on it; a SQLite
            # file's connections cannot go stale, so spare the hot paths the extra statement.
            # The pool's size is the server's: instances x (size + overflow) must stay under
            # the database's max_connections (docs/cloud-architecture.md)
            wanted = StoreSettings()
            if make_url(url).get_backend_name() == "sqlite":
                eng = create_engine(url, pool_pre_ping=False)
            else:
                eng = create_engine(
                    url,
                    pool_pre_ping=wanted.pool_pre_ping,
                    pool_size=wanted.pool_size,
                    max_overflow=wanted.max_overflow,
                )
                if wanted.database_iam_auth:
                    from appraiser import cloudsql_auth

                    cloudsql_auth.install(eng)
            if eng.dialect.name == "sqlite":
                event.listen(eng, "connect", _sqlite_pragmas)
            _engines[url] = eng
    return eng


def dispose(url: str | None = None) -> None:
    """Close the pooled connections of `url`'s engine (every engine when None) and forget it and
    its migrations, so the next use starts afresh (e.g. after the database was dropped)."""
    with _engines_lock:
        if url is None:
            engines = list(_engines.values())
            _engines.clear()
            _ready.clear()
        else:
            url = driver_url(url)
            engines = [e for e in [_engines.pop(url, None)] if e is not None]
            _ready.discard(url)
    for eng in engines:
        eng.dispose()


def session(url: str | None = None) -> Session:
    """A new ORM session on the store (use as a context manager; `with s.begin():` to write)."""
    return sessionmaker(engine(url), expire_on_commit=False)()


def alembic_config(url: str) -> Any:
    """An Alembic Config for the packaged migrations and `url` (no alembic.ini needed)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser treats % as interpolation: a password may contain one
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


MIGRATION_LOCK_KEY = 0x4D494752415445  # "MIGRATE": the advisory lock key, same in every process


def upgrade(url: str | None = None, revision: str = "head") -> Engine:
    """Bring the store's schema to `revision` (creating it when new); returns the engine.

    Processes starting together on a new store (several servers, a pipeline job) take turns:
    a PostgreSQL advisory lock for the transaction, a lock file beside a SQLite file. Without
    it they all try to create the same tables, and all but one crash.
    """
    from alembic import command

    eng = engine(url)
    config = alembic_config(eng.url.render_as_string(hide_password=False))
    with _migration_file_lock(eng), eng.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    return eng


@contextmanager
def _migration_file_lock(eng: Engine) -> Iterator[None]:
    database = eng.url.database if eng.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    import fcntl

    with Path(database + ".migrate.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits for the process migrating now
        yield


class StoreOutdated(RuntimeError):
    """The store's schema is not the one this version of the code needs."""


def revisions(url: str | None = None) -> tuple[str | None, str]:
    """(the store's schema revision, None for an empty store; the revision this code needs)."""
    current, head, _ = _revisions(url)
    return current, head


def _revisions(url: str | None) -> tuple[str | None, str, bool]:
    """The store's revision, this code's head, and whether this code knows the store's."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    eng = engine(url)
    scripts = ScriptDirectory.from_config(alembic_config(str(eng.url)))
    head = scripts.get_current_head()
    assert head is not None, "the packaged migrations have a head"
    with eng.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    known = current is None or any(s.revision == current for s in scripts.walk_revisions())
    return current, head, known


def check_schema(url: str | None = None) -> None:
    """Raise StoreOutdated unless the store's schema is the one this code needs. A schema newer
    than this code (a deploy migrated it while this older revision still runs, or a rollback)
    is accepted with a warning: migrations only add to the schema."""
    current, head, known = _revisions(url)
    if current == head:
        return
    if not known:
        logger.warning(
            "the store's schema (revision %s) is newer than this code's (%s): working on",
            current,
            head,
        )
        return
    said = "has no schema yet" if current is None else f"is at revision {current}"
    raise StoreOutdated(
        f"the store {said}; this version needs {head}: run `appraiser db upgrade` "
        "(APPRAISER_MIGRATE=check: this process does not migrate)"
    )


def ready(url: str | None = None) -> Engine:
    """The engine with its schema up to date: migrated once per URL per process, or with
    APPRAISER_MIGRATE=check only checked (StoreOutdated when it is not current)."""
    url = driver_url(url or database_url())
    if url not in _ready:
        if StoreSettings().migrate == "check":
            check_schema(url)
        else:
            upgrade(url)
        _ready.add(url)
    return engine(url)


# --- appraisals and feedback --------------------------------------------------------------------


def new_uid() -> str:
    """A public id (appraisals, jobs): unique across processes without asking the store, and
    unguessable (it is all a client needs to read an appraisal). 32 hex digits: the time in
    milliseconds (12), then 80 random bits (20), so a server can tell at once that an id it
    does not hold was never recently made (uid_age) and answer 404 without waiting."""
    return new_uids(1)[0]


def new_uids(n: int) -> list[str]:
    """n ids like new_uid, from one call to the system's random source (a batch of 1,000 spent
    a tenth of its time in 1,000 separate calls)."""
    stamp = f"{int(time.time() * 1000) & 0xFFFFFFFFFFFF:012x}"
    pool = os.urandom(10 * n).hex()
    return [stamp + pool[20 * i : 20 * (i + 1)] for i in range(n)]


def uid_age(uid: str) -> float:
    """Seconds since an id was made, by its time digits (negative: from the future: made up)."""
    return time.time() - int(uid[:12], 16) / 1000


def appraisal_row(
    stone: Mapping[str, Any],
    price: float,
    *,
    price_low: float | None = None,
    price_high: float | None = None,
    model_version: str | None = None,
    latency_ms: float | None = None,
    warnings: list[str] | None = None,
    uid: str | None = None,
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """The appraisals-table values for a served price (what was asked, answered, by which model)."""
    return {
        "uid": uid or new_uid(),
        "created_at": created_at or utcnow(),
        # pydantic's JSON encoder (Rust): a fifth of json.dumps's time, on every request
        "input": to_json(stone).decode(),
        "price": float(price),
        "price_low": price_low,
        "price_high": price_high,
        "model_version": model_version,
        "latency_ms": latency_ms,
        "warnings": to_json(warnings).decode() if warnings else "[]",
    }


def record_appraisal(
    stone: Mapping[str, Any], price: float, *, url: str | None = None, **details: Any
) -> str:
    """Keep one served price now (see appraisal_row for the details); returns its uid."""
    row = appraisal_row(stone, price, **details)
    ready(url)
    with session(url) as s, s.begin():
        s.execute(insert(Appraisal), [row])
    return str(row["uid"])


def get_appraisal(uid: str, url: str | None = None) -> dict[str, Any] | None:
    """A stored appraisal as a dict (stone, prices, model, latency, feedback prices), or None."""
    ready(url)
    with session(url) as s:
        row = s.scalars(select(Appraisal).where(Appraisal.uid == uid)).one_or_none()
        if row is None:
            return None
        feedback = s.scalars(
            select(Feedback).where(Feedback.appraisal_id == row.id).order_by(Feedback.id)
        ).all()
        return {
            "id": row.uid,
            "created_at": row.created_at,
            "stone": json.loads(row.input),
            "price": row.price,
            "price_low": row.price_low,
            "price_high": row.price_high,
            "model_version": row.model_version,
            "latency_ms": row.latency_ms,
            "warnings": json.loads(row.warnings or "[]"),
            "feedback": [
                {"price": f.price, "created_at": f.created_at, "status": f.status} for f in feedback
            ],
        }


class AppraisalWriter:
    """Writes appraisals in the background, in batches: a served price never waits for the disk.

    `submit` only queues rows; a thread inserts whatever has queued every `interval` seconds (or at
    `max_rows`) in one statement. When the store is unreachable the rows stay queued and are
    retried, so none are lost while the process lives; `flush` waits until everything submitted
    before it is written (a read of an appraisal just served calls it first).
    """

    def __init__(
        self,
        url: str | None = None,
        interval: float = 0.2,
        max_rows: int = 2000,
        max_queued: int = 500_000,
    ) -> None:
        self.url = url
        self.interval = interval
        self.max_rows = max_rows
        # during a long outage the queue would grow without end: past max_queued rows (about
        # 500 MB), new rows are dropped, counted and logged, and the process stays up
        self.max_queued = max_queued
        self.queued = 0
        self.dropped = 0
        self._count_lock = threading.Lock()
        self.written = 0
        self.failures = 0  # attempts that failed because the store was unreachable
        self.refused = 0  # rows the store refused (constraint violations): logged and dropped
        self.last_error: str | None = None
        # one item per submitted list of rows (a put and a get per row cost a batch 2 ms)
        self._queue: queue.SimpleQueue[list[dict[str, Any]] | threading.Event | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="appraisal-writer", daemon=True)
        self._thread.start()

    def submit(self, rows: list[dict[str, Any]]) -> None:
        with self._count_lock:
            if self.queued + len(rows) > self.max_queued:
                self.dropped += len(rows)
                logger.error(
                    "%d appraisals dropped: %d already wait for the store (%s)",
                    len(rows),
                    self.queued,
                    self.last_error,
                )
                return
            self.queued += len(rows)
        self._queue.put(list(rows))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row submitted so far is written; False if that took over `timeout`."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            try:
                self._loop()
                return
            except Exception:  # never let the writer die: log, and go on with what is queued
                logger.exception("the appraisal writer failed; restarting it")
                time.sleep(1.0)

    def _loop(self) -> None:
        pending: list[dict[str, Any]] = []
        waiters: list[threading.Event] = []
        stop = False
        while not stop:
            # gather for `interval` after the first row (one insert per interval, not per
            # request: a write per request would cost each request more than pricing it), but
            # at once when someone waits in flush() or the batch is full. Rows kept from a failed
            # write are retried after `interval` even when no more come: waiting for the next
            # row would leave them unwritten for good once traffic stops
            deadline: float | None = time.monotonic() + self.interval if pending else None
            while not stop and not waiters and len(pending) < self.max_rows:
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    break
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    waiters.append(item)
                else:
                    pending.extend(item)
                    if deadline is None:
                        deadline = time.monotonic() + self.interval
            # at most max_rows per statement: one submitted list may be a 10,000-stone batch
            while pending:
                chunk = pending[: self.max_rows]
                size = len(chunk)
                written = self._write(chunk)  # row by row, it takes what it wrote out of chunk
                del pending[: size if written else size - len(chunk)]
                if not written:
                    break
            if pending:
                # the store is down: keep the rows, retry after a pause (never a busy loop, even
                # with interval=0)
                time.sleep(min(max(self.interval * 5, 0.1), 2.0))
                continue
            for waiter in waiters:
                waiter.set()
            waiters = []

    def _write(self, rows: list[dict[str, Any]]) -> bool:
        """Insert the rows; False when the store is unreachable (keep them and retry).

        A row the store refuses for itself (say, an id already taken) must not hold back the
        others forever: the batch is then written row by row, and refused rows are logged,
        counted and dropped.
        """
        try:
            ready(self.url)
            with engine(self.url).begin() as conn:
                bulk_insert(conn, APPRAISALS, rows)
        except (IntegrityError, DataError):
            return self._write_one_by_one(rows)
        except Exception as exc:  # the store is down or unreachable: keep the rows, retry
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            logger.warning(
                "could not store %d appraisals (will retry): %s", len(rows), self.last_error
            )
            return False
        self.written += len(rows)
        self._handled(len(rows))
        return True

    def _handled(self, rows: int) -> None:
        with self._count_lock:
            self.queued -= rows

    def _write_one_by_one(self, rows: list[dict[str, Any]]) -> bool:
        """Write rows singly, dropping those the store refuses; False if the store went away
        (the rows not yet written stay in `rows` for the retry)."""
        while rows:
            try:
                with engine(self.url).begin() as conn:
                    conn.execute(insert(APPRAISALS), [rows[0]])
                self.written += 1
            except (IntegrityError, DataError) as exc:
                self.refused += 1
                self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                logger.error("appraisal %s refused by the store, dropped", rows[0].get("uid"))
            except Exception as exc:  # the store went away mid-way: retry the rest later
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                return False
            rows.pop(0)
            self._handled(1)
        return True


@functools.lru_cache(maxsize=32)
def _insert_statement(table: Table, dialect: Any, keys: tuple[str, ...]) -> Any:
    """The INSERT for these columns, compiled once per dialect (a writer flushing a few rows
    many times a second spent more compiling it than inserting)."""
    return insert(table).compile(dialect=dialect, column_keys=list(keys), for_executemany=True)


def bulk_insert(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows in one executemany of the driver's own statement.

    SQLAlchemy's executemany processes every parameter of every row in Python: for 1,000
    appraisals on SQLite that took 31 ms against 22 ms here (benchmarks/serving_parts.py), where
    each column's bind processor (SQLite keeps datetimes as text) is applied directly and nothing
    else is. Rows that do not all carry the same columns as the statement (a default to fill in)
    take SQLAlchemy's way.
    """
    if not rows:
        return
    keys = list(rows[0])
    dialect = conn.dialect
    compiled = _insert_statement(table, dialect, tuple(keys))
    order = list(compiled.positiontup or []) if compiled.positional else keys
    size = len(keys)
    same_columns = set(compiled.binds) == set(keys) and all(len(row) == size for row in rows)
    processors = [table.c[key].type.dialect_impl(dialect).bind_processor(dialect) for key in order]
    try:  # with the sizes equal, every key present means the same columns (a cheaper check)
        values = [[row[key] for row in rows] for key in order] if same_columns else None
    except KeyError:
        values = None
    if values is None:
        conn.execute(insert(table), rows)
        return
    columns = [_bound(v, p) for v, p in zip(values, processors, strict=True)]
    pick = list(zip(*columns, strict=True))
    if compiled.positional:
        params: list[Any] = pick
    else:
        params = [dict(zip(order, values, strict=True)) for values in pick]
    conn.exec_driver_sql(str(compiled), params)


def _bound(values: list[Any], processor: Callable[[Any], Any] | None) -> list[Any]:
    """One column's values through its bind processor, column-wise (a call per value cost more
    than the insert): None stays None; a value shared by every row (the time of one request) is
    processed once, as is each distinct time (equal times in two zones are stored differently,
    so they are told apart by offset)."""
    if processor is None:
        return values
    first = values[0]
    if all(value is first for value in values):
        return [None if first is None else processor(first)] * len(values)
    if isinstance(first, datetime):
        memo: dict[tuple[Any, Any], Any] = {}
        out = []
        for value in values:
            if not isinstance(value, datetime):  # None, or whatever the processor makes of it
                out.append(None if value is None else processor(value))
                continue
            key = (value, value.utcoffset())
            if key not in memo:
                memo[key] = processor(value)
            out.append(memo[key])
        return out
    if None in values:
        return [None if value is None else processor(value) for value in values]
    return list(map(processor, values))


# --- jobs ---------------------------------------------------------------------------------------


def create_job(kind: str, params: Mapping[str, Any], url: str | None = None) -> str:
    """A queued job; returns its id."""
    ready(url)
    job_id = new_uid()
    with session(url) as s, s.begin():
        s.add(Job(id=job_id, kind=kind, status="queued", params=json.dumps(dict(params))))
    return job_id


def update_job(job_id: str, url: str | None = None, **values: Any) -> None:
    """Set a job's status, times, result (JSON-encoded here) or error."""
    if "result" in values and values["result"] is not None:
        values["result"] = json.dumps(values["result"], default=str)
    ready(url)
    with session(url) as s, s.begin():
        job = s.get(Job, job_id)
        if job is None:
            raise KeyError(f"no job with id {job_id}")
        for key, value in values.items():
            setattr(job, key, value)


def get_job(job_id: str, url: str | None = None) -> dict[str, Any] | None:
    """A job as a dict, or None."""
    ready(url)
    with session(url) as s:
        job = s.get(Job, job_id)
        if job is None:
            return None
        return {
            "id": job.id,
            "kind": job.kind,
            "status": job.status,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "params": json.loads(job.params),
            "result": json.loads(job.result) if job.result else None,
            "error": job.error,
        }


def active_job(kind: str, url: str | None = None) -> str | None:
    """The id of a queued or running job of this kind, if any."""
    ready(url)
    with session(url) as s:
        return s.scalar(select(Job.id).where(Job.kind == kind, Job.status.in_(JOB_ACTIVE)).limit(1))
