"""The market level where people look: `appraiser market [--json]` and GET /v1/market, on a
store with no series yet (the base level) and with one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from appraiser import auth, clock, market, store
from appraiser.api import create_app
from appraiser.cli import app as cli
from appraiser.config import settings
from appraiser.store import market as stored_market
from tests.conftest import API_KEY, use_home

runner = CliRunner()

SERIES = market.Series(
    (
        market.Level(date(2025, 1, 1), 1.21, 1.18, 1.24, stones=120, observed=1.2, excluded=60),
        market.Level(date(2025, 2, 1), 1.22, 1.19, 1.25, stones=0),
        market.Level(date(2025, 3, 1), 1.25, 1.22, 1.28, stones=90, observed=1.26),
    ),
    (market.Exclusion(date(2025, 1, 1), "marks [bold]up[/]", 60, 1.57, 1.21),),
    model_version="4",
    computed_at=clock.now(),
)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """An empty home with a migrated store and no model."""
    use_home(tmp_path / "home")
    store.upgrade()
    yield tmp_path / "home"
    settings.cache_clear()


def _json(*args: str) -> dict:
    result = runner.invoke(cli, ["market", "--json", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_cli_gives_the_base_level_before_any_series(home: Path) -> None:
    answer = _json()
    assert answer["current"]["level"] == 1.0 and answer["current"]["month"] is None
    assert answer["current"]["as_of"] == clock.today().isoformat()
    assert answer["series"] == [] and answer["excluded"] == []
    text = runner.invoke(cli, ["market"], catch_exceptions=False).output
    assert "level 1.000, the base" in text


def test_cli_gives_the_stored_series_and_the_level_on_a_day(home: Path) -> None:
    stored_market.save(SERIES)
    answer = _json()
    current = answer["current"]
    assert (current["level"], current["low"], current["high"]) == (1.25, 1.22, 1.28)
    assert current["month"] == "2025-03-01" and current["stones"] == 90
    assert [m["month"] for m in answer["series"]] == ["2025-01-01", "2025-02-01", "2025-03-01"]
    assert answer["excluded"][0]["source"] == "marks [bold]up[/]"
    assert answer["model_version"] == "4"
    assert _json("--as-of", "2025-02-14")["current"]["level"] == 1.22
    assert _json("--as-of", "2024-12-31")["current"]["level"] == 1.0
    text = " ".join(runner.invoke(cli, ["market"], catch_exceptions=False).output.split())
    assert "left out 'marks [bold]up[/]' (60 stones at level 1.570; the others 1.210)" in text
    assert "level 1.250 (1.220-1.280), the estimate of 2025-03 from 90 stones" in text


def test_cli_refuses_a_day_in_the_future_and_a_refresh_without_a_model(home: Path) -> None:
    later = (clock.today() + timedelta(days=1)).isoformat()
    result = runner.invoke(cli, ["market", "--as-of", later])
    assert result.exit_code == 2 and "--as-of must not be after today" in result.output
    result = runner.invoke(cli, ["market", "--as-of", "14/03/2025"])
    assert result.exit_code == 2
    result = runner.invoke(cli, ["market", "--refresh"])
    assert result.exit_code == 1 and "no champion" in result.output


def test_api_gives_the_series_and_the_level_on_a_day(home: Path) -> None:
    with TestClient(create_app()) as client:
        empty = client.get("/v1/market")
        assert empty.status_code == 200
        assert empty.json()["current"]["level"] == 1.0 and empty.json()["series"] == []
        stored_market.save(SERIES)
        answer = client.get("/v1/market").json()
        assert answer["current"]["level"] == 1.25 and answer["current"]["month"] == "2025-03-01"
        assert answer["series"] == _json()["series"]  # the CLI and the API say the same
        assert client.get("/v1/market?as_of=2025-02-01").json()["current"]["level"] == 1.22
        later = (clock.today() + timedelta(days=1)).isoformat()
        refused = client.get(f"/v1/market?as_of={later}")
        assert refused.status_code == 422 and "as_of: must not be after today" in refused.text
        assert client.get("/v1/market?as_of=someday").status_code == 422


def test_api_needs_a_staff_key_when_keys_are_required(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPRAISER_REQUIRE_KEYS", "true")
    monkeypatch.setenv("APPRAISER_API_KEY", API_KEY)
    settings.cache_clear()
    with TestClient(create_app()) as client:
        assert client.get("/v1/market").status_code == 401
        key = auth.create_key("desk", "staff", actor="test")
        answer = client.get("/v1/market", headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200
