"""Issue 25, the loop side: the guard knows the market, sources are who appraised, the level stays
fresh, and retraining puts every price on one level. Store tests run on SQLite and PostgreSQL
(conftest.store_url through with_champion)."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from appraiser import (
    audit,
    batches,
    champion,
    ingest,
    market,
    market_loop,
    market_view,
    pipeline,
    schema,
    store,
)
from appraiser.store import market as stored_market

# --- the comparison itself ----------------------------------------------------------------------

MARCH, APRIL = date(2025, 3, 1), date(2025, 4, 1)


def _ratios(level: float, n: int, seed: int) -> np.ndarray:
    return np.log(level) + np.random.default_rng(seed).normal(0, 0.08, n)


def test_a_month_that_agrees_with_another_source_is_judged_around_its_own_level() -> None:
    months = np.array([MARCH] * 100, dtype=object)
    ratios = _ratios(1.2, 100, 1)
    refs = {MARCH: [market_view.Reference(np.log(1.19), "source 'b', 80 stones")]}
    seen = market_view.compare(months, ratios, refs, {})
    (m,) = seen.months
    assert m.agrees is True and seen.departs == [] and seen.referenced
    assert np.allclose(seen.centre, np.median(ratios))
    assert m.market == pytest.approx(1.19) and m.by == "source 'b', 80 stones"


def test_a_month_that_departs_is_judged_around_the_markets_level() -> None:
    months = np.array([MARCH] * 60 + [APRIL] * 60, dtype=object)
    ratios = np.concatenate([_ratios(1.56, 60, 2), _ratios(1.2, 60, 3)])
    refs = {
        MARCH: [market_view.Reference(np.log(1.2), "a"), market_view.Reference(np.log(1.0), "b")],
        APRIL: [market_view.Reference(np.log(1.21), "a")],
    }
    seen = market_view.compare(months, ratios, refs, {})
    assert [m.agrees for m in seen.months] == [False, True]
    assert seen.departs[0].market == pytest.approx(1.2)  # the nearest level the market shows
    assert np.allclose(seen.centre[:60], np.log(1.2))


def test_a_month_nobody_else_priced_is_shown_beside_the_base_level() -> None:
    months = np.array([MARCH] * 50, dtype=object)
    seen = market_view.compare(months, _ratios(1.2, 50, 4), {}, {})
    (m,) = seen.months
    assert m.agrees is None and m.market == 1.0 and m.by == "the base level"
    assert not seen.referenced and not seen.centre.any()


def test_too_few_stones_give_no_verdict() -> None:
    months = np.array([MARCH] * 5, dtype=object)
    refs = {MARCH: [market_view.Reference(0.0, "a")]}
    assert market_view.compare(months, _ratios(1.5, 5, 5), refs, {}).months[0].agrees is None


# --- the guard in the store ---------------------------------------------------------------------


def _last_month() -> date:
    first = date.today().replace(day=1)
    return (first - timedelta(days=1)).replace(day=10)


def _fresh(public: pd.DataFrame, small_csv: Path) -> pd.DataFrame:
    """Public stones the champion (trained on small_csv) never saw, in a fixed order."""
    from appraiser import data

    seen = data.load(small_csv).clean
    merged = public.merge(seen, on=list(schema.COLUMNS), how="left", indicator=True)
    left = merged[merged["_merge"] == "left_only"].drop(columns="_merge")
    return left.sample(frac=1.0, random_state=3).reset_index(drop=True)


def _batch(path: Path, stones: pd.DataFrame, level: float, day: date | None) -> Path:
    priced = stones.assign(price=(stones["price"] * level).round())
    if day is not None:
        priced[schema.APPRAISED_AT] = day.isoformat()
    priced.to_csv(path, index=False)
    return path


@pytest.fixture
def fresh(with_champion: str, public: pd.DataFrame, small_csv: Path) -> pd.DataFrame:
    return _fresh(public, small_csv)


def _status(batch_id: int | None) -> str:
    with store.session() as s:
        found = s.get(store.Batch, batch_id)
        assert found is not None
        return found.status


def test_a_first_jump_is_held_then_released_when_a_second_source_agrees(fresh, tmp_path) -> None:
    day = _last_month()
    first = ingest.ingest_file(
        _batch(tmp_path / "a.csv", fresh.iloc[:150], 1.2, day), source="expert a"
    )
    assert first.held, first.summary()
    reasons = " ".join(first.hold_reasons)
    assert f"{day:%Y-%m}: its prices imply a market level of 1.2" in reasons
    assert "the market shows 1.000 (the base level)" in reasons
    assert "second source" in reasons

    second = ingest.ingest_file(
        _batch(tmp_path / "b.csv", fresh.iloc[150:300], 1.2, day), source="expert b"
    )
    assert not second.held, second.summary()
    assert second.screening is not None
    (month,) = second.screening.market
    assert month["agrees"] and "source 'expert a', 150 stones" in month["by"]
    assert second.released == [first.batch_id]
    assert _status(first.batch_id) == "accepted"
    with store.session() as s:
        events = s.scalars(
            select(store.AuditEvent).where(store.AuditEvent.action == "batch_released")
        ).all()
    assert [(e.actor, json.loads(e.details)["batch_id"]) for e in events] == [
        (audit.GUARD, first.batch_id)
    ]
    # the stored level rests on both, refreshed against the champion
    series = stored_market.load()
    assert series.model_version == with_champion_version()
    assert series.level_at(day).stones == 300
    assert series.level_at(day).level == pytest.approx(1.2, rel=0.06)


def with_champion_version() -> str | None:
    return champion.current()


def test_a_marked_up_source_stays_held_with_both_levels(fresh, tmp_path) -> None:
    day = _last_month()
    marked = ingest.ingest_file(
        _batch(tmp_path / "c.csv", fresh.iloc[:150], 1.2 * 1.3, day), source="marks up"
    )
    assert marked.held
    for name, part in (("a", fresh.iloc[150:300]), ("b", fresh.iloc[300:450])):
        ingest.ingest_file(_batch(tmp_path / f"{name}.csv", part, 1.2, day), source=name)
    assert _status(marked.batch_id) == "held"
    later = ingest.ingest_file(
        _batch(tmp_path / "c2.csv", fresh.iloc[450:600], 1.2 * 1.3, day), source="marks up"
    )
    assert later.held
    reason = next(r for r in later.hold_reasons if "imply" in r)
    implied = float(reason.split("imply a market level of ")[1].split(",")[0])
    shown = float(reason.split("the market shows ")[1].split(" ")[0])
    assert implied == pytest.approx(1.56, rel=0.06) and shown == pytest.approx(1.2, rel=0.06)
    assert "more than 10% apart" in reason


def test_a_source_never_corroborates_itself_through_the_stored_level(fresh, tmp_path) -> None:
    """Review: the stored level, mostly one source's own stones, counted as "other sources" once
    any other source had a stone that month, so one source could walk the level up alone."""
    day = _last_month()
    few = ingest.ingest_file(_batch(tmp_path / "b.csv", fresh.iloc[:5], 1.0, day), source="b")
    assert not few.held, few.summary()
    first = ingest.ingest_file(_batch(tmp_path / "a.csv", fresh.iloc[5:205], 1.2, day), source="a")
    assert first.held and first.batch_id is not None
    ingest.set_batch_status(first.batch_id, "accepted", actor="admin")
    assert stored_market.load().level_at(day).level == pytest.approx(1.2, rel=0.06)
    again = ingest.ingest_file(
        _batch(tmp_path / "a2.csv", fresh.iloc[205:405], 1.2, day), source="a"
    )
    assert again.held, again.summary()  # judged on the base level: a jump nobody else shows


def test_an_undated_marked_up_batch_is_held_beside_another_sources_stones(fresh, tmp_path) -> None:
    ingest.ingest_file(_batch(tmp_path / "honest.csv", fresh.iloc[:300], 1.0, None), source="a")
    marked = ingest.ingest_file(
        _batch(tmp_path / "marked.csv", fresh.iloc[300:600], 1.3, None), source="inbox"
    )
    assert marked.held and any("more than 10% apart" in r for r in marked.hold_reasons)


def test_a_release_and_a_promotion_refresh_the_level(fresh, tmp_path) -> None:
    day = _last_month()
    held = ingest.ingest_file(_batch(tmp_path / "a.csv", fresh.iloc[:150], 1.2, day), source="a")
    assert held.held and stored_market.load().months == ()  # nothing accepted yet
    assert held.batch_id is not None
    ingest.set_batch_status(held.batch_id, "accepted", actor="test")
    assert stored_market.load().level_at(day).stones == 150
    stored_market.save(market.Series())
    champion.promote(champion.current() or "1", actor="test")
    assert stored_market.load().level_at(day).stones == 150


# --- sources ------------------------------------------------------------------------------------


def test_inbox_files_are_one_source_whatever_their_names(fresh, tmp_path) -> None:
    """Review: sub-folders named the source, so one supplier who may write to the inbox wrote
    two folders that corroborated each other's markup."""
    inbox = tmp_path / "inbox"
    (inbox / "giulia").mkdir(parents=True)
    fresh.iloc[:40].to_csv(inbox / "giulia" / "june.csv", index=False)
    fresh.iloc[40:80].to_csv(inbox / "top.csv", index=False)
    fresh.iloc[80:120].to_csv(inbox / "giulia.csv", index=False)
    reports, failed = pipeline.ingest_inbox(inbox)
    assert failed == [] and len(reports) == 2
    assert {b["source"] for b in batches.listed()} == {"inbox"}
    assert (inbox / "giulia" / "june.csv").exists()  # a folder is no inbox of its own
    assert pipeline.inbox_files(inbox) == []


# --- one level for training ---------------------------------------------------------------------


def test_deflate_divides_by_the_level_of_each_month() -> None:
    series = market.Series(
        (
            market.Level(MARCH, 1.2, 1.1, 1.3, stones=10),
            market.Level(APRIL, 1.25, 1.1, 1.3, stones=10),
        )
    )
    stones = pd.DataFrame(
        {
            "price": [120.0, 250.0, 100.0, 300.0],
            schema.APPRAISED_AT: [date(2025, 3, 9), date(2025, 4, 2), date(2025, 1, 5), None],
        }
    )
    out, used = market_loop.deflate(stones, series)
    assert out["price"].tolist() == pytest.approx([100.0, 200.0, 100.0, 300.0])
    assert schema.APPRAISED_AT not in out
    assert used["months"] == {
        "2025-01": {"level": 1.0, "stones": 1},
        "2025-03": {"level": 1.2, "stones": 1},
        "2025-04": {"level": 1.25, "stones": 1},
        "undated": {"level": 1.0, "stones": 1},
    }


def test_a_retrain_learns_prices_on_the_base_level(fresh, tmp_path, monkeypatch) -> None:
    day = _last_month()
    for name, part in (("a", fresh.iloc[:300]), ("b", fresh.iloc[300:600])):
        ingest.ingest_file(_batch(tmp_path / f"{name}.csv", part, 1.2, day), source=name)
    level = stored_market.load().level_at(day).level
    assert level == pytest.approx(1.2, rel=0.06)
    seen: dict = {}

    class Stop(Exception):
        pass

    def capture(validation, fit_part, holdout, **options):
        seen.update(fit_part=fit_part, tags=options["tags"])
        raise Stop

    monkeypatch.setattr(pipeline, "fit_and_register", capture)
    with pytest.raises(Stop):
        pipeline.retrain(trials=1, timeout=1, show_progress=False)
    stored = pipeline.labelled_stones().stones
    fit_part = seen["fit_part"]
    merged = fit_part.merge(stored, on=list(schema.FEATURES), suffixes=("", "_stored"))
    assert len(merged) == len(fit_part) > 500
    assert (merged["price_stored"] / merged["price"]).to_numpy() == pytest.approx(level)
    recorded = json.loads(seen["tags"]["market_levels"])
    assert recorded["months"][f"{day:%Y-%m}"]["level"] == pytest.approx(level, abs=1e-6)
    assert recorded["series_model_version"] == champion.current()


def test_approved_expert_prices_carry_the_day_they_were_sent(with_champion, stone) -> None:
    from typer.testing import CliRunner

    from appraiser import clock, feedback
    from appraiser.cli import app

    shown = CliRunner().invoke(
        app, ["explain", *[f"--{k}={v}" for k, v in stone.items()], "--json"]
    )
    assert shown.exit_code == 0, shown.output
    sent = feedback.submit(json.loads(shown.output)["id"], 5100, actor="expert-ana")
    feedback.review(sent["id"], approve=True, actor="admin-bo")
    (row,) = feedback.approved_stones().to_dict("records")
    assert row[schema.APPRAISED_AT] == clock.today() and row["price"] == 5100
    assert pipeline.labelled_stones().stones[schema.APPRAISED_AT].tolist() == [clock.today()]


def test_an_upload_is_its_keys_persons_not_the_label_it_claims(
    fresh, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from appraiser import auth
    from appraiser.api import create_app
    from appraiser.config import settings
    from tests.conftest import API_KEY

    monkeypatch.setenv("APPRAISER_API_KEY", API_KEY)
    settings.cache_clear()
    key = auth.create_key("giulia-laptop", "admin", actor="test", person="Giulia")
    rows = fresh.iloc[:12].to_dict(orient="records")
    rows[0][schema.APPRAISED_AT] = "2025-03-14"
    rows[1][schema.APPRAISED_AT] = "14/03/2025"
    with TestClient(create_app()) as client:
        headers = {"Authorization": f"Bearer {key}"}
        sent = client.post(
            "/v1/diamonds", json={"diamonds": rows, "source": "expert b"}, headers=headers
        )
        assert sent.status_code == 200, sent.text
        assert sent.json()["rows_accepted"] == 11
        refused = sent.json()["rejected_rows"][0]
        assert refused["line"] == 3 and refused["reasons"].startswith(schema.APPRAISED_AT_RULE)
        rows[2][schema.APPRAISED_AT] = 20250314
        number = client.post("/v1/diamonds", json={"diamonds": rows[2:]}, headers=headers)
        assert number.status_code == 422
        assert number.json()["message"].startswith(f"diamonds[0].{schema.APPRAISED_AT}:")
    settings.cache_clear()
    (batch,) = batches.listed()
    assert batch["source"] == "giulia" and batch["file_name"] == "expert b (JSON request)"
    dated = stored_market.dated_stones()
    assert dated[schema.APPRAISED_AT].iloc[0] == date(2025, 3, 14)
