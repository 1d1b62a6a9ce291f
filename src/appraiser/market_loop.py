"""The market level in the loop: the guard's view of the market, held batches screened again when
the market speaks, the stored level kept fresh, and training stones put on one level.

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

**Released when a second source agrees** (`rescreen_held`): after stones are accepted, every batch
the guard held is screened again; one it now accepts is released by `system:guard` (audited like
any release), which may corroborate another, so it repeats until nothing changes.

**Fresh** (`after_acceptance`, `after_promotion`): the stored series is re-estimated against the
champion whenever stones are accepted (ingest, inbox, upload, release) and when the champion
changes (its prices are the base the levels are measured on).

**One level for training** (`deflate`): a retrain divides each labelled stone's price by the level
of its month, so the challenger learns prices on the base level and eras do not blur.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from appraiser import clock, features, market, schema
from appraiser.models import PriceModel

logger = logging.getLogger(__name__)


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


# --- after stones are accepted, after the champion changes ---------------------------------------


def _champion() -> tuple[str, PriceModel] | None:
    from appraiser.config import settings

    cfg = settings()
    if not cfg.mlflow_tracking_uri and not (cfg.home / "mlflow.db").exists():
        return None  # no local registry yet, so no champion (as screening.screen_with_champion)
    from appraiser import champion, registry

    current = champion.current()
    return registry.load_version(current) if current is not None else None


def _refresh(loaded: tuple[str, PriceModel], engine: Engine | None) -> market.Series:
    from appraiser.store import market as stored

    version, model = loaded
    return stored.refresh(lambda s: np.exp(model.predict_log(s)), version, engine)


def rescreen_held(loaded: tuple[str, PriceModel], engine: Engine | None = None) -> list[int]:
    """Screen every batch the guard held again (not those held for conflicting prices or left
    unscreened: those are a person's to judge) and release, as `system:guard`, each it now
    accepts; repeated until nothing changes. Returns the released batches. Raises PipelineBusy
    when a pass or retrain holds the lock."""
    from appraiser import audit, ingest, screening
    from appraiser.locking import exclusive
    from appraiser.store import market as stored

    version, model = loaded
    released: list[int] = []
    with exclusive():
        waiting = [b for b in ingest.batches("held", engine) if b["screening"]]
        while waiting:
            stones = stored.dated_stones(engine, statuses=("held",))
            freed = []
            for batch in waiting:
                mine = stones[stones["batch_id"] == batch["id"]].reset_index(drop=True)
                if mine.empty:
                    continue
                again = screening.guard(
                    model,
                    version,
                    mine,
                    source=batch["source"],
                    engine=engine,
                    batch_id=batch["id"],
                )
                if again.is_held:
                    continue
                agreed = [m for m in again.market if m["agrees"]]
                note = "the market agrees: " + "; ".join(
                    f"{m['month'][:7]} {m['implied']:.3f} against {m['market']:.3f} ({m['by']})"
                    for m in agreed[:4]
                )
                ingest.set_batch_status(
                    batch["id"], "accepted", engine, actor=audit.GUARD, note=note, follow=False
                )
                freed.append(batch["id"])
            if not freed:
                break
            released += freed
            waiting = [b for b in waiting if b["id"] not in freed]
    return released


def after_acceptance(engine: Engine | None = None) -> list[int]:
    """Stones were accepted: refresh the stored level, release the held batches the market now
    backs (refreshing again if any), and return them. Never raises: the stones stand whatever
    happens here, and the next acceptance or pipeline pass tries again."""
    from appraiser.locking import PipelineBusy

    try:
        loaded = _champion()
        if loaded is None:
            return []
        _refresh(loaded, engine)
        released = rescreen_held(loaded, engine)
        if released:
            _refresh(loaded, engine)
        return released
    except PipelineBusy:
        logger.info("held batches not screened again: the pipeline is busy (next pass will)")
        return []
    except Exception as exc:  # a registry or store failure must not undo an accepted batch
        logger.warning("market level not refreshed after an acceptance: %s", exc)
        return []


def after_promotion() -> None:
    """A new champion: its prices are the new base, so the level is estimated again (a failure
    is logged: the move stands, the next acceptance refreshes)."""
    try:
        loaded = _champion()
        if loaded is not None:
            _refresh(loaded, None)
    except Exception as exc:
        logger.warning("market level not refreshed after the champion moved: %s", exc)


# --- training on one level -----------------------------------------------------------------------


def deflate(stones: pd.DataFrame, series: market.Series) -> tuple[pd.DataFrame, dict[str, Any]]:
    """`stones` with each price divided by the level of its `appraised_at` month in `series`
    (1.0 for a stone without a date, or with no series), without the date column; and what was
    used, for the run's record: the series' champion and, per month, its level and stones."""
    out = stones.copy()
    if schema.APPRAISED_AT in out:
        days = out.pop(schema.APPRAISED_AT)
        levels = [
            series.level_at(d).level if d is not None and not pd.isna(d) else 1.0 for d in days
        ]
        months = [
            market.month_of(d).isoformat()[:7] if d is not None and not pd.isna(d) else "undated"
            for d in days
        ]
    else:
        levels, months = [1.0] * len(out), ["undated"] * len(out)
    factor = np.asarray(levels, dtype=float)
    out[schema.TARGET] = out[schema.TARGET].to_numpy(dtype=float) / factor
    used: dict[str, dict[str, float]] = {}
    for name, level in zip(months, factor, strict=True):
        entry = used.setdefault(name, {"level": round(float(level), 6), "stones": 0})
        entry["stones"] += 1
    record = {"series_model_version": series.model_version, "months": dict(sorted(used.items()))}
    return out, record


def training_series() -> market.Series:
    """The level a retrain deflates by: refreshed against the champion now (so it covers every
    accepted stone), else the stored one (empty: 1.0 everywhere)."""
    from appraiser.store import market as stored

    loaded = _champion()
    if loaded is not None:
        return _refresh(loaded, None)
    return stored.load()


def levels_json(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True)
