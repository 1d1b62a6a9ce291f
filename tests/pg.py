"""The store tests' database backends: SQLite always, PostgreSQL when a server is at hand.

Test modules parametrize a fixture over `BACKENDS` and delegate to `backend_url`, which yields a
URL of an empty database (schema not yet migrated) and points APPRAISER_DATABASE_URL at it, so code
that uses the default store uses it too.

PostgreSQL runs when APPRAISER_TEST_POSTGRES_URL names a database the tests may connect to as a role
that can create databases (see docs/postgres.md); each test gets a fresh database, dropped after it.
Without that variable the PostgreSQL cases are skipped, except under CI (CI=true), where they fail:
CI must not pass by skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url
from sqlalchemy.pool import NullPool

from appraiser import store
from tests.conftest import use_home

BACKENDS: tuple[str, ...] = ("sqlite", "postgresql")
POSTGRES_ENV = "APPRAISER_TEST_POSTGRES_URL"


def in_ci() -> bool:
    """True when running under CI (env CI=true, as GitHub Actions, GitLab and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def postgres_url() -> str:
    """The maintenance URL from APPRAISER_TEST_POSTGRES_URL; skips (fails under CI) when unset."""
    url = os.environ.get(POSTGRES_ENV, "").strip()
    if not url:
        why = f"{POSTGRES_ENV} is not set: no PostgreSQL server to test against (docs/postgres.md)"
        if in_ci():
            pytest.fail(f"{why}; CI must run the PostgreSQL store tests", pytrace=False)
        pytest.skip(why)
    return store.driver_url(url)


def _autocommit(sql: str, url: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
    maintenance = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with maintenance.connect() as conn:
            conn.exec_driver_sql(sql)
    finally:
        maintenance.dispose()


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A URL of a new, empty PostgreSQL database, dropped (connections closed) afterwards."""
    maintenance = postgres_url()
    name = f"appraiser_test_{uuid.uuid4().hex[:16]}"
    try:
        _autocommit(f'CREATE DATABASE "{name}"', maintenance)
    except Exception as error:  # a server down or a wrong password is a failure, not a skip
        pytest.fail(f"cannot create a test database through {POSTGRES_ENV}: {error}")
    url = make_url(maintenance).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        store.dispose(url)
        _autocommit(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', maintenance)


def backend_url(backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty store on `backend` ("sqlite" or "postgresql"), made the default store.

    APPRAISER_HOME is `tmp_path / "home"` either way; the SQLite store is the default file there.
    """
    use_home(tmp_path / "home")
    if backend == "sqlite":
        monkeypatch.delenv("APPRAISER_DATABASE_URL", raising=False)
        url = store.database_url()
        try:
            yield url
        finally:
            store.dispose(url)
    elif backend == "postgresql":
        with fresh_postgres_database() as url:
            monkeypatch.setenv("APPRAISER_DATABASE_URL", url)
            assert store.database_url() == url
            yield url
    else:
        raise ValueError(f"unknown backend {backend!r}")
