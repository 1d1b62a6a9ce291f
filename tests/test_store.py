"""The store: migrations create the schema the models describe, on SQLite and PostgreSQL.

The `url` tests run on both backends (tests/pg.py: PostgreSQL needs APPRAISER_TEST_POSTGRES_URL).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, inspect, select
from sqlalchemy.exc import IntegrityError

from appraiser import clock, jobs, schema, store
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
        assert MigrationContext.configure(conn).get_current_revision() == "0007"
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


def test_appraisal_and_feedback(url: str, stone: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from appraiser import feedback

    monkeypatch.setenv("APPRAISER_DATABASE_URL", url)
    uid = store.record_appraisal(stone, 5000.0, price_low=4500, model_version="3", url=url)
    sent = feedback.submit(uid, 5200.0, actor="expert-1")
    found = store.get_appraisal(uid, url=url)
    assert found is not None and found["model_version"] == "3" and found["stone"] == stone
    assert [(f["price"], f["status"]) for f in found["feedback"]] == [(5200.0, "pending")]
    with store.session(url) as s:
        row = s.get(store.Feedback, sent["id"])
        assert row is not None and row.price == 5200.0 and row.actor == "expert-1"
    with pytest.raises(KeyError):
        feedback.submit("f" * 32, 1.0, actor="expert-1")
    assert store.get_appraisal("no-such-appraisal", url=url) is None


def test_writer_stores_in_the_background_and_flush_waits(url: str, stone: dict) -> None:
    writer = store.AppraisalWriter(url, interval=0.05)
    rows = [store.appraisal_row(stone, 1000.0 + i, model_version="1") for i in range(250)]
    writer.submit(rows)
    assert writer.flush(timeout=20)
    assert writer.written == 250 and writer.failures == 0
    for row in (rows[0], rows[-1]):
        found = store.get_appraisal(row["uid"], url=url)
        assert found is not None and found["price"] == row["price"]
    writer.close()


def test_writer_keeps_rows_while_the_store_is_down(tmp_path: Path, stone: dict) -> None:
    url = f"sqlite:///{tmp_path / 'later' / 'store.db'}"  # its folder does not exist yet
    writer = store.AppraisalWriter(url, interval=0.05)
    row = store.appraisal_row(stone, 1234.0)
    writer.submit([row])
    assert not writer.flush(timeout=0.5)  # cannot be written: still queued, not dropped
    assert writer.failures >= 1 and writer.last_error
    (tmp_path / "later").mkdir()
    assert writer.flush(timeout=20)
    found = store.get_appraisal(row["uid"], url=url)
    assert found is not None and found["price"] == 1234.0
    writer.close()


def test_writer_queue_is_bounded_while_the_store_is_down(tmp_path: Path, stone: dict) -> None:
    url = f"sqlite:///{tmp_path / 'later' / 'store.db'}"  # its folder does not exist yet
    writer = store.AppraisalWriter(url, interval=0.05, max_queued=3)
    kept = [store.appraisal_row(stone, 1.0), store.appraisal_row(stone, 2.0)]
    writer.submit(kept)
    writer.submit([store.appraisal_row(stone, 3.0), store.appraisal_row(stone, 4.0)])
    assert writer.dropped == 2 and writer.queued == 2
    (tmp_path / "later").mkdir()
    assert writer.flush(timeout=20)
    assert writer.written == 2 and writer.queued == 0
    assert all(store.get_appraisal(r["uid"], url=url) for r in kept)
    writer.close()


def test_writer_drops_only_the_row_the_store_refuses(url: str, stone: dict) -> None:
    writer = store.AppraisalWriter(url, interval=0.05)
    first = store.appraisal_row(stone, 1.0)
    writer.submit([first])
    assert writer.flush(timeout=20)
    again = dict(first)  # the same id again: refused by the unique index
    fine = [store.appraisal_row(stone, 2.0), store.appraisal_row(stone, 3.0)]
    writer.submit([fine[0], again, fine[1]])
    assert writer.flush(timeout=20)  # not stuck retrying the batch forever
    assert writer.refused == 1 and writer.written == 3 and writer.queued == 0
    for row in fine:
        assert store.get_appraisal(row["uid"], url=url) is not None
    writer.close()


def test_bulk_insert_stores_what_the_orm_would(url: str, stone: dict) -> None:
    """The writer's driver-level insert (store.bulk_insert) against SQLAlchemy's own: every
    column reads back the same, the time zone and missing values included."""
    store.upgrade(url)
    when = clock.now()
    rows = [
        store.appraisal_row(
            stone,
            1234.5,
            price_low=1000.0,
            price_high=1500.25,
            model_version="7",
            latency_ms=0.25,
            warnings=["few stones"],
            created_at=when,
        ),
        store.appraisal_row(stone, 99.0, created_at=when),  # no range, model or latency
    ]
    elsewhere = when.astimezone(timezone(timedelta(hours=5)))  # the same instant, another zone
    rows.append(store.appraisal_row(stone, 5.0, created_at=elsewhere))
    twins = [{**row, "uid": store.new_uid()} for row in rows]
    with store.engine(url).begin() as conn:
        store.bulk_insert(conn, store.APPRAISALS, rows)
        conn.execute(insert(store.APPRAISALS), twins)
        # rows without a column the table fills in (created_at) take SQLAlchemy's way
        defaults = [{k: v for k, v in row.items() if k != "created_at"} for row in rows[:1]]
        defaults[0]["uid"] = filled = store.new_uid()
        store.bulk_insert(conn, store.APPRAISALS, defaults)
    with store.session(url) as s:
        found = {a.uid: a for a in s.scalars(select(store.Appraisal))}
    columns = [c.key for c in store.APPRAISALS.columns if c.key not in ("id", "uid")]
    for row, twin in zip(rows, twins, strict=True):
        mine, theirs = found[row["uid"]], found[twin["uid"]]
        assert [getattr(mine, c) for c in columns] == [getattr(theirs, c) for c in columns]
    assert found[filled].created_at is not None


def test_jobs_are_recorded(url: str) -> None:
    job = jobs.create_job("retrain", {"trials": 2}, url=url)
    assert jobs.active_job("retrain", url=url) == job
    jobs.update_job(job, url=url, status="succeeded", result={"version": "2"})
    found = jobs.get_job(job, url=url)
    assert found is not None and found["status"] == "succeeded"
    assert found["result"] == {"version": "2"} and found["params"] == {"trials": 2}
    assert jobs.active_job("retrain", url=url) is None
    assert jobs.get_job("nope", url=url) is None


def test_writer_writes_a_large_submission_in_statements_of_max_rows(
    url: str, stone: dict, monkeypatch
) -> None:
    """Defect (review): one queued item became a whole request, so a 10,000-stone batch went in
    one statement past max_rows. Each statement now holds max_rows rows at most, and a refused
    row in a later chunk drops only itself."""
    store.upgrade(url)
    sizes: list[int] = []
    real = store.bulk_insert

    def counting(conn, table, rows):
        sizes.append(len(rows))
        return real(conn, table, rows)

    monkeypatch.setattr(store.writer, "bulk_insert", counting)  # where the writer looks
    writer = store.AppraisalWriter(url, interval=0.05, max_rows=40)
    taken = store.appraisal_row(stone, 1.0)
    writer.submit([taken])
    assert writer.flush(timeout=20)
    rows = [store.appraisal_row(stone, 2.0 + i) for i in range(100)]
    rows[70] = dict(taken)  # refused by the unique index, in the second chunk
    writer.submit(rows)
    assert writer.flush(timeout=20)
    assert max(sizes) <= 40 and sum(sizes[1:]) >= 100
    assert writer.written == 100 and writer.refused == 1 and writer.queued == 0
    assert all(store.get_appraisal(r["uid"], url=url) for r in rows[:70] + rows[71:])
    writer.close()


def test_check_mode_never_migrates_and_db_upgrade_does(url: str, monkeypatch) -> None:
    """Issue 13: `appraiser db upgrade` migrates once per deploy; processes set to
    APPRAISER_MIGRATE=check only check, and refuse an outdated store with the command to run."""
    from typer.testing import CliRunner

    from appraiser.cli import app

    monkeypatch.setenv("APPRAISER_MIGRATE", "check")
    runner = CliRunner()
    with pytest.raises(store.StoreOutdated, match="appraiser db upgrade"):
        store.ready(url)
    assert "appraisals" not in inspect(store.engine(url)).get_table_names()  # nothing created
    outdated = runner.invoke(app, ["db", "upgrade", "--check"])
    assert outdated.exit_code == 1 and "no schema yet" in outdated.output

    done = runner.invoke(app, ["db", "upgrade"])
    assert done.exit_code == 0, done.output
    current, head = store.revisions(url)
    assert current == head and head in done.output and "was empty" in done.output
    assert "appraisals" in inspect(store.engine(url)).get_table_names()
    assert runner.invoke(app, ["db", "upgrade", "--check"]).exit_code == 0
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0  # again: nothing to do
    store.ready(url)  # current: a checking process works
    store.record_appraisal(schema.example_stone(), 1000.0, url=url)
    # a deploy migrated past this code (it still serves, or was rolled back to): works on
    with store.engine(url).begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'f999'")
    store.check_schema(url)


def test_the_pool_follows_the_settings(monkeypatch) -> None:
    """Issue 13: pool size, overflow and pre-ping from the environment (a Cloud SQL connection
    budget is instances x (size + overflow)); SQLite files keep no pre-ping."""
    monkeypatch.setenv("APPRAISER_POOL_SIZE", "3")
    monkeypatch.setenv("APPRAISER_MAX_OVERFLOW", "2")
    monkeypatch.setenv("APPRAISER_POOL_PRE_PING", "false")
    url = "postgresql+psycopg://nobody@127.0.0.1:9/nothing"  # never connected to
    try:
        pool: Any = store.engine(url).pool  # a QueuePool: its size and overflow
        assert pool.size() == 3 and pool._max_overflow == 2
        assert pool._pre_ping is False
    finally:
        store.dispose(url)
    monkeypatch.delenv("APPRAISER_POOL_PRE_PING")
    try:
        again: Any = store.engine(url).pool
        assert again._pre_ping is True
    finally:
        store.dispose(url)
