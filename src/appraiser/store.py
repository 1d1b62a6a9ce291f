"""The store: batches, accepted stones, rejected rows, appraisals and feedback, in one database.

A SQLite file under APPRAISER_HOME by default, any SQLAlchemy URL (PostgreSQL in production) when
APPRAISER_DATABASE_URL is set. The schema is owned by the Alembic migrations in
`appraiser/migrations`, applied by `upgrade()`; the models here must match them (a test checks).
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import (
    DateTime,
    Double,
    Engine,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from appraiser import schema
from appraiser.config import settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def utcnow() -> datetime:
    """The current time in UTC (stored with every batch, appraisal and feedback)."""
    return datetime.now(UTC)


class StoreSettings(BaseSettings):
    """APPRAISER_DATABASE_URL, read here because config.py is shared with other work."""

    model_config = SettingsConfigDict(env_prefix="APPRAISER_", extra="ignore")

    database_url: str | None = None


def database_url() -> str:
    """APPRAISER_DATABASE_URL when set, else a SQLite file under APPRAISER_HOME (folder created).

    Read on every call (not cached) so tests and long-running processes see the current setting.
    A bare postgresql:// URL is pointed at psycopg 3 (see `driver_url`).
    """
    url = StoreSettings().database_url
    if not url:
        home = settings().home.resolve()
        home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{home / 'appraiser.db'}"
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
    """A price served: the stone asked about (JSON text), the answer, the model that gave it."""

    __tablename__ = "appraisals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    input: Mapped[str] = mapped_column(Text)
    price: Mapped[float] = mapped_column(Double)
    price_low: Mapped[float | None] = mapped_column(Double)
    price_high: Mapped[float | None] = mapped_column(Double)
    model_version: Mapped[str | None] = mapped_column(String(100))
    latency_ms: Mapped[float | None] = mapped_column(Double)


class Feedback(Base):
    """An expert's price for a past appraisal: a labelled stone for the next retrain."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    appraisal_id: Mapped[int] = mapped_column(ForeignKey("appraisals.id"), index=True)
    price: Mapped[float] = mapped_column(Double)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


TABLES: tuple[str, ...] = ("batches", "diamonds", "rejected_rows", "appraisals", "feedback")
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
            eng = create_engine(url)
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


def upgrade(url: str | None = None, revision: str = "head") -> Engine:
    """Bring the store's schema to `revision` (creating it when new); returns the engine."""
    from alembic import command

    eng = engine(url)
    config = alembic_config(eng.url.render_as_string(hide_password=False))
    with eng.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    return eng


def ready(url: str | None = None) -> Engine:
    """The engine with its schema up to date; migrations run once per URL per process."""
    url = driver_url(url or database_url())
    if url not in _ready:
        upgrade(url)
        _ready.add(url)
    return engine(url)


# --- appraisals and feedback --------------------------------------------------------------------


def record_appraisal(
    stone: Mapping[str, Any],
    price: float,
    *,
    price_low: float | None = None,
    price_high: float | None = None,
    model_version: str | None = None,
    latency_ms: float | None = None,
    url: str | None = None,
) -> int:
    """Keep a served price (what was asked, what was answered, by which model); returns its id."""
    ready(url)
    with session(url) as s, s.begin():
        row = Appraisal(
            input=json.dumps(dict(stone), default=str),
            price=float(price),
            price_low=price_low,
            price_high=price_high,
            model_version=model_version,
            latency_ms=latency_ms,
        )
        s.add(row)
        s.flush()
        return row.id


def add_feedback(appraisal_id: int, price: float, url: str | None = None) -> int:
    """Keep an expert's price for a past appraisal; returns its id (unknown appraisal: KeyError)."""
    ready(url)
    with session(url) as s, s.begin():
        if s.get(Appraisal, appraisal_id) is None:
            raise KeyError(f"no appraisal with id {appraisal_id}")
        row = Feedback(appraisal_id=appraisal_id, price=float(price))
        s.add(row)
        s.flush()
        return row.id
