"""The store's schema: brought up to date by the packaged Alembic migrations, or checked.

Every process migrates a store once on first use (`ready`), unless APPRAISER_MIGRATE=check says a
deploy step (`appraiser db upgrade`) does it; then `ready` only checks the revision.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from appraiser.config import StoreSettings
from appraiser.store.database import _ready, database_url, driver_url, engine

# the migrations stay a package of their own beside this one (package data names its template)
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
logger = logging.getLogger(__name__)


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
