"""The market level through the real loop: dated batches ingested, guarded, the level refreshed.

    python benchmarks/market_flow.py [--data CSV] [--per-month 150] [--today 2000] [--retrain]

The market of benchmarks/market.py (a +20% jump since the collection, then +1% a month; two honest
sources and one that marks up +30%), but every step is the product's own:
1. the champion: `appraiser train` on the collection (Francesco's, or the public table's first
   5,000 stones) with one LightGBM trial; the collection is then ingested as source `collection`,
   dated the month before the first batch, so the store knows the base level's stones;
2. month k = 1..8 (month 8 is this month), each source's --per-month fresh public stones at that
   month's level (4% noise; the marking source x1.30), ingested under its source's name as
   `appraiser ingest --source` does (the guard screens each batch against the market; the level is
   refreshed on each acceptance; held batches are screened again). In month 1 the order is
   honest A, the marking source, honest B: a first jump from one source, then a second source;
3. with --retrain, `pipeline.retrain` (one trial per candidate) on the deflated store;
4. --today other public stones priced today: the champion's price alone, and times the stored
   level's `current.level`; the truth is their public price times today's true level.
Prints JSON: batches accepted/held per source, the level against the truth, median bias and MAPE.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from _bench import others_shuffled, resolve_data, use_home
from market import MARKUP, MONTHS, NOISE, errors, true_level

HONEST = ("expert a", "expert b")
MARKING = "marks up"


def month_start(k: int, today: date) -> date:
    """The first day of month k, month MONTHS being today's."""
    index = today.year * 12 + today.month - 1 - (MONTHS - k)
    return date(index // 12, index % 12 + 1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--per-month", type=int, default=150, help="stones per source a month")
    parser.add_argument("--today", type=int, default=2000, help="stones priced today")
    parser.add_argument("--retrain", action="store_true", help="retrain on the deflated store")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="appraiser-market-flow-"))
    use_home(home)
    import os

    os.environ["APPRAISER_NATIVE_TREES"] = "false"  # nothing here is served
    from appraiser import audit, batches, clock, data, ingest, pipeline, registry
    from appraiser import champion as champions
    from appraiser.store import market as stored
    from appraiser.train import train

    started = time.perf_counter()
    public = data.load(None).clean
    path = resolve_data(args.data, required=False)
    collection = (data.load(path).clean if path else public.head(5000)).reset_index(drop=True)
    pool = others_shuffled(public, collection, args.seed)
    rng = np.random.default_rng(args.seed)
    today = clock.today()

    collection_csv = home / "collection.csv"
    collection.to_csv(collection_csv, index=False)
    train(collection_csv, trials=1, candidates=["lightgbm"], show_progress=False)
    dated = collection.assign(appraised_at=month_start(0, today).replace(day=15).isoformat())
    dated.to_csv(collection_csv, index=False)
    ingest.ingest_file(collection_csv, source="collection")
    trained_at = time.perf_counter() - started

    inbox = home / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    used = args.today  # the first --today stones are priced today, never appraised
    batch_source: dict[str, str] = {}
    for k in range(1, MONTHS + 1):
        first = month_start(k, today)
        last_day = today.day if k == MONTHS else 28
        order = (
            [HONEST[0], MARKING, HONEST[1]] if k == 1 else list(rng.permutation([*HONEST, MARKING]))
        )
        for source in order:
            stones = pool.iloc[used : used + args.per_month].copy()
            used += args.per_month
            days = rng.integers(1, last_day + 1, len(stones))
            stones["appraised_at"] = [first.replace(day=int(d)).isoformat() for d in days]
            markup = MARKUP if source == MARKING else 1.0
            noise = np.exp(rng.normal(0, NOISE, len(stones)))
            stones["price"] = (stones["price"] * true_level(k) * markup * noise).round()
            path = inbox / f"{source}-month{k}.csv"
            stones.to_csv(path, index=False)
            # one file at a time, in this order: which source arrives first matters; each under
            # its appraiser's name, as `appraiser ingest --source` or an expert's API key gives it
            # (the inbox is one source: anyone who may write there may write any name)
            report = ingest.ingest_file(path, source=source, actor=audit.INBOX)
            batch_source[str(report.batch_id)] = source
    ingested_at = time.perf_counter() - started

    retrained = None
    if args.retrain:
        result = pipeline.retrain(trials=1, timeout=60, show_progress=False)
        retrained = {"version": result.version, "promoted": result.champion}

    status = {str(b["id"]): b["status"] for b in batches.listed()}
    counts = {
        source: {
            "accepted": sum(
                status[b] == "accepted" for b, s in batch_source.items() if s == source
            ),
            "held": sum(status[b] == "held" for b, s in batch_source.items() if s == source),
        }
        for source in (*HONEST, MARKING)
    }
    released = [
        batch_source[str(e["details"]["batch_id"])]
        for e in audit.events(action="batch_released")
        if e["actor"] == audit.GUARD
    ]
    series = stored.load()
    current = series.current(today)
    truth_level = true_level(MONTHS)
    _, model = registry.load_version(champions.current() or "1")
    now = pool.head(args.today)
    truth = now["price"].to_numpy() * truth_level
    base = model.predict(now)["price"].to_numpy()
    started_refresh = time.perf_counter()
    stored.refresh(lambda s: np.exp(model.predict_log(s)), "bench")
    refresh_seconds = time.perf_counter() - started_refresh
    print(
        json.dumps(
            {
                "collection": len(collection),
                "per_month": args.per_month,
                "batches": counts,
                "goals": "honest: all accepted, none held; marking source: all held",
                "released_by_the_guard": released,
                "level_today": round(current.level, 4),
                "interval": [round(current.low, 4), round(current.high, 4)],
                "true_level_today": round(truth_level, 4),
                "level_error_pct": round((current.level / truth_level - 1) * 100, 2),
                "priced_today": args.today,
                "with_level": errors(truth, base * current.level),
                "without_level": errors(truth, base),
                "champion": champions.current(),
                "retrained": retrained,
                "months": [
                    {
                        "month": m.month.isoformat()[:7] if m.month else None,
                        "level": round(m.level, 4),
                        "stones": m.stones,
                        "excluded": m.excluded,
                    }
                    for m in series.months
                ],
                "stored_stones": sum(m.stones for m in series.months),
                "refresh_seconds": round(refresh_seconds, 2),
                "seconds": {
                    "train_and_collection": round(trained_at, 1),
                    "ingest_24_batches": round(ingested_at - trained_at, 1),
                    "total": round(time.perf_counter() - started, 1),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
