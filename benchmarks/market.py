"""Prices as of today in a market that moved: how far from the truth with and without the level.

    python benchmarks/market.py [--data CSV] [--per-month 100] [--today 2000] [--seed 0]

A simulated market (appraiser.market estimates the level; the guard's part is later work):
1. the champion: LightGBM with its defaults (one trial: the question is the level, not the model)
   fitted on Francesco's collection (or the public table's first 5,000 stones without it), whose
   prices are the base level, 1.0;
2. the market jumps +20% since the collection, then drifts +1% a month: month k = 1..8 after the
   collection stands at 1.20 x 1.01^k, so today (month 8) prices are 1.299 times the collection's;
3. each month two honest sources appraise --per-month public stones each (not in the collection)
   at that month's level with 4% noise, and a third marks up +30% on top;
4. the level is estimated from those dated appraisals against the champion's prices, with the
   source rule and without it (every source counted);
5. --today other public stones are priced today: the champion's price alone, and times the level
   on today's date; the truth is their public price times today's level. Median bias and MAPE in %.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from _bench import others_shuffled, quick_model, resolve_data

JUMP, DRIFT, MONTHS, MARKUP, NOISE = 1.20, 1.01, 8, 1.30, 0.04
COLLECTION_MONTH = date(2025, 1, 1)
SOURCES = {"expert A": 1.0, "expert B": 1.0, "marks up": MARKUP}


def month(k: int) -> date:
    """The month k months after the collection's."""
    index = COLLECTION_MONTH.month - 1 + k
    return date(COLLECTION_MONTH.year + index // 12, index % 12 + 1, 1)


def true_level(k: int) -> float:
    return JUMP * DRIFT**k


def appraisals(pool: pd.DataFrame, per_month: int, rng: np.random.Generator) -> pd.DataFrame:
    """Each source's dated appraisals of fresh stones, month by month (pool's order: no repeats)."""
    frames, used = [], 0
    for k in range(1, MONTHS + 1):
        for source, markup in SOURCES.items():
            stones = pool.iloc[used : used + per_month].copy()
            used += per_month
            days = rng.integers(1, 29, len(stones))
            stones["appraised_at"] = [month(k).replace(day=int(d)) for d in days]
            noise = np.exp(rng.normal(0, NOISE, len(stones)))
            stones["price"] = stones["price"] * true_level(k) * markup * noise
            stones["source"] = source
            frames.append(stones)
    return pd.concat(frames, ignore_index=True)


def errors(truth: np.ndarray, priced: np.ndarray) -> dict[str, float]:
    ratio = priced / truth - 1
    return {
        "median_bias_pct": round(float(np.median(ratio)) * 100, 2),
        "mape_pct": round(float(np.mean(np.abs(ratio))) * 100, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--per-month", type=int, default=100, help="stones per source a month")
    parser.add_argument("--today", type=int, default=2000, help="stones priced today")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ["APPRAISER_HOME"] = tempfile.mkdtemp(prefix="appraiser-market-")
    os.environ["APPRAISER_NATIVE_TREES"] = "false"  # nothing here is served
    from appraiser import data, market

    public = data.load(None).clean
    path = resolve_data(args.data, required=False)
    collection = data.load(path).clean if path else public.head(5000)
    collection = collection.reset_index(drop=True)
    pool = others_shuffled(public, collection, args.seed)
    rng = np.random.default_rng(args.seed)

    champion = quick_model(collection, timeout=60)
    dated = appraisals(pool.iloc[args.today :], args.per_month, rng)
    dated["predicted"] = champion.predict(dated)["price"].to_numpy()

    today = month(MONTHS).replace(day=15)
    now = pool.head(args.today)
    truth = now["price"].to_numpy() * true_level(MONTHS)
    base_prices = champion.predict(now)["price"].to_numpy()
    report: dict = {
        "collection": len(collection),
        "appraisals": len(dated),
        "true_level_today": round(true_level(MONTHS), 4),
        "without_level": errors(truth, base_prices),
    }
    for name, tolerance in (("with_level", market.TOLERANCE), ("with_level_no_source_rule", 10.0)):
        series = market.estimate(dated, tolerance=tolerance)
        level = series.level_at(today)
        report[name] = {
            **errors(truth, base_prices * level.level),
            "level": round(level.level, 4),
            "interval": [round(level.low, 4), round(level.high, 4)],
            "level_error_pct": round((level.level / true_level(MONTHS) - 1) * 100, 2),
            "excluded": {
                source: sum(e.stones for e in series.excluded if e.source == source)
                for source in sorted({e.source for e in series.excluded})
            },
        }
        if name == "with_level":
            months = [
                {
                    "month": m.month.isoformat() if m.month else None,
                    "truth": round(true_level(k + 1), 4),
                    "level": round(m.level, 4),
                    "interval": [round(m.low, 4), round(m.high, 4)],
                    "stones": m.stones,
                }
                for k, m in enumerate(series.months)
            ]
    report["months"] = months
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
