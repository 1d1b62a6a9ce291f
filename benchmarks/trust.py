"""Trust benchmark: how often the loop's checks are wrong, measured by simulation.

    python benchmarks/trust.py [--data CSV] [--pairs 300] [--cross-pairs 200] [--power-pairs 60]
                               [--batches 1000] [--only drift|guard|gate]

1. Drift false alarms: same-population batches (drawn from the public table, judged against a
   5,000-stone reference like a champion's training stones) of 50 and 100 stones, with today's
   tests and with the grade PSI > 0.2 rule they replaced; then the share of shifted batches seen.
2. The gate on pairs of models with the same recipe (LightGBM with its defaults) trained on
   disjoint samples of the same size, judged by the real gate on 1,000 stones neither saw; the
   same with the challenger's part cross-fitted; and a challenger trained on twice the stones.
   Such pairs are equal only in expectation: one is often truly a little better, so the share
   promoted is not a false-promotion rate. The gate's error rates, conditional on each
   challenger's true gain measured on 30,000 unseen stones: benchmarks/gate_oc.py.
3. The label-shift guard: batches of Francesco's collection (or the public table) priced by a
   model trained on other stones of it: the share held or called worse when nothing is wrong, and
   the share held with a 30% markup, euros (x0.68, 2008), cents (x100) and shuffled prices.
Rates carry Wilson 95% intervals.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _bench import format_table, quick_model, rate, resolve_data, wilson, write_json

from appraiser.challenge import CROSS_FIT_FOLDS


def old_psi_flags(new: pd.DataFrame, reference: pd.DataFrame) -> bool:
    """The rule before issue 9: any grade's PSI > 0.2 (or KS > 0.1 with p < 0.01)."""
    from scipy.stats import ks_2samp

    from appraiser import schema

    for column in schema.NUMERIC_FEATURES:
        test = ks_2samp(new[column], reference[column])
        if test.statistic > 0.1 and test.pvalue < 0.01:
            return True
    for column, order in schema.GRADES.items():
        e = reference[column].value_counts(normalize=True).reindex(order, fill_value=0)
        a = new[column].value_counts(normalize=True).reindex(order, fill_value=0)
        e, a = e.clip(lower=1e-4), a.clip(lower=1e-4)
        if float(((a - e) * np.log(a / e)).sum()) > 0.2:
            return True
    return False


def drift_rates(public: pd.DataFrame, batches: int) -> dict[str, Any]:
    from appraiser.drift import drift_report

    reference = public.sample(5000, random_state=0)
    rest = public.drop(reference.index)
    out: dict[str, Any] = {}
    rows = []
    for size in (50, 100):
        new = old = 0
        for seed in range(batches):
            batch = rest.sample(size, random_state=seed)
            new += bool(drift_report(batch, reference, seed=seed)["drift"].any())
            old += old_psi_flags(batch, reference)
        out[f"false_alarm_{size}"] = wilson(new, batches)
        out[f"false_alarm_{size}_old"] = wilson(old, batches)
        rows.append([f"same population, {size} stones", rate(new, batches), rate(old, batches)])
    shifts = {
        "heavier (carat > 1)": rest[rest["carat"] > 1],
        "colours I-J only": rest[rest["color"].isin(["I", "J"])],
        "cut Ideal only": rest[rest["cut"] == "Ideal"],
    }
    for name, pool in shifts.items():
        for size in (50, 100):
            seen = sum(
                bool(
                    drift_report(pool.sample(size, random_state=s), reference, seed=s)[
                        "drift"
                    ].any()
                )
                for s in range(200)
            )
            out[f"power_{name}_{size}"] = wilson(seen, 200)
            rows.append([f"{name}, {size} stones", rate(seen, 200), ""])
    print(format_table(["batches", "flagged (now)", "flagged (PSI rule before)"], rows, "Drift"))
    return out


def _model(stones: pd.DataFrame) -> Any:
    from appraiser import features, schema
    from appraiser.models import CANDIDATES, PriceModel

    candidate = CANDIDATES["lightgbm"]
    member = candidate.build(candidate.defaults).fit(stones, features.log_price(stones["price"]))
    return PriceModel(
        members=[member],
        weights=[1.0],
        intervals=[0.16] * len(schema.CARAT_LABELS),
        coverage=0.9,
        reference=stones[list(schema.COLUMNS)].reset_index(drop=True),
    )


def _cross_fitted(stones: pd.DataFrame, folds: int | None = None) -> pd.DataFrame:
    """Each stone priced by a model fitted without its fold (the challenger's half of
    challenge.cross_fitted_prices)."""
    folds = folds or CROSS_FIT_FOLDS
    fold_of = np.arange(len(stones)) % folds
    parts = []
    for k in range(folds):
        held = stones[fold_of == k].copy()
        priced = _model(stones[fold_of != k]).predict(held)
        for column, name in (("price", "price"), ("price_low", "low"), ("price_high", "high")):
            held[f"challenger_{name}"] = priced[column].to_numpy()
        parts.append(held)
    return pd.concat(parts, ignore_index=True)


def gate_rates(
    public: pd.DataFrame, pairs: int, cross_pairs: int, power_pairs: int, train_size: int
) -> dict[str, Any]:
    from appraiser import gate, lineage

    rng = np.random.default_rng(1)
    rows, out = [], {}
    # cross-fitted: the challenger is judged on its own training stones, each priced by the same
    # recipe refitted without its fold (CROSS_FIT_FOLDS folds of k/(k-1) times the stones: each
    # fold model learns from as many stones as the champion)
    settings = (
        ("same recipe, disjoint samples", train_size, pairs, False),
        (
            "same recipe, disjoint samples, cross-fitted",
            train_size * CROSS_FIT_FOLDS // (CROSS_FIT_FOLDS - 1),
            cross_pairs,
            True,
        ),
        ("twice the stones", 2 * train_size, power_pairs, False),
    )
    for label, challenger_size, count, cross in settings:
        if not count:
            continue
        promoted, significant, improvements = 0, 0, []
        started = time.perf_counter()
        for _ in range(count):
            order = rng.permutation(len(public))
            a = public.iloc[order[:train_size]]
            b = public.iloc[order[train_size : train_size + challenger_size]]
            pool = public.iloc[order[-1000:]]
            champion, challenger = _model(a), _model(b)
            known = lineage.Lineage("1", np.unique(lineage.stone_keys(a)), "a", [], None, None)
            decision = gate.decide(
                challenger,
                lineage.stone_keys(b),
                pool.iloc[:0] if cross else pool,
                champion_version="1",
                champion=champion,
                champion_lineage=known,
                cross_fitted=_cross_fitted(b) if cross else None,
            )
            promoted += decision.promote
            assert decision.comparison is not None
            significant += decision.comparison.low > 0  # the improvement test alone
            improvements.append(decision.comparison.improvement)
        out[label] = {
            "promoted": wilson(promoted, count),
            "improvement_test_alone": wilson(significant, count),
            "mean_improvement": float(np.mean(improvements)),
            "seconds": time.perf_counter() - started,
        }
        rows.append(
            [
                f"{label} ({train_size:,} vs {challenger_size:,} stones)",
                rate(promoted, count),
                rate(significant, count),
                f"{np.mean(improvements):+.2f}",
                f"{sum(i > 0 for i in improvements)}/{count}",
            ]
        )
    print(
        format_table(
            [
                "pairs",
                "promoted by the gate",
                "lower bound > 0 alone",
                "mean improvement (points)",
                "gain > 0 (old rule)",
            ],
            rows,
            "The gate on same-recipe pairs, each judged on 1,000 stones neither saw (equal only "
            "in expectation: error rates by true gain are benchmarks/gate_oc.py's)",
        )
    )
    return out


def guard_rates(stones: pd.DataFrame, batches: int) -> dict[str, Any]:
    from appraiser import screening

    order = np.random.default_rng(2).permutation(len(stones))
    train_part = stones.iloc[order[: len(stones) // 2]]
    fresh = stones.iloc[order[len(stones) // 2 :]]
    model = quick_model(train_part, timeout=10)
    out: dict[str, Any] = {}
    rows = []
    for size in (50, 200, 1000):
        held = worse = 0
        for seed in range(batches):
            found = screening.screen(model, "1", fresh.sample(size, random_state=seed), seed=seed)
            held += found.is_held
            worse += bool(found.worse)
        out[f"same_{size}"] = {"held": wilson(held, batches), "worse": wilson(worse, batches)}
        rows.append([f"nothing wrong, {size} stones", rate(held, batches), rate(worse, batches)])
    changes = {
        "marked up 30%": lambda p: p * 1.3,
        "euros (x0.68)": lambda p: p * 0.68,
        "cents (x100)": lambda p: p * 100,
        "prices shuffled": lambda p: p.sample(frac=1, random_state=0).to_numpy(),
    }
    for name, change in changes.items():
        for size in (50, 200):
            held = 0
            for seed in range(200):
                batch = fresh.sample(size, random_state=seed)
                batch = batch.assign(price=change(batch["price"]))
                held += screening.screen(model, "1", batch, seed=seed).is_held
            out[f"{name}_{size}"] = wilson(held, 200)
            rows.append([f"{name}, {size} stones", rate(held, 200), ""])
    print(
        format_table(
            ["batches", "held for review", "called worse (retrain)"], rows, "Label-shift guard"
        )
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--pairs", type=int, default=300, help="same-recipe pairs")
    parser.add_argument(
        "--cross-pairs", type=int, default=200, help="same-recipe pairs, judged cross-fitted"
    )
    parser.add_argument("--power-pairs", type=int, default=60, help="pairs where one is better")
    parser.add_argument("--train-size", type=int, default=2500)
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--only", choices=["drift", "guard", "gate"], default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from appraiser import data

    public = data.load(None).clean
    path = resolve_data(args.data, required=False)
    collection = data.load(path).clean if path is not None else public.sample(5000, random_state=3)
    print(f"Guard data: {path or 'a 5,000-stone sample of the public table'}")
    parts = {
        "drift": lambda: drift_rates(public, args.batches),
        "guard": lambda: guard_rates(collection, args.batches),
        "gate": lambda: gate_rates(
            public, args.pairs, args.cross_pairs, args.power_pairs, args.train_size
        ),
    }
    results = {name: run() for name, run in parts.items() if args.only in (None, name)}
    write_json(args.json, results)


if __name__ == "__main__":
    main()
