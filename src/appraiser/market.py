"""The market level over time: what prices did, month by month, against the champion's prices on
the base level (the level of the collection it learned from, 1.0 by definition).

This is the hedonic *imputation* price index of official price statistics (Eurostat, Handbook on
Residential Property Prices Indices, 2013, ch. 5; de Haan and Diewert, Hedonic Regression Methods,
OECD, 2011): a model of log price from characteristics prices every dated stone as on the base
level, and a month's level is the central value of log(observed / predicted) over its stones.

- **Per month, the median** log ratio: one mis-keyed price or an odd stone moves it little.
- **Smoothed by a local-level model** (a random walk seen through noise: Harvey, Forecasting,
  Structural Time Series Models and the Kalman Filter, 1989; Durbin and Koopman, Time Series
  Analysis by State Space Methods, 2012), filtered forward only, so a month's level uses no later
  month and a level "as of" a day never changes when later appraisals arrive. Each month's median
  counts by its precision: its variance is pi/2 sigma^2 / n (the median's, for normal errors),
  so a month of 200 stones moves the level nearly all the way and a month of 3 stones a little;
  the walk's step (PROCESS_SD a month) lets the level drift, and a month whose median lies
  further than JUMP_Z standard deviations from the level widens that step until it does not (an
  adaptive filter's variance matching: Mehra, IEEE Trans. Automatic Control, 1972), so a jump is
  followed at once when many stones show it and half-believed, with a wide interval, when three
  do. An exponentially weighted mean does the same with one fixed weight, blind to how many
  stones stand behind a month; a rolling median lags a jump by half its window.
- **The 90% interval** is the filter's own, level x exp(+-1.645 sqrt(P)): wide where few stones
  stand, wider still as months pass without any.
- **A source that departs from the others** in a month (by more than TOLERANCE and more than three
  standard errors of its median), while at least two sources agree, is left out of that month and
  reported: a markup or an error, not the market. With two sources that disagree nothing says which
  is right, so both stay.

Pure: DataFrames in, dataclasses out; the store keeps the result (store/market.py).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from appraiser import clock, schema

Z90 = 1.6448536269514722  # the standard normal's 95th percentile: a two-sided 90% interval
MEDIAN_VARIANCE = math.pi / 2  # var(median) = pi/2 sigma^2 / n for normal errors
MAD_TO_SD = 1.482602218505602  # sigma from the median absolute deviation, for normal errors
PROCESS_SD = 0.02  # how far the level may wander in a month, in log units (about 2%)
# the spread of log(price / champion's price) assumed before the stones say (the champion's
# error on new stones is about this), worth PRIOR_STONES stones: three stones cannot claim a
# precision they do not have
PRIOR_SD = 0.10
PRIOR_STONES = 10
TOLERANCE = 0.10  # a source this far (in log units, about 10%) from the others is left out
MIN_SOURCE_STONES = 10  # a source is judged in a month only on at least this many stones
JUMP_Z = 2.5  # a month further than this many standard deviations from the level is a jump
DIFFUSE = 1.0  # the first month's prior variance without a base month: the data decide

REQUIRED = (schema.APPRAISED_AT, schema.TARGET, "predicted")
Pricer = Callable[[pd.DataFrame], np.ndarray]  # stones' features -> the champion's prices


@dataclass(frozen=True)
class Level:
    """The level of one month (prices over the base level's), its 90% interval, the stones behind
    it, its own median before smoothing (None: no stones that month) and the stones left out."""

    month: date | None  # the month's first day; None: the base level, before any estimate
    level: float
    low: float
    high: float
    stones: int = 0
    observed: float | None = None
    excluded: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["month"] = self.month.isoformat() if self.month else None
        return out


BASE = Level(month=None, level=1.0, low=1.0, high=1.0)


@dataclass(frozen=True)
class Exclusion:
    """A source left out of a month: the level its stones imply beside the others' consensus."""

    month: date
    source: str
    stones: int
    level: float
    market: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "month": self.month.isoformat()}


@dataclass(frozen=True)
class Series:
    """The monthly levels, oldest first, with the sources left out; what priced them and when."""

    months: tuple[Level, ...] = ()
    excluded: tuple[Exclusion, ...] = ()
    model_version: str | None = None
    computed_at: datetime | None = None
    _keys: tuple[date, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = tuple(m.month for m in self.months if m.month is not None)
        if len(keys) != len(self.months) or list(keys) != sorted(set(keys)):
            raise ValueError("a series' months must be distinct dated months, oldest first")
        object.__setattr__(self, "_keys", keys)

    def level_at(self, day: date) -> Level:
        """The level prices stood at on `day`: its month's estimate, else the last one before it
        carried forward; the base level before any estimate."""
        at = bisect.bisect_right(self._keys, month_of(day))
        return self.months[at - 1] if at else BASE

    def current(self, today: date | None = None) -> Level:
        return self.level_at(today or clock.today())

    def to_dict(self, as_of: date | None = None) -> dict[str, Any]:
        """The JSON the CLI and the API give: `current` (the level on `as_of`, today by default),
        `series`, `excluded`, and what priced them."""
        day = as_of or clock.today()
        return {
            "current": {**self.level_at(day).to_dict(), "as_of": day.isoformat()},
            "series": [m.to_dict() for m in self.months],
            "excluded": [e.to_dict() for e in self.excluded],
            "model_version": self.model_version,
            "computed_at": self.computed_at.isoformat() if self.computed_at else None,
        }


def month_of(day: date) -> date:
    """The first day of `day`'s month (a datetime counts by its date)."""
    if isinstance(day, datetime):
        day = day.date()
    return day.replace(day=1)


def _mad_sd(values: np.ndarray) -> float:
    return float(MAD_TO_SD * np.median(np.abs(values - np.median(values)))) if len(values) else 0.0


def _shrunk_variance(sd: float, n: int, prior_sd: float) -> float:
    """A spread measured on n stones, pulled towards prior_sd as if PRIOR_STONES more agreed."""
    return (n * sd**2 + PRIOR_STONES * prior_sd**2) / (n + PRIOR_STONES)


def _frame(stones: pd.DataFrame) -> pd.DataFrame:
    """month, log ratio and source of each stone; ValueError naming a missing column or a price
    that is not positive."""
    missing = [c for c in REQUIRED if c not in stones.columns]
    if missing:
        raise ValueError(f"the market level needs the column(s) {', '.join(missing)}")
    price = stones[schema.TARGET].to_numpy(dtype=float)
    predicted = stones["predicted"].to_numpy(dtype=float)
    for name, values in ((schema.TARGET, price), ("predicted", predicted)):
        if not (np.isfinite(values) & (values > 0)).all():
            raise ValueError(f"{name} must be a positive number for every stone")
    days = pd.to_datetime(stones[schema.APPRAISED_AT], errors="coerce")
    if days.isna().any():
        raise ValueError(f"{schema.APPRAISED_AT} must be a date for every stone")
    source = stones["source"].astype(str) if "source" in stones else pd.Series("", stones.index)
    return pd.DataFrame(
        {
            "month": days.dt.to_period("M").to_numpy(),
            "ratio": np.log(price / predicted),
            "source": source.to_numpy(),
        }
    )


def _disagreeing(
    month: pd.DataFrame, when: date, tolerance: float, min_source_stones: int
) -> list[Exclusion]:
    """The sources of one month that depart from the others (see the module's docstring)."""
    judged = {
        name: group["ratio"].to_numpy()
        for name, group in month.groupby("source", sort=True)
        if len(group) >= min_source_stones
    }
    if len(judged) < 3:
        return []
    medians = {name: float(np.median(r)) for name, r in judged.items()}
    consensus = float(np.median(list(medians.values())))
    far = []
    for name, ratios in judged.items():
        spread = _shrunk_variance(_mad_sd(ratios), len(ratios), PRIOR_SD)
        error = math.sqrt(MEDIAN_VARIANCE * spread / len(ratios))
        if abs(medians[name] - consensus) > max(tolerance, 3 * error):
            far.append(name)
    if len(judged) - len(far) < 2:  # no two sources agree: nothing says which is right
        return []
    return [
        Exclusion(
            month=when,
            source=name,
            stones=len(judged[name]),
            level=math.exp(medians[name]),
            market=math.exp(consensus),
        )
        for name in far
    ]


def estimate(
    stones: pd.DataFrame,
    *,
    base: date | None = None,
    process_sd: float = PROCESS_SD,
    tolerance: float = TOLERANCE,
    min_source_stones: int = MIN_SOURCE_STONES,
    model_version: str | None = None,
) -> Series:
    """The monthly market level from dated, priced stones.

    `stones`: `appraised_at` (a date), `price` (what it was appraised at), `predicted` (the
    champion's price on the base level) and optionally `source` (who appraised it). `base`: the
    month the collection's prices stand for, where the level is exactly 1.0 (None: unknown, the
    first month's stones decide). No stones: an empty series, whose level is 1.0 on every day.
    """
    if process_sd < 0 or tolerance <= 0 or min_source_stones < 1:
        raise ValueError("process_sd must be >= 0, tolerance > 0 and min_source_stones >= 1")
    now = clock.now()
    if stones.empty:
        return Series(model_version=model_version, computed_at=now)
    frame = _frame(stones)
    excluded: list[Exclusion] = []
    left_out = np.zeros(len(frame), dtype=bool)
    for period, month in frame.groupby("month", sort=True):
        gone = _disagreeing(month, period.start_time.date(), tolerance, min_source_stones)
        excluded += gone
        names = {e.source for e in gone}
        left_out[month.index[month["source"].isin(names)]] = True
    used = frame[~left_out]
    by_month = {period: group["ratio"].to_numpy() for period, group in used.groupby("month")}
    medians = {period: float(np.median(r)) for period, r in by_month.items()}
    residuals = np.concatenate([r - medians[p] for p, r in by_month.items()] or [np.empty(0)])
    pooled = math.sqrt(_shrunk_variance(_mad_sd(residuals), len(residuals), PRIOR_SD))
    dropped = frame[left_out].groupby("month").size().to_dict()

    months = frame["month"]
    first = months.min() if base is None else min(months.min(), pd.Period(base, "M"))
    state, variance = (0.0, 0.0) if base is not None else (0.0, DIFFUSE)
    out = []
    for period in pd.period_range(first, months.max(), freq="M"):
        variance += process_sd**2
        ratios = by_month.get(period)
        if ratios is not None:
            noise = MEDIAN_VARIANCE * _shrunk_variance(_mad_sd(ratios), len(ratios), pooled)
            noise /= len(ratios)
            surprise = (medians[period] - state) ** 2
            # a month this far from the level is a jump the walk's small step cannot explain:
            # its variance grows to put the month JUMP_Z standard deviations away, no more
            variance = max(variance, surprise / JUMP_Z**2 - noise)
            gain = variance / (variance + noise)
            state += gain * (medians[period] - state)
            variance *= 1 - gain
        half = Z90 * math.sqrt(variance)
        out.append(
            Level(
                month=period.start_time.date(),
                level=math.exp(state),
                low=math.exp(state - half),
                high=math.exp(state + half),
                stones=0 if ratios is None else len(ratios),
                observed=None if ratios is None else math.exp(medians[period]),
                excluded=int(dropped.get(period, 0)),
            )
        )
    return Series(tuple(out), tuple(excluded), model_version=model_version, computed_at=now)
