"""Where the store is and how to reach it: its URL, one pooled engine per URL, sessions.

A SQLite file under APPRAISER_HOME by default, any SQLAlchemy URL (PostgreSQL in production) when
APPRAISER_DATABASE_URL is set.
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from appraiser.config import STORE_FILE, StoreSettings, settings


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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """SQLite enforces foreign keys only when asked; WAL lets readers work during an ingest."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()
# the URLs whose schema this process has migrated or checked (migrate.ready); forgotten with
# their engine (dispose), so a dropped and recreated database is migrated again
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
