"""Prices as of a day (issue 25, the serving side): every answer carries the market level it stands
on, its price and range are the model's on the base level times that level, `as_of` picks the
day, the reasons still add up with the market's term, and with no stored series nothing changes.
On SQLite and PostgreSQL, through the API, `appraiser predict` and `appraiser explain`."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from appraiser import clock, features, market, schema
from appraiser.api import create_app
from appraiser.cli import app as cli
from appraiser.config import settings
from appraiser.features import REASONS
from appraiser.market_day import MARKET_TERM, MarketDay, MarketLevels
from appraiser.store import market as stored_market
from tests.conftest import API_KEY

runner = CliRunner()
ADMIN = {"Authorization": f"Bearer {API_KEY}"}

SERIES = market.Series(
    (
        market.Level(date(2025, 1, 1), 1.10, 1.05, 1.15, stones=120, observed=1.1),
        market.Level(date(2025, 2, 1), 1.20, 1.16, 1.24, stones=80, observed=1.2),
        market.Level(date(2025, 3, 1), 1.25, 1.22, 1.28, stones=90, observed=1.26),
    ),
    model_version="1",
    computed_at=clock.now(),
)
BEFORE = "2024-12-31"  # before the first estimate: the base level


@pytest.fixture
def client(with_champion: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The API serving the trained champion, its store (SQLite or PostgreSQL) with no series."""
    monkeypatch.setenv("APPRAISER_API_KEY", API_KEY)
    settings.cache_clear()
    with TestClient(create_app()) as c:
        yield c
    settings.cache_clear()


def _with_series(client: TestClient, series: market.Series = SERIES) -> None:
    """Store `series` and let the server read it as its poll would."""
    stored_market.save(series)
    assert client.app.state.ctx.champions.market.check()  # type: ignore[attr-defined]


def _base_prices(client: TestClient, stone: dict) -> np.ndarray:
    """The champion's price, low and high on the base level, unrounded."""
    model = client.app.state.ctx.champions.current.model  # type: ignore[attr-defined]
    return np.array([v[0] for v in model.predict_matrix(features.encode_stones([stone]))])


def _post(client: TestClient, stone: dict, query: str = "") -> dict:
    answer = client.post(f"/v1/appraisals{query}", json=stone)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_an_answer_is_the_base_price_times_the_level_of_its_day(
    client: TestClient, stone: dict
) -> None:
    _with_series(client)
    base = _base_prices(client, stone)
    today = _post(client, stone)
    # today is past the last month: March's level carried forward
    assert today["market_level"] == {
        "level": 1.25,
        "low": 1.22,
        "high": 1.28,
        "month": "2025-03-01",
        "as_of": clock.today().isoformat(),
    }
    shown = [today["price"], today["price_low"], today["price_high"]]
    assert shown == pytest.approx(base * 1.25, abs=0.006)

    february = _post(client, stone, "?as_of=2025-02-14")
    assert february["market_level"]["level"] == 1.2
    assert february["market_level"]["month"] == "2025-02-01"
    assert february["market_level"]["as_of"] == "2025-02-14"
    assert february["price"] == pytest.approx(base[0] * 1.2, abs=0.006)

    before = _post(client, stone, f"?as_of={BEFORE}")
    assert before["market_level"] == {
        "level": 1.0,
        "low": 1.0,
        "high": 1.0,
        "month": None,
        "as_of": BEFORE,
    }
    assert before["price"] == round(float(base[0]), 2)

    later = (clock.today() + timedelta(days=400)).isoformat()  # allowed: carried forward
    assert _post(client, stone, f"?as_of={later}")["market_level"]["level"] == 1.25


def test_batches_and_lists_stand_on_the_level_of_their_day(client: TestClient, stone: dict) -> None:
    _with_series(client)
    base = _base_prices(client, stone)
    batch = client.post("/v1/appraisals/batch?as_of=2025-01-20", json={"diamonds": [stone] * 2})
    assert batch.status_code == 200, batch.text
    for answer in batch.json()["appraisals"]:
        assert answer["market_level"]["level"] == 1.1 and answer["market_level"]["as_of"] == (
            "2025-01-20"
        )
        assert answer["price"] == pytest.approx(base[0] * 1.1, abs=0.006)

    listed = pd.DataFrame([stone]).to_csv(index=False).encode()

    def price_list(query: str) -> dict:
        sent = client.post(
            f"/v1/appraisals/list{query}", files={"file": ("list.csv", io.BytesIO(listed))}
        )
        assert sent.status_code == 200, sent.text
        return sent.json()

    today, before = price_list(""), price_list(f"?as_of={BEFORE}")
    assert today["market_level"]["level"] == 1.25 and before["market_level"]["month"] is None
    assert before["rows"][0]["price"] == round(float(base[0]), 2)
    for name, exact in zip(("price", "price_low", "price_high"), base, strict=True):
        assert today["rows"][0][name] == pytest.approx(exact * 1.25, abs=0.006)


def test_the_reasons_add_up_to_the_price_with_the_market_term(
    client: TestClient, stone: dict
) -> None:
    _with_series(client)
    base = _base_prices(client, stone)
    asking = {**stone, "asking_price": round(float(base[0]))}
    moved = _post(client, {**asking, "asking_price": asking["asking_price"] * 1.25}, "?explain=1")
    flat = _post(client, asking, f"?explain=1&as_of={BEFORE}")

    reasons = moved["contributions"]
    assert list(reasons) == [*REASONS, MARKET_TERM]
    assert reasons[MARKET_TERM] == pytest.approx(base[0] * 0.25, abs=0.006)
    assert moved["baseline"] + sum(reasons.values()) == pytest.approx(moved["price"], abs=0.011)
    # the stone's own reasons are the base level's: the level moves the price, not the stone
    for name in REASONS:
        assert reasons[name] == pytest.approx(flat["contributions"][name], abs=0.011)
    assert moved["baseline"] == pytest.approx(flat["baseline"], abs=0.02)
    # the same stone one grade worse, on the same level
    worse, worse_flat = (a["what_if"]["color"]["worse"]["price"] for a in (moved, flat))
    assert worse == pytest.approx(worse_flat * 1.25, abs=0.02)
    # an asking price 25% higher is as good a deal today as the base one was on the base level
    assert moved["deal"]["bargain_probability"] == flat["deal"]["bargain_probability"]
    # at the base level there is no market term at all
    assert set(flat["contributions"]) == set(REASONS)


def test_with_no_stored_series_answers_are_the_models_prices(
    client: TestClient, stone: dict
) -> None:
    """Level 1.0 on every day: the numbers are exactly what they were before the market level
    (the model's price rounded to the cent, the reasons without a market term)."""
    current = client.app.state.ctx.champions.current  # type: ignore[attr-defined]
    matrix = features.encode_stones([stone])
    exact = [np.round(v, 2).tolist()[0] for v in current.model.predict_matrix(matrix)]
    for query in ("", "?as_of=2025-02-14", "?as_of=2031-01-01"):
        answer = _post(client, stone, query)
        assert [answer["price"], answer["price_low"], answer["price_high"]] == exact
        assert answer["market_level"]["level"] == 1.0 and answer["market_level"]["month"] is None
    explained = _post(client, stone, "?explain=true")
    assert set(explained["contributions"]) == set(REASONS)
    assert explained["baseline"] + sum(explained["contributions"].values()) == pytest.approx(
        exact[0], abs=0.011
    )


@pytest.mark.parametrize("path", ["/v1/appraisals", "/v1/appraisals/batch", "/v1/appraisals/list"])
def test_a_bad_as_of_is_a_422_naming_it(client: TestClient, stone: dict, path: str) -> None:
    for bad in ("2025-13-01", "someday", "14/02/2025"):
        if path.endswith("list"):
            answer = client.post(f"{path}?as_of={bad}", files={"file": ("a.csv", b"carat\n1")})
        else:
            body = {"diamonds": [stone]} if path.endswith("batch") else stone
            answer = client.post(f"{path}?as_of={bad}", json=body)
        assert answer.status_code == 422, answer.text
        assert answer.json()["message"].startswith("as_of:")
        assert answer.json()["detail"][0]["loc"] == ["query", "as_of"]


def test_the_server_keeps_the_series_in_memory_and_follows_a_refresh(
    with_champion: str, stone: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No request reads the series from the store; the champion's poll reloads it once a
    refresh rewrote it (its computed_at changed), and only then."""
    monkeypatch.setenv("APPRAISER_RELOAD_SECONDS", "0.3")
    settings.cache_clear()
    loads: list[int] = []
    real_load = stored_market.load

    def counted_load(*args: object) -> market.Series:
        loads.append(1)
        return real_load(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(stored_market, "load", counted_load)
    stored_market.save(SERIES)
    with TestClient(create_app()) as client:
        watched = client.app.state.ctx.champions.market  # type: ignore[attr-defined]
        assert watched.series.months == SERIES.months and len(loads) == 1
        for _ in range(5):
            assert _post(client, stone)["market_level"]["level"] == 1.25
        time.sleep(1)  # polls in between: the series did not change, nothing is read again
        assert len(loads) == 1
        newer = market.Series(
            (*SERIES.months, market.Level(date(2025, 4, 1), 1.3, 1.27, 1.33, stones=50)),
            computed_at=clock.now(),
        )
        stored_market.save(newer)
        deadline = time.monotonic() + 20
        while _post(client, stone)["market_level"]["level"] != 1.3:
            assert time.monotonic() < deadline, "the server did not follow the refresh"
            time.sleep(0.1)
        assert len(loads) == 2
        stored_market.save(market.Series(computed_at=clock.now()))  # emptied: the base again
        deadline = time.monotonic() + 20
        while _post(client, stone)["market_level"]["level"] != 1.0:
            assert time.monotonic() < deadline, "the server did not follow the refresh"
            time.sleep(0.1)
    settings.cache_clear()


def test_a_store_that_fails_keeps_the_level_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    levels = MarketLevels(url="sqlite:////nonexistent/folder/store.db")
    levels.series = SERIES
    assert not levels.check() and levels.last_error
    assert levels.on(date(2025, 2, 3)).factor == 1.2


def test_the_level_of_a_day_follows_a_new_series() -> None:
    """The day's level is remembered per series: a reload is seen at once, even for a day
    already asked."""
    levels = MarketLevels()
    day = date(2025, 3, 9)
    assert levels.on(day).is_base and levels.on(day) is levels.on(day)
    levels.series = SERIES
    found = levels.on(day)
    assert found.factor == 1.25 and found.field["month"] == "2025-03-01"
    assert "the estimate of 2025-03" in found.describe()
    assert "the base" in MarketDay(day).describe()


def test_the_level_read_without_sqlalchemy_is_the_stores(
    home_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`appraiser predict` reads the default SQLite store's levels with sqlite3 (start-up): the
    same months as store.market.load reads through SQLAlchemy; the base with no store or table."""
    from appraiser import store
    from appraiser.market_day import _levels_sqlite, stored_on

    monkeypatch.delenv("APPRAISER_DATABASE_URL", raising=False)
    store.ready()
    assert stored_on(date(2025, 2, 3)).is_base  # a store with no series yet
    stored_market.save(SERIES)
    fast = _levels_sqlite(home_copy / "appraiser.db")
    assert fast.months == stored_market.load().months == SERIES.months
    assert stored_on(date(2025, 2, 3)).level == SERIES.months[1]
    monkeypatch.setenv("APPRAISER_DATABASE_URL", store.database_url())  # the same file
    assert stored_on(date(2025, 2, 3)).level == SERIES.months[1]  # now through SQLAlchemy
    assert _levels_sqlite(tmp_path / "none.db").months == ()
    (tmp_path / "empty.db").write_bytes(b"")
    assert _levels_sqlite(tmp_path / "empty.db").months == ()


def _predict(source: Path, target: Path, *args: str) -> pd.DataFrame:
    done = runner.invoke(cli, ["predict", str(source), "-o", str(target), *args])
    assert done.exit_code == 0, done.output
    return pd.read_csv(target)


def test_predict_prices_a_file_as_of_a_day(
    with_champion: str, public: pd.DataFrame, tmp_path: Path
) -> None:
    stones = public.sample(40, random_state=3).drop(columns="price")
    source = tmp_path / "stones.csv"
    stones.to_csv(source, index=False)
    plain = _predict(source, tmp_path / "plain.csv")  # no series yet: the model's prices
    from appraiser.predict import Appraiser
    from appraiser.scoring import score_frame

    model = Appraiser.for_scoring().model
    expected = score_frame(model, pd.read_csv(source))
    for name in ("price", "price_low", "price_high"):
        assert plain[name].tolist() == expected[name].tolist()
    assert set(plain["market_level"]) == {1.0}
    assert set(plain["as_of"]) == {clock.today().isoformat()}

    stored_market.save(SERIES)
    today = _predict(source, tmp_path / "today.csv")
    february = _predict(source, tmp_path / "feb.csv", "--as-of", "2025-02-14")
    assert set(today["market_level"]) == {1.25} and set(february["as_of"]) == {"2025-02-14"}
    assert set(february["market_level"]) == {1.2}
    exact = model.predict(pd.read_csv(source)[list(schema.FEATURES)])
    for name in ("price", "price_low", "price_high"):
        assert np.allclose(today[name], exact[name] * 1.25, atol=0.006)
        assert np.allclose(february[name], exact[name] * 1.2, atol=0.006)
    columns = list(today.columns)
    assert columns[columns.index("price_high") + 1 :][:2] == ["market_level", "as_of"]
    said = runner.invoke(cli, ["predict", str(source), "-o", str(tmp_path / "x.csv")]).output
    assert "market level 1.250" in " ".join(said.split())
    refused = runner.invoke(cli, ["predict", str(source), "-o", "y.csv", "--as-of", "2025-2-30"])
    assert refused.exit_code == 2 and "--as-of" in refused.output


def test_explain_adds_the_market_term(with_champion: str, stone: dict) -> None:
    stored_market.save(SERIES)
    options = [f"--{k}={v}" for k, v in stone.items()]
    done = runner.invoke(cli, ["explain", *options, "--json", "--as-of", "2025-01-31"])
    assert done.exit_code == 0, done.output
    answer = json.loads(done.stdout)
    assert answer["market_level"]["level"] == 1.1 and answer["market_level"]["as_of"] == (
        "2025-01-31"
    )
    reasons = answer["contributions"]
    assert reasons[MARKET_TERM] == pytest.approx(answer["price"] / 1.1 * 0.1, rel=1e-9)
    assert answer["baseline"] + sum(reasons.values()) == pytest.approx(answer["price"], rel=1e-9)
    shown = " ".join(runner.invoke(cli, ["explain", *options]).output.split())
    assert "market since the collection" in shown and "market level 1.250" in shown


def test_the_monitoring_view_carries_the_series_the_server_prices_with(
    client: TestClient,
) -> None:
    empty = client.get("/v1/monitoring", headers=ADMIN)
    assert empty.status_code == 200, empty.text
    assert empty.json()["market"]["series"] == []
    assert empty.json()["market"]["current"]["level"] == 1.0
    _with_series(client)
    shown = client.get("/v1/monitoring", headers=ADMIN).json()["market"]
    assert [(m["month"], m["level"], m["low"], m["high"]) for m in shown["series"]] == [
        (m.month.isoformat(), m.level, m.low, m.high) for m in SERIES.months if m.month
    ]
    assert shown["current"]["level"] == 1.25
    assert shown["current"]["as_of"] == clock.today().isoformat()
