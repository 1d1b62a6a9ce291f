"""The market level in the loop: held batches screened again when the market speaks, the stored
level kept fresh, and training stones put on one level (the guard's view: market_view.py).

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
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from appraiser import market, schema
from appraiser.models import PriceModel

logger = logging.getLogger(__name__)


# --- after stones are accepted, after the champion changes ---------------------------------------


Champion = Callable[[], "tuple[str, PriceModel] | None"]  # champion.loaded, or a given version


def _refresh(loaded: tuple[str, PriceModel], engine: Engine | None) -> market.Series:
    from appraiser.store import market as stored

    version, model = loaded
    logger.info("market level refreshed against v%s", version)
    return stored.refresh(lambda s: np.exp(model.predict_log(s)), version, engine)


def refresh(champion: Champion, engine: Engine | None = None) -> market.Series | None:
    """The stored level estimated again against `champion()`; None, changing nothing, when there
    is no champion."""
    loaded = champion()
    return _refresh(loaded, engine) if loaded is not None else None


def rescreen_held(loaded: tuple[str, PriceModel], engine: Engine | None = None) -> list[int]:
    """Screen every batch the guard held again (not those held for conflicting prices or left
    unscreened: those are a person's to judge) and release, as `system:guard`, each it now
    accepts; repeated until nothing changes. Returns the released batches. Raises PipelineBusy
    when a pass or retrain holds the lock."""
    from appraiser import audit, batches, screening
    from appraiser.locking import exclusive
    from appraiser.store import market as stored

    version, model = loaded
    released: list[int] = []
    with exclusive():
        waiting = [b for b in batches.listed("held", engine) if b["screening"]]
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
                batches.set_status(batch["id"], "accepted", engine, actor=audit.GUARD, note=note)
                freed.append(batch["id"])
            if not freed:
                break
            released += freed
            waiting = [b for b in waiting if b["id"] not in freed]
    return released


def after_acceptance(champion: Champion, engine: Engine | None = None) -> list[int]:
    """Stones were accepted: refresh the stored level against `champion()`, release the held
    batches the market now backs (refreshing again if any), and return them. Never raises: the
    stones stand whatever happens here, and the next acceptance or pipeline pass tries again."""
    from appraiser.locking import PipelineBusy, exclusive

    try:
        # under the lock: two refreshes at once would each replace the series (on PostgreSQL the
        # second insert collides), and a promotion between loading and saving would leave it
        # estimated against the old champion
        with exclusive():
            loaded = champion()
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


def after_promotion(champion: Champion) -> None:
    """A new champion: its prices are the new base, so the level is estimated again (a failure
    is logged: the move stands, the next acceptance refreshes)."""
    from appraiser.locking import exclusive

    try:
        with exclusive():  # a promotion holds it already (re-entrant); see after_acceptance
            loaded = champion()
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


def training_series(champion: Champion) -> market.Series:
    """The level a retrain deflates by: refreshed against the champion now (so it covers every
    accepted stone), else the stored one (empty: 1.0 everywhere)."""
    from appraiser.store import market as stored

    loaded = champion()
    if loaded is not None:
        return _refresh(loaded, None)
    return stored.load()


def levels_json(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True)
