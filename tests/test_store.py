"""The store: migrations create the schema the models describe, on SQLite and PostgreSQL.

The `url` tests run on both backends (tests/pg.py: PostgreSQL needs APPRAISER_TEST_POSTGRES_URL).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from appraiser import store
from tests import pg


@pytest.fixture(params=pg.BACKENDS)
def url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """An empty store on each backend (schema not yet migrated)."""
    yield from pg.backend_url(request.param, tmp_path, monkeypatch)


@pytest.fixture
def sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty default (SQLite) store, for the SQLite-only tests."""
    yield from pg.backend_url("sqlite", tmp_path, monkeypatch)


def test_default_url_is_sqlite_under_home(sqlite_url: str, tmp_path: Path) -> None:
    assert sqlite_url == f"sqlite:///{(tmp_path / 'home').resolve() / 'appraiser.db'}"
    assert (tmp_path / "home").is_dir()


def test_database_url_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("APPRAISER_DATABASE_URL", target)
    assert store.database_url() == target


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db:5432/x", "postgresql+psycopg://u:p@db:5432/x"),
        ("postgres://u:p@db/x", "postgresql+psycopg://u:p@db/x"),
        ("postgresql+psycopg://u@db/x", "postgresql+psycopg://u@db/x"),
        ("postgresql+psycopg2://u@db/x", "postgresql+psycopg2://u@db/x"),
        ("sqlite:///a.db", "sqlite:///a.db"),
    ],
)
def test_postgresql_url_uses_psycopg3(
    given: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert store.driver_url(given) == expected
    monkeypatch.setenv("APPRAISER_DATABASE_URL", given)
    assert store.database_url() == expected
    if "psycopg2" not in given:  # not installed: that driver only when asked for by name
        engine = store.engine(given)  # no connection is made
        assert engine.dialect.driver == ("pysqlite" if given.startswith("sqlite") else "psycopg")
        store.dispose(given)


def test_backend_is_the_one_asked_for(url: str, request: pytest.FixtureRequest) -> None:
    backend = request.node.callspec.params["url"]
    engine = store.upgrade(url)
    assert engine.dialect.name == backend
    assert store.database_url() == url  # the default store is this test's store
    if backend == "postgresql":
        assert engine.dialect.driver == "psycopg"
        with engine.connect() as conn:
            name = conn.exec_driver_sql("SELECT current_database()").scalar()
        assert isinstance(name, str) and url.endswith("/" + name)


def test_upgrade_creates_tables_matching_the_models(url: str) -> None:
    engine = store.upgrade(url)
    assert set(store.TABLES) <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "0001"
        assert compare_metadata(MigrationContext.configure(conn), store.Base.metadata) == []
    store.upgrade(url)  # a second upgrade is a no-op, not an error


def test_sqlite_pragmas(sqlite_url: str) -> None:
    with store.upgrade(sqlite_url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_file_hash_is_unique_and_foreign_keys_enforced(url: str) -> None:
    store.upgrade(url)
    counts = {"rows_read": 1, "rows_accepted": 1, "rows_rejected": 0}
    with store.session(url) as s, s.begin():
        s.add(store.Batch(source="a", file_name="a.csv", file_hash="h", **counts))
    with pytest.raises(IntegrityError), store.session(url) as s, s.begin():
        s.add(store.Batch(source="b", file_name="b.csv", file_hash="h", **counts))
    with pytest.raises(IntegrityError), store.session(url) as s, s.begin():
        s.add(store.RejectedRow(batch_id=999, line=2, raw="{}", reasons="x"))
    with store.session(url) as s:
        assert s.scalars(select(store.Batch.source)).all() == ["a"]


def test_appraisal_and_feedback(url: str, stone: dict) -> None:
    appraisal = store.record_appraisal(stone, 5000.0, price_low=4500, model_version="3", url=url)
    feedback = store.add_feedback(appraisal, 5200.0, url=url)
    with store.session(url) as s:
        row = s.get(store.Feedback, feedback)
        assert row is not None and row.appraisal_id == appraisal and row.price == 5200.0
        assert s.get(store.Appraisal, appraisal).model_version == "3"  # type: ignore[union-attr]
    with pytest.raises(KeyError):
        store.add_feedback(appraisal + 1, 1.0, url=url)
