"""Dated stones in the store and the market level kept there, on SQLite and PostgreSQL: a file's
`appraised_at` is checked by the schema's rule and stored, a row without one reads its batch's
day, and the series survives a round trip and a refresh."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from alembic import command
from sqlalchemy import inspect, select

from appraiser import clock, ingest, market, schema, store
from appraiser.store import market as stored_market
from tests import pg

GOOD = [
    (0.23, "Ideal", "E", "SI2", 61.5, 55, 3.95, 3.98, 2.43, 326),
    (0.21, "Premium", "E", "SI1", 59.8, 61, 3.89, 3.84, 2.31, 326),
    (0.29, "Premium", "I", "VS2", 62.4, 58, 4.20, 4.23, 2.63, 334),
    (0.31, "Good", "J", "SI2", 63.3, 58, 4.34, 4.35, 2.75, 335),
    (0.24, "Very Good", "J", "VVS2", 62.8, 57, 3.94, 3.96, 2.48, 336),
    (0.24, "Very Good", "I", "VVS1", 62.3, 57, 3.95, 3.98, 2.47, 336),
]


@pytest.fixture(params=pg.BACKENDS)
def url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The default store, migrated and empty, on each backend (tests/pg.py)."""
    for url in pg.backend_url(request.param, tmp_path, monkeypatch):
        store.upgrade(url)
        yield url


def _dated_csv(path: Path, dates: list[str]) -> Path:
    frame = pd.DataFrame(GOOD[: len(dates)], columns=list(schema.COLUMNS))
    frame[schema.APPRAISED_AT] = dates
    frame.to_csv(path, index=False)
    return path


def test_appraised_at_is_checked_and_stored(url: str, tmp_path: Path) -> None:
    tomorrow = (clock.today() + timedelta(days=1)).isoformat()
    dates = ["2025-03-14", "", "14/03/2025", tomorrow, "1989-12-31", "2025-02-30"]
    report = ingest.ingest_file(_dated_csv(tmp_path / "dated.csv", dates), source="expert")
    assert (report.rows_accepted, report.rows_rejected) == (2, 4)
    refused = ingest.rejected(report.batch_id)
    assert refused["line"].tolist() == [4, 5, 6, 7]
    assert all(reason.startswith(schema.APPRAISED_AT_RULE) for reason in refused["reasons"])
    assert "'14/03/2025'" in refused.loc[0, "reasons"]
    assert refused[schema.APPRAISED_AT].tolist() == dates[2:]  # the raw value is kept

    with store.session(url) as s:
        kept = s.scalars(select(store.StoredDiamond.appraised_at).order_by("id")).all()
        received = s.scalars(select(store.Batch.received_at)).one()
    assert kept == [date(2025, 3, 14), None]  # stored as given: the empty cell stays empty
    stones = stored_market.dated_stones()
    assert stones[schema.APPRAISED_AT].tolist() == [date(2025, 3, 14), clock.utc(received).date()]
    assert stones["source"].tolist() == ["expert", "expert"]
    assert stones["price"].tolist() == [326.0, 326.0]


def test_a_file_without_dates_reads_its_batch_day(url: str, tmp_path: Path) -> None:
    path = tmp_path / "plain.csv"
    pd.DataFrame(GOOD, columns=list(schema.COLUMNS)).to_csv(path, index=False)
    report = ingest.ingest_file(path, source="old expert")
    assert report.rows_accepted == len(GOOD) and report.rows_rejected == 0
    with store.session(url) as s:
        assert set(s.scalars(select(store.StoredDiamond.appraised_at)).all()) == {None}
    stones = stored_market.dated_stones()
    assert set(stones[schema.APPRAISED_AT]) == {clock.today()}
    assert len(stored_market.dated_stones(statuses=("held",))) == 0


def test_a_parquet_date_column_is_stored_by_its_day(url: str, tmp_path: Path) -> None:
    frame = pd.DataFrame(GOOD[:2], columns=list(schema.COLUMNS))
    frame[schema.APPRAISED_AT] = pd.to_datetime(["2024-11-02", None])
    frame.to_parquet(tmp_path / "dated.parquet", index=False)
    report = ingest.ingest_file(tmp_path / "dated.parquet")
    assert report.rows_accepted == 2
    with store.session(url) as s:
        kept = s.scalars(select(store.StoredDiamond.appraised_at).order_by("id")).all()
    assert kept == [date(2024, 11, 2), None]


def _series() -> market.Series:
    rng = np.random.default_rng(0)
    rows = []
    for k, (source, markup) in enumerate((("a", 1.0), ("b", 1.0), ("c", 1.3)) * 2):
        month = date(2025, 1 + k // 3, 1)
        predicted = rng.uniform(500, 5000, 40)
        price = predicted * 1.2 * markup * np.exp(rng.normal(0, 0.05, 40))
        for p, q in zip(price, predicted, strict=True):
            rows.append({"appraised_at": month, "price": p, "predicted": q, "source": source})
    # a month without stones in between: stored like the others
    rows.append({"appraised_at": date(2025, 4, 9), "price": 1200.0, "predicted": 1000.0})
    return market.estimate(pd.DataFrame(rows), model_version="3")


def test_the_series_survives_the_store(url: str) -> None:
    assert stored_market.load() == market.Series()  # before any refresh: the base level
    series = _series()
    assert {e.source for e in series.excluded} == {"c"} and len(series.months) == 4
    stored_market.save(series)
    back = stored_market.load()
    assert back.months == series.months
    assert back.excluded == series.excluded
    assert back.model_version == "3"
    assert back.computed_at is not None
    assert abs(back.computed_at - series.computed_at) < timedelta(seconds=1)  # type: ignore[operator]
    stored_market.save(market.Series((series.months[0],)))  # a refresh replaces it whole
    assert stored_market.load().months == (series.months[0],)
    assert stored_market.load().excluded == ()


def test_refresh_prices_the_stored_stones(url: str, tmp_path: Path) -> None:
    frame = pd.DataFrame(GOOD, columns=list(schema.COLUMNS))
    frame[schema.APPRAISED_AT] = ["2025-05-02"] * 3 + ["2025-07-20"] * 3
    frame.to_csv(tmp_path / "dated.csv", index=False)
    ingest.ingest_file(tmp_path / "dated.csv", source="expert")
    asked: list[pd.DataFrame] = []

    def half_price(stones: pd.DataFrame) -> np.ndarray:
        asked.append(stones)
        return stones["carat"].map(dict((r[0], r[-1] / 2) for r in GOOD)).to_numpy()

    series = stored_market.refresh(half_price, "7")
    assert list(asked[0].columns) == list(schema.FEATURES)
    assert [m.month for m in series.months] == [date(2025, m, 1) for m in (5, 6, 7)]
    assert [m.stones for m in series.months] == [3, 0, 3]
    assert series.months[0].observed == pytest.approx(2.0)
    assert stored_market.load().months == series.months
    assert stored_market.load().model_version == "7"


def test_refresh_without_a_champion_changes_nothing(url: str) -> None:
    stored_market.save(_series())
    from appraiser import champion, market_loop

    assert market_loop.refresh(champion.loaded) is None
    assert len(stored_market.load().months) == 4


def test_migration_0007_goes_down_and_up(url: str) -> None:
    config = store.alembic_config(url)
    command.downgrade(config, "0005")
    engine = store.engine(url)
    assert "market_levels" not in inspect(engine).get_table_names()
    assert "appraised_at" not in {c["name"] for c in inspect(engine).get_columns("diamonds")}
    store.upgrade(url)
    assert "appraised_at" in {c["name"] for c in inspect(engine).get_columns("diamonds")}
