"""The market level on the pages (issue 25): the appraisal page says which day's prices it shows
and draws the market's term among the reasons; the admin page's monitoring view charts the level
with its 90% interval. Chromium, as tests/test_web.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from appraiser import clock, market
from appraiser.config import settings
from appraiser.features import REASONS
from appraiser.market_day import MARKET_TERM
from appraiser.store import market as stored_market
from tests.conftest import API_KEY, LiveServer, free_port
from tests.test_web import TIMEOUT_MS, appraise
from tests.test_web import browser as browser  # the Chromium fixture (skipped without it)

SERIES = market.Series(
    (
        market.Level(date(2025, 1, 1), 1.10, 1.05, 1.15, stones=120, observed=1.1),
        market.Level(date(2025, 2, 1), 1.20, 1.16, 1.24, stones=0),
        market.Level(date(2025, 3, 1), 1.25, 1.22, 1.28, stones=90, observed=1.26, excluded=30),
    ),
    (market.Exclusion(date(2025, 3, 1), "marks up", 30, 1.6, 1.26),),
    model_version="1",
    computed_at=clock.now(),
)


def _today() -> str:
    """Today (UTC) as the page writes it: 6 Dec 2026."""
    day = clock.today()
    return f"{day.day} {day:%b %Y}"


def _serve(home_copy: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from appraiser.api import create_app

    monkeypatch.setenv("APPRAISER_API_KEY", API_KEY)
    settings.cache_clear()
    with LiveServer(create_app(), free_port()) as server:
        yield server.url
    settings.cache_clear()


@pytest.fixture
def plain_server(home_copy: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The trained champion served with no market series: the base level."""
    yield from _serve(home_copy, monkeypatch)


@pytest.fixture
def moved_server(home_copy: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The same with SERIES stored: today's prices stand on March 2025's level, 1.25."""
    stored_market.save(SERIES)
    yield from _serve(home_copy, monkeypatch)


def _page(browser: Browser, url: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security" in m.text else None)
    page.goto(url)
    expect(page.locator("body[data-ready=true]")).to_have_count(1)
    yield page
    context.close()
    assert not errors, errors


def test_the_page_says_the_day_and_the_base_level(browser: Browser, plain_server: str) -> None:
    for page in _page(browser, plain_server + "/"):
        appraise(page)
        expect(page.locator("#as-of")).to_have_text(
            f"Prices as of {_today()}, market level 1.00 (base)"
        )
        # no market term at the base level: the reasons are the stone's alone
        expect(page.locator("#chart svg g.bar.contribution")).to_have_count(len(REASONS))


def test_the_page_shows_the_level_and_its_term(browser: Browser, moved_server: str) -> None:
    for page in _page(browser, moved_server + "/"):
        appraise(page)
        expect(page.locator("#as-of")).to_have_text(
            f"Prices as of {_today()}, market level 1.25 (90% interval 1.22 to 1.28, the "
            "estimate of Mar 2025)"
        )
        bars = page.locator("#chart svg g.bar.contribution")
        expect(bars).to_have_count(len(REASONS) + 1)
        # the market's term is the last step before the price, whatever its size
        features = bars.evaluate_all("gs => gs.map(g => g.dataset.feature)")
        assert features[-1] == MARKET_TERM
        term = page.locator(f"#chart svg g.bar[data-feature='{MARKET_TERM}'] > text >> nth=0")
        expect(term).to_have_text("Market since the collection (level 1.25)")


def test_the_monitoring_view_charts_the_level_and_its_interval(
    browser: Browser, moved_server: str
) -> None:
    for page in _page(browser, moved_server + "/admin"):
        page.get_by_label("Admin API key").fill(API_KEY)
        page.get_by_role("button", name="Use this key").click()
        expect(page.locator("#monitor-body")).to_be_visible()
        chart = page.locator("#mon-market svg")
        points = chart.locator("circle.point")
        expect(points).to_have_count(3)
        assert points.evaluate_all("cs => cs.map(c => c.dataset.month)") == [
            "2025-01-01",
            "2025-02-01",
            "2025-03-01",
        ]
        expect(chart.locator("circle.point.carried")).to_have_count(1)  # February: no stones
        expect(chart.locator("polygon.band")).to_have_count(1)
        # the band runs through every month's interval: highs forward, lows back
        corners = chart.locator("polygon.band").get_attribute("points") or ""
        assert len(corners.split()) == 6
        expect(chart.locator("polyline.level")).to_have_count(1)
        expect(page.locator("#mon-market-now")).to_have_text(
            re.compile(r"level 1\.250 \(90% interval 1\.220 to 1\.280\)")
        )
        expect(page.locator("#mon-market")).to_contain_text("marks up left out")


def test_the_monitoring_view_says_when_there_is_no_level(
    browser: Browser, plain_server: str
) -> None:
    for page in _page(browser, plain_server + "/admin"):
        page.get_by_label("Admin API key").fill(API_KEY)
        page.get_by_role("button", name="Use this key").click()
        expect(page.locator("#mon-market")).to_contain_text("No market level estimated yet")
