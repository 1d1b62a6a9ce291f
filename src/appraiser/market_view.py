"""The guard's view of the market: what a batch's prices imply, month by month, beside what
the market shows for the same months (market_loop.py acts on it).

**The guard's view** (`view`, used by screening.guard). A batch's implied level in a month is the
median of log(price / champion's price) over its stones appraised that month (`appraised_at`, else
the day it arrives). It is compared with what the market shows for the same month:
- each other source's stones of that month, accepted or held by the guard (at least
  MIN_SOURCE_STONES of them): two sources that agree corroborate each other, whichever arrived
  first;
- for a source with no such stones that month, its last accepted month before it, carried
  forward (a market drifting 1% a month stays within reach).
Only other sources' stones count, never the stored series (whose months mix every source's
stones, the batch's own source's earlier batches included): a source never corroborates itself,
however many batches it sends.
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
        if refs:
            nearest = min(refs, key=lambda r: abs(r.log_level - implied))
            close = bool(abs(nearest.log_level - implied) <= tolerance)
            verdict = close if mine.sum() >= min_stones else None
            # agreeing: judged around its own level; else around the market's
            centre[mine] = implied if close else nearest.log_level
        else:  # nothing to compare with: the level named for the month, and no verdict
            nearest, verdict = shown.get(month, Reference(0.0, "the base level")), None
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
    from appraiser import batches
    from appraiser.store import market as stored

    months = _months(stones)
    wanted = set(months.tolist())
    accepted = stored.dated_stones(engine)
    held = stored.dated_stones(engine, statuses=("held",))
    # held stones speak only from batches the guard held (not conflicts or unscreened ones)
    screened = {b["id"] for b in batches.listed("held", engine) if b["screening"]}
    held = held[held["batch_id"].isin(screened)]
    both = pd.concat([accepted.assign(_accepted=True), held.assign(_accepted=False)])
    others = both[(both["source"] != source) & (both["batch_id"] != (batch_id or -1))]
    others = others.assign(_month=[market.month_of(d) for d in others[schema.APPRAISED_AT]])
    sizes = others.groupby(["source", "_month"]).size()
    groups = sizes[sizes >= market.MIN_SOURCE_STONES]
    last_accepted = others[others["_accepted"]].groupby(["source", "_month"]).size()
    last_accepted = last_accepted[last_accepted >= market.MIN_SOURCE_STONES]
    # each month's references: every other source's stones of that month, else that source's
    # last accepted month before it (a level carried forward, as the series does); never the
    # batch's own source, so no source corroborates itself however many batches it sends
    picked: dict[date, list[tuple[str, date]]] = {}
    for month in wanted:
        for name in sorted(set(others["source"])):
            if (name, month) in groups.index:
                picked.setdefault(month, []).append((name, month))
                continue
            before = [m for (n, m) in last_accepted.index if n == name and m < month]
            if before:
                picked.setdefault(month, []).append((name, max(before)))
    references: dict[date, list[Reference]] = {}
    needed = {pair for pairs in picked.values() for pair in pairs}
    if needed:
        keys = list(zip(others["source"], others["_month"], strict=True))
        near = others[[k in needed for k in keys]].reset_index(drop=True)
        near = near.assign(_ratio=_log_ratios(model, near))
        medians = {
            (name, m): (float(np.median(group["_ratio"])), len(group))
            for (name, m), group in near.groupby(["source", "_month"], sort=True)
        }
        for month, pairs in picked.items():
            for name, m in pairs:
                level, count = medians[(name, m)]
                said = f"source {name!r}, {count} stones"
                if m != month:
                    said += f" of {m:%Y-%m}, carried forward"
                references.setdefault(month, []).append(Reference(level, said))
    # the stored level is named beside a month nothing else speaks for, never counted as agreement
    shown: dict[date, Reference] = {}
    series = stored.load(engine)
    if series.months and series.model_version == version:
        for month in wanted:
            stored_level = series.level_at(month)
            if stored_level.month is not None:
                shown[month] = Reference(
                    math.log(stored_level.level), f"the stored level of {stored_level.month:%Y-%m}"
                )
    return compare(months, _log_ratios(model, stones), references, shown)
