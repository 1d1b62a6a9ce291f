"""The guard's view of the market: what a batch's prices imply, month by month, beside what
the market shows for the same months (market_loop.py acts on it).

**The guard's view** (`view`, used by screening.guard). A batch's implied level in a month is the
median of log(price / champion's price) over its stones appraised that month (`appraised_at`, else
the day it arrives). It is compared with what the market shows for the same month:
- each other source's stones of that month, accepted or held (at least MIN_SOURCE_STONES of them):
  two sources that agree corroborate each other, whichever arrived first;
- the stored series' level for that month (store/market.py), when it was estimated by this
  champion and the month's estimate (or the last month with stones before it, carried forward)
  rests on stones of other sources: a source never corroborates itself.
A month agrees when its implied level is within market.TOLERANCE of one of those levels: a market
move, and the batch's errors are judged around its own level (the far-off, spread and coverage
checks stay). A month that departs from all of them is held, the reason showing the level it
implies beside the nearest the market shows. A month nothing else speaks for is judged on the base
level as before (a jump beyond HOLD_SHIFT is held), its reason showing both levels: "the first jump
from a single source" waits for a second source.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from appraiser import clock, features, market, schema
from appraiser.models import PriceModel


@dataclass(frozen=True)
class Reference:
    """A level the market shows for a month (log units), and who shows it."""

    log_level: float
    by: str


@dataclass(frozen=True)
class MonthView:
    """One month of a batch: the level it implies beside the level the market shows."""

    month: date
    stones: int
    implied: float
    market: float  # the nearest level the market shows (or, with none, the stored or base level)
    by: str
    agrees: bool | None  # None: no other source speaks for the month, or too few stones to say

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "month": self.month.isoformat()}


@dataclass
class MarketView:
    """A batch against the market, month by month; `centre`: each stone's log level to judge its
    errors around (0: the base level)."""

    months: list[MonthView] = field(default_factory=list)
    centre: np.ndarray = field(default_factory=lambda: np.zeros(0))
    referenced: bool = False  # some month had a level of the market to compare with

    @property
    def departs(self) -> list[MonthView]:
        return [m for m in self.months if m.agrees is False]

    def judge(self, result: Any) -> None:
        """Write the months into a screening (screening.Screening) and hold it where a month
        departs; a held batch's reasons show, for each month nothing else speaks for and that is
        off the shown level, both levels side by side."""
        result.market = [m.to_dict() for m in self.months]
        for m in self.departs:
            result.held.append(
                f"{m.month:%Y-%m}: its prices imply a market level of {m.implied:.3f}, the "
                f"market shows {m.market:.3f} ({m.by}): more than "
                f"{100 * market.TOLERANCE:.0f}% apart (a markup, or an error?)"
            )
        if not result.held:
            return
        for m in self.months:
            if m.agrees is None and abs(math.log(m.implied / m.market)) > market.TOLERANCE:
                result.held.append(
                    f"{m.month:%Y-%m}: its prices imply a market level of {m.implied:.3f}, the "
                    f"market shows {m.market:.3f} ({m.by}); no other source has priced this "
                    "month yet: released when a second source agrees"
                )


def compare(
    months: np.ndarray,
    ratios: np.ndarray,
    references: dict[date, list[Reference]],
    shown: dict[date, Reference],
    *,
    tolerance: float = market.TOLERANCE,
    min_stones: int = market.MIN_SOURCE_STONES,
) -> MarketView:
    """The batch (each stone's month and log ratio to the champion's price) against the
    `references` of its months; `shown`: the level named for a month without any. Pure."""
    centre = np.zeros(len(ratios))
    out = []
    for month in sorted(set(months.tolist())):
        mine = months == month
        implied = float(np.median(ratios[mine]))
        refs = references.get(month, [])
        if not refs:
            fallback = shown.get(month, Reference(0.0, "the base level"))
            out.append(
                MonthView(
                    month,
                    int(mine.sum()),
                    math.exp(implied),
                    math.exp(fallback.log_level),
                    fallback.by,
                    None,
                )
            )
            continue
        nearest = min(refs, key=lambda r: abs(r.log_level - implied))
        close = bool(abs(nearest.log_level - implied) <= tolerance)
        verdict = close if mine.sum() >= min_stones else None
        # agreeing: judged around its own level; else around the market's
        centre[mine] = implied if close else nearest.log_level
        out.append(
            MonthView(
                month,
                int(mine.sum()),
                math.exp(implied),
                math.exp(nearest.log_level),
                nearest.by,
                verdict,
            )
        )
    return MarketView(out, centre, any(m in references for m in set(months.tolist())))


def _months(stones: pd.DataFrame) -> np.ndarray:
    """Each stone's month (its first day): appraised_at, else today (the day it arrives)."""
    today = clock.today()
    if schema.APPRAISED_AT not in stones:
        return np.array([market.month_of(today)] * len(stones), dtype=object)
    days = pd.to_datetime(stones[schema.APPRAISED_AT], errors="coerce")
    return np.array(
        [market.month_of(today if pd.isna(d) else d.date()) for d in days], dtype=object
    )


def _log_ratios(model: PriceModel, stones: pd.DataFrame) -> np.ndarray:
    # the log price alone: the range is not needed, and costs as much again
    predicted = model.predict_log_matrix(features.encode(stones).to_numpy(dtype=float))
    return np.log(stones[schema.TARGET].to_numpy(dtype=float)) - predicted


def view(
    model: PriceModel,
    version: str,
    stones: pd.DataFrame,
    source: str,
    *,
    engine: Engine | None = None,
    batch_id: int | None = None,
) -> MarketView:
    """The batch of `source` against the market the store shows for its months (module doc)."""
    from appraiser.store import market as stored

    months = _months(stones)
    wanted = set(months.tolist())
    accepted = stored.dated_stones(engine)
    held = stored.dated_stones(engine, statuses=("held",))
    both = pd.concat([accepted.assign(_accepted=True), held.assign(_accepted=False)])
    others = both[(both["source"] != source) & (both["batch_id"] != (batch_id or -1))]
    others = others.assign(_month=[market.month_of(d) for d in others[schema.APPRAISED_AT]])
    backed = set(others.loc[others["_accepted"], "_month"])  # months other sources' stones back
    near = others[others["_month"].isin(wanted)].reset_index(drop=True)
    references: dict[date, list[Reference]] = {}
    if len(near):
        near = near.assign(_ratio=_log_ratios(model, near))
        for (month, name), group in near.groupby(["_month", "source"], sort=True):
            if len(group) >= market.MIN_SOURCE_STONES:
                references.setdefault(month, []).append(
                    Reference(
                        float(np.median(group["_ratio"])), f"source {name!r}, {len(group)} stones"
                    )
                )
    shown: dict[date, Reference] = {}
    series = stored.load(engine)
    if series.months and series.model_version == version:
        with_stones = [m.month for m in series.months if m.stones and m.month is not None]
        for month in wanted:
            level = series.level_at(month)
            if level.month is None:
                continue
            rests = [m for m in with_stones if m <= month]
            said = Reference(math.log(level.level), f"the stored level of {level.month:%Y-%m}")
            shown[month] = said
            if rests and rests[-1] in backed:
                references.setdefault(month, []).append(
                    Reference(said.log_level, said.by + " (other sources)")
                )
    return compare(months, _log_ratios(model, stones), references, shown)
