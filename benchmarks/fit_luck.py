"""How far does the registered fit land from its fold fits? The gate's fit luck, with and without
bagging.

    python benchmarks/fit_luck.py [--draws 10] [--stones 5000] [--workers 2]

The gate judges a challenger by fold models (10 folds) that are other fits than the one it
registers; the registered fit's own luck is what `GatePolicy.fit_luck_ratio` widens the interval
by. For each draw, --stones public stones are drawn at random; a recipe is fitted on all of them
(the registered fit) and on each 9/10 (the fold fits), and every fit is scored on 30,000 other
public stones. A fit's luck is its MAPE minus the mean of its ten fold fits' MAPE (its mean is the
cost of a tenth fewer stones; its SD over draws, the luck). Two registered fits (champion and
challenger) carry sqrt(2) times one's. Recipes: the LightGBM candidate's defaults (600 trees of
15 leaves, bagging 0.7) and the shape tuning chose for the champions of 2026-12-06 (322 trees of
45 leaves), each as it is, without bagging (every stone in every tree: a deterministic fit), and
with the registered model an average of fits of 2 or 4 bagging seeds (the fold fits stay single
fits, as the gate's are; the average costs its number of fits in serving).
"""

from __future__ import annotations

import argparse
import functools
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from _bench import format_table

FOLDS = 10
UNSEEN = 30_000
NO_BAGGING = {"subsample": 1.0, "subsample_freq": 0}
TUNED_SHAPE = {"n_estimators": 322, "num_leaves": 45}
# recipe: (parameters, how many fits of different bagging seeds the registered model averages)
RECIPES: dict[str, tuple[dict[str, Any], int]] = {
    "defaults (600 x 15), bagging 0.7": ({}, 1),
    "defaults, no bagging": (NO_BAGGING, 1),
    "defaults, 4 seeds averaged": ({}, 4),
    "322 x 45, bagging 0.7": (TUNED_SHAPE, 1),
    "322 x 45, no bagging": ({**TUNED_SHAPE, **NO_BAGGING}, 1),
    "322 x 45, 2 seeds averaged": (TUNED_SHAPE, 2),
    "322 x 45, 4 seeds averaged": (TUNED_SHAPE, 4),
}
PAIRS = [  # (against, the recipe): a change's cost or gain in MAPE, paired by draw
    ("defaults (600 x 15), bagging 0.7", "defaults, no bagging"),
    ("defaults (600 x 15), bagging 0.7", "defaults, 4 seeds averaged"),
    ("322 x 45, bagging 0.7", "322 x 45, no bagging"),
    ("322 x 45, bagging 0.7", "322 x 45, 2 seeds averaged"),
    ("322 x 45, bagging 0.7", "322 x 45, 4 seeds averaged"),
]


@functools.cache
def _public() -> Any:
    from appraiser import data

    return data.load(None).clean.reset_index(drop=True)


def fitted_mape(job: tuple[str, int, int, int]) -> tuple[str, int, int, float]:
    """One fit's MAPE on the draw's unseen stones: fold -1 is the fit on every stone."""
    from appraiser import features, gate, schema
    from appraiser.models import CANDIDATES

    recipe, draw, fold, stones = job
    public = _public()
    order = np.random.default_rng(draw).permutation(len(public))
    train = public.iloc[order[:stones]].reset_index(drop=True)
    unseen = public.iloc[order[stones : stones + UNSEEN]]
    params, seeds = RECIPES[recipe]
    if fold >= 0:  # a fold fit: one fit, as the gate's cross-fitting makes them
        train, seeds = train[np.arange(len(train)) % FOLDS != fold], 1
    matrix = features.encode(unseen).to_numpy(np.float64)
    log_price = np.zeros(len(unseen))
    for seed in range(seeds):  # the default seed first: one seed is the recipe as it is
        member = CANDIDATES["lightgbm"].build(
            {**params, **({"random_state": seed} if seed else {})}
        )
        member.fit(train, features.log_price(train[schema.TARGET]))
        log_price = log_price + member.predict_log_matrix(matrix) / seeds
    predicted = np.exp(log_price)
    return (
        recipe,
        draw,
        fold,
        float(gate.ape(unseen[schema.TARGET].to_numpy(float), predicted).mean()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--stones", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    # an average's fold fits are its one-seed recipe's: fitted once
    single = {repr(params): name for name, (params, seeds) in RECIPES.items() if seeds == 1}
    base = {r: single[repr(p)] for r, (p, _) in RECIPES.items()}
    jobs = [(r, d, -1, args.stones) for r in RECIPES for d in range(args.draws)]
    jobs += [
        (r, d, k, args.stones)
        for r in single.values()
        for d in range(args.draws)
        for k in range(FOLDS)
    ]
    mape: dict[tuple[str, int, int], float] = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for done, (recipe, draw, fold, value) in enumerate(pool.map(fitted_mape, jobs), 1):
            mape[recipe, draw, fold] = value
            if done % 50 == 0:
                print(f"{done} of {len(jobs)} fits", flush=True)
    draws = range(args.draws)
    full = {r: np.array([mape[r, d, -1] for d in draws]) for r in RECIPES}
    luck = {
        r: full[r] - np.array([np.mean([mape[base[r], d, k] for k in range(FOLDS)]) for d in draws])
        for r in RECIPES
    }
    rows = []
    for recipe in RECIPES:
        sd = luck[recipe].std(ddof=1)
        rows.append(
            [recipe, f"{full[recipe].mean():.3f}", f"{luck[recipe].mean():+.3f}", f"{sd:.4f}"]
        )
    print(
        format_table(
            ["recipe", "MAPE % (all stones)", "luck: mean", "luck: SD"],
            rows,
            f"{args.draws} draws of {args.stones:,} public stones; luck = the fit's MAPE minus its "
            f"{FOLDS} fold fits' mean, on {UNSEEN:,} unseen stones",
        )
    )
    for a, b in PAIRS:
        diff = full[b] - full[a]
        se = diff.std(ddof=1) / np.sqrt(len(diff))
        print(f"{b} minus {a}: {diff.mean():+.3f} points of MAPE (SE {se:.3f}, n {len(diff)})")


if __name__ == "__main__":
    main()
