"""Three store defects, each test on SQLite and PostgreSQL; each failed on the code before the fix.

1. A file with an extra `line` or `batch_id` column whose stones were already stored crashed
   ingestion (the duplicates' raw values came from the unfiltered table).
2. Engines did not ping pooled connections: after a PostgreSQL restart or failover the first use of
   each pooled connection failed.
3. The appraisal writer retried rows it could not write only when new rows came: once traffic
   stopped, they waited forever, even with the store back.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from appraiser import schema, store
from appraiser.ingest import DUPLICATE_OF_STORE, accepted_stones, ingest_file, rejected


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Poll `condition` until it holds or `seconds` pass; whether it held."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- 1. ingestion of duplicates from a file with extra columns ----------------------------------


def test_extra_columns_do_not_break_duplicate_handling(
    store_url: str, public: pd.DataFrame, tmp_path: Path
) -> None:
    stones = public.sample(60, random_state=7).reset_index(drop=True)
    first = tmp_path / "first.csv"
    stones.head(40).to_csv(first, index=False)
    report = ingest_file(first, screen=False, url=store_url)
    assert (report.rows_read, report.rows_accepted, report.rows_rejected) == (40, 40, 0)
    first_batch = report.batch_id

    # the 40 stones again, 20 new ones and a bad row, with a `line` column of the sender's own
    bad = stones.head(1).astype(object).assign(price=-1)
    with_line = pd.concat([stones.astype(object), bad], ignore_index=True)
    with_line.insert(0, "line", range(1000, 1000 + len(with_line)))
    second = tmp_path / "with_line.csv"
    with_line.to_csv(second, index=False)
    report = ingest_file(second, screen=False, url=store_url)
    assert not report.already_ingested and report.batch_id is not None
    assert (report.rows_read, report.rows_accepted, report.rows_rejected) == (61, 20, 41)
    assert report.duplicates_of_store == 40
    assert report.reasons[DUPLICATE_OF_STORE.format(batch=first_batch)] == 40
    second_batch = report.batch_id

    # the stored lines are the file's lines, not the values of the extra `line` column
    stored = accepted_stones(statuses=None, engine=store.ready(store_url))
    new = stored[stored["batch_id"] == second_batch]
    assert sorted(new["line"]) == list(range(42, 62))
    kept = rejected(second_batch, engine=store.ready(store_url))
    assert sorted(kept["line"]) == [*range(2, 42), 62]
    # the raw values kept are the schema's columns only, for duplicates and bad rows alike
    assert list(kept.columns) == ["batch_id", "line", "reasons", *schema.COLUMNS]
    assert kept["carat"].notna().all()

    # every stone again, with a `batch_id` column (as an export of the store would have)
    with_batch = stones.assign(batch_id=99)
    third = tmp_path / "with_batch_id.csv"
    with_batch.to_csv(third, index=False)
    report = ingest_file(third, screen=False, url=store_url)
    assert not report.already_ingested and report.batch_id is not None
    assert (report.rows_read, report.rows_accepted, report.rows_rejected) == (60, 0, 60)
    assert report.duplicates_of_store == 60
    assert report.reasons == {
        DUPLICATE_OF_STORE.format(batch=first_batch): 40,
        DUPLICATE_OF_STORE.format(batch=second_batch): 20,
    }
    kept = rejected(report.batch_id, engine=store.ready(store_url))
    assert list(kept.columns) == ["batch_id", "line", "reasons", *schema.COLUMNS]
    assert set(kept["batch_id"]) == {report.batch_id}  # the store's batch, not the file's 99
    assert len(accepted_stones(statuses=None, engine=store.ready(store_url))) == 60


# --- 2. pooled connections survive a server restart ---------------------------------------------


def test_engines_ping_pooled_connections(store_url: str) -> None:
    eng = store.engine(store_url)
    # a server database can drop connections behind the pool's back; a SQLite file cannot
    assert eng.pool._pre_ping is (eng.dialect.name != "sqlite")


def test_store_works_after_its_pooled_connection_was_killed(store_url: str) -> None:
    eng = store.ready(store_url)
    if eng.dialect.name != "postgresql":
        pytest.skip("only a server can end a pooled connection behind the pool's back")
    with eng.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    assert eng.pool.checkedin() >= 1  # type: ignore[attr-defined]

    # as a restart or failover does: the server ends the session the pool still holds
    admin = create_engine(store_url, poolclass=NullPool)
    try:
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()

        def gone() -> bool:
            with admin.connect() as conn:
                query = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
                return conn.execute(query, {"pid": pid}).scalar_one() == 0

        assert wait_for(gone)
    finally:
        admin.dispose()

    # the next requests go through, on a fresh connection
    uid = store.record_appraisal(schema.example_stone(), 4321.0, url=store_url)
    found = store.get_appraisal(uid, url=store_url)
    assert found is not None and found["price"] == 4321.0
    with store.session(store_url) as s:
        assert s.scalar(select(func.pg_backend_pid())) != pid


# --- 3. the appraisal writer retries on its own -------------------------------------------------


class Outage:
    """Makes the writer's store unreachable while `down` is set; notes when each write tried."""

    def __init__(self, real: Callable[..., Engine]) -> None:
        self.real = real
        self.down = threading.Event()
        self.failed_at: list[float] = []

    def ready(self, url: str | None = None) -> Engine:
        if self.down.is_set():
            self.failed_at.append(time.monotonic())
            raise OperationalError("INSERT", {}, Exception("connection refused"))
        return self.real(url)


def test_writer_retries_pending_rows_when_traffic_stops(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.ready(store_url)
    outage = Outage(store.ready)
    monkeypatch.setattr(store.writer, "ready", outage.ready)  # where the writer looks
    outage.down.set()
    writer = store.AppraisalWriter(url=store_url, interval=0.05)
    try:
        rows = [store.appraisal_row(schema.example_stone(), 1000.0 + i) for i in range(25)]
        writer.submit(rows)
        # the store down and no more rows coming, the writer still tries again, now and then
        assert wait_for(lambda: writer.failures >= 3), writer.failures
        failed = list(outage.failed_at)
        # but it waits between attempts (no busy loop)
        gaps = [b - a for a, b in itertools.pairwise(failed)]
        assert min(gaps) >= 0.2, gaps
        assert writer.written == 0 and writer.queued == 25

        outage.down.clear()  # the store is back; no request comes any more
        assert wait_for(lambda: writer.written == 25, seconds=10), (
            writer.written,
            writer.failures,
            writer.last_error,
        )
        assert writer.failures == len(outage.failed_at)
        assert (writer.queued, writer.refused, writer.dropped) == (0, 0, 0)
        with store.session(store_url) as s:
            stored = s.scalars(select(store.Appraisal.uid)).all()
        assert sorted(stored) == sorted(r["uid"] for r in rows)
    finally:
        outage.down.clear()
        writer.close(timeout=5)
