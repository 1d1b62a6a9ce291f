"""The store: migrations create the schema the models describe, on SQLite (PostgreSQL in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from appraiser import store
from tests.conftest import use_home


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("APPRAISER_DATABASE_URL", raising=False)
    use_home(tmp_path / "home")
    return store.database_url()


def test_default_url_is_sqlite_under_home(url: str, tmp_path: Path) -> None:
    assert url == f"sqlite:///{(tmp_path / 'home').resolve() / 'appraiser.db'}"
    assert (tmp_path / "home").is_dir()


def test_database_url_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("APPRAISER_DATABASE_URL", target)
    assert store.database_url() == target


def test_upgrade_creates_tables_matching_the_models(url: str) -> None:
    engine = store.upgrade(url)
    assert set(store.TABLES) <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "0001"
        assert compare_metadata(MigrationContext.configure(conn), store.Base.metadata) == []
    store.upgrade(url)  # a second upgrade is a no-op, not an error


def test_sqlite_pragmas(url: str) -> None:
    with store.upgrade(url).connect() as conn:
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
