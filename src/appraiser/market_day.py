"""The market level a price is given at: the level on the day the price is for (today, UTC,
unless the caller names another day), as every answer carries it, and the stored series kept in
memory by a server, reloaded when a refresh rewrites it.

A price as of a day is the champion's price on the base level times the level on that day
(appraiser.market): a day after the last estimated month carries that month's level forward, a
day before any estimate (or a store with no series) stands on the base level, 1.0, where prices
are exactly the model's.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
from contextlib import closing
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from appraiser import clock, market

logger = logging.getLogger(__name__)

MARKET_TERM = "market"  # the reason, in `contributions`, the level adds to the base price


@dataclass(frozen=True)
class MarketDay:
    """The level prices stand at on `day`."""

    day: date
    level: market.Level = market.BASE

    @property
    def factor(self) -> float:
        """What the model's price on the base level is multiplied by."""
        return self.level.level

    @property
    def is_base(self) -> bool:
        return self.level.level == 1.0

    @functools.cached_property
    def field(self) -> dict[str, Any]:
        """The `market_level` of an answer: the level, its 90% interval, the month it is the
        estimate of (None: the base level) and the day the price is for. Made once per day and
        shared by the answers (never changed)."""
        return {
            "level": self.level.level,
            "low": self.level.low,
            "high": self.level.high,
            "month": self.level.month.isoformat() if self.level.month else None,
            "as_of": self.day.isoformat(),
        }

    def describe(self) -> str:
        """One line for people: 'prices as of 2026-12-06: market level 1.043 (1.01-1.08), the
        estimate of 2026-11'."""
        said = f"prices as of {self.day.isoformat()}: market level {self.level.level:.3f}"
        if self.level.month is None:
            return f"{said} (the base: the prices the champion learned)"
        return (
            f"{said} ({self.level.low:.3f}-{self.level.high:.3f}), the estimate of "
            f"{self.level.month:%Y-%m}"
        )


def on(series: market.Series, day: date | None = None) -> MarketDay:
    """The level of `series` on `day` (today, UTC, by default)."""
    day = day or clock.today()
    return MarketDay(day, series.level_at(day))


def stored_on(day: date | None = None) -> MarketDay:
    """The stored series' level on `day`: one read of the store (for a command that prices
    once; a server keeps the series in memory, MarketLevels)."""
    from appraiser.config import STORE_FILE, StoreSettings, settings

    if not StoreSettings().database_url:  # the default SQLite store, as store.database_url
        return on(_levels_sqlite(settings().home.resolve() / STORE_FILE), day)
    from appraiser.store import market as stored

    return on(stored.load(), day)


def _levels_sqlite(path: Path) -> market.Series:
    """The default SQLite store's monthly levels, read with the standard library's driver
    (read-only), as champion._stored_sqlite reads the champion: SQLAlchemy's import would be a
    third of `appraiser predict`'s start-up. The months only (what prices need; the sources left
    out stay with store.market.load); an empty series with no store or no table yet."""
    if not path.exists():
        return market.Series()
    query = "SELECT month, level, low, high, stones, observed, excluded FROM market_levels"
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as connection:
            rows = connection.execute(f"{query} ORDER BY month").fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return market.Series()
        raise
    return market.Series(
        tuple(
            market.Level(
                month=date.fromisoformat(str(month)[:10]),
                level=level,
                low=low,
                high=high,
                stones=stones,
                observed=observed,
                excluded=excluded,
            )
            for month, level, low, high, stones, observed, excluded in rows
        )
    )


class MarketLevels:
    """The stored series, in memory for a server: `check` (called with the champion's poll)
    reloads it only when the store's series changed, which a count and the newest computed_at
    tell in one small query; requests read `on(day)` and never the database."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url
        self.series = market.Series()
        self.last_error: str | None = None
        self.reloads = 0
        self._stamp: tuple[Any, ...] | None = None
        self._lock = threading.Lock()
        # the last day asked and the series it was read from: most requests ask for today
        self._last: tuple[market.Series, MarketDay] = (self.series, on(self.series, date.min))

    def check(self) -> bool:
        """Reload the series if the store's changed; True when it did. A failure is logged and
        the series in memory keeps serving."""
        from sqlalchemy import func, select

        from appraiser.store import market as stored
        from appraiser.store import ready
        from appraiser.store.tables import MarketLevel

        with self._lock:
            try:
                engine = ready(self.url)
                query = select(func.count(), func.max(MarketLevel.computed_at))
                with engine.connect() as conn:
                    stamp = tuple(conn.execute(query).one())
                if stamp == self._stamp:
                    return False
                series = stored.load(engine)
            except Exception as exc:  # keep serving the level in memory; say why
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("could not read the market level: %s", exc)
                return False
            self.series, self._stamp, self.last_error = series, stamp, None
            self.reloads += 1
            if series.months:
                logger.info("market level: %s", on(series).describe())
            return True

    def on(self, day: date | None = None) -> MarketDay:
        """The level on `day` (today, UTC, by default), from memory."""
        day = day or clock.today()
        series = self.series
        cached_series, cached = self._last
        if cached_series is series and cached.day == day:
            return cached
        found = on(series, day)
        self._last = (series, found)
        return found
