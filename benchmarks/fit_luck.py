"""How far does the registered fit land from its fold fits? The gate's fit luck, with and without
bagging.

    python benchmarks/fit_luck.py [--draws 10] [--stones 5000] [--workers 2] [--json OUT]

The gate judges a challenger by fold models (10 folds) that are other fits than the one it
registers; the registered fit's own luck is what `GatePolicy.fit_luck_ratio` widens the interval
by. For each draw, --stones public stones are drawn at random; a recipe is fitted on all of them
(the registered fit) and on each 9/10 (the fold fits), and every fit is scored on 30,000 other
public stones. A fit's luck is its MAPE minus the mean of its ten fold fits' MAPE; its SD over
draws is the luck (two registered fits carry sqrt(2) times one's if independent); its mean is the
cost of a tenth fewer stones, plus, for an average, what averaging gains. Recipes: the LightGBM
candidate's defaults (600 trees of 15 leaves, bagging 0.7) and the shape tuning chose for the
champions of 2026-12-06 (322 trees of 45 leaves), each as it is and without bagging (every stone
in every tree: a deterministic fit); and AVERAGES, a registered model that averages fits of 2 or
4 bagging seeds of one of those recipes, whose fold fits stay that recipe's single fits, as the
gate's are (the average costs its number of fits in serving).
"""

from __future__ import annotations

import argparse
import functools
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from _bench import environment, format_table, write_json

FOLDS = 10
UNSEEN = 30_000
NO_BAGGING = {"subsample": 1.0, "subsample_freq": 0}
TUNED_SHAPE = {"n_estimators": 322, "num_leaves": 45}
DEFAULTS, TUNED = "defaults (600 x 15), bagging 0.7", "322 x 45, bagging 0.7"
RECIPES: dict[str, dict[str, Any]] = {  # LightGBM parameters over the candidate's defaults
    DEFAULTS: {},
    "defaults, no bagging": NO_BAGGING,
    TUNED: TUNED_SHAPE,
    "322 x 45, no bagging": {**TUNED_SHAPE, **NO_BAGGING},
}
AVERAGES: dict[str, tuple[str, int]] = {  # registered: an average of seeds of (recipe, seeds)
    "defaults, 4 seeds averaged": (DEFAULTS, 4),
    "322 x 45, 2 seeds averaged": (TUNED, 2),
    "322 x 45, 4 seeds averaged": (TUNED, 4),
}
PAIRS = [  # (against, the recipe): a change's cost or gain in MAPE, paired by draw
    (DEFAULTS, "defaults, no bagging"),
    (DEFAULTS, "defaults, 4 seeds averaged"),
    (TUNED, "322 x 45, no bagging"),
    (TUNED, "322 x 45, 2 seeds averaged"),
    (TUNED, "322 x 45, 4 seeds averaged"),
]


@functools.cache
def _public() -> Any:
    from appraiser import data

    return data.load(None).clean.reset_index(drop=True)


def fitted_mape(job: tuple[str, int, int, int]) -> tuple[str, int, int, float]:
    """One fit's MAPE on the draw's unseen stones: fold -1 is the registered fit, on every stone."""
    from appraiser import features, gate, schema
    from appraiser.models import CANDIDATES

    name, draw, fold, stones = job
    recipe, seeds = AVERAGES.get(name, (name, 1))
    public = _public()
    order = np.random.default_rng(draw).permutation(len(public))
    train = public.iloc[order[:stones]].reset_index(drop=True)
    unseen = public.iloc[order[stones : stones + UNSEEN]]
    if fold >= 0:
        train = train[np.arange(len(train)) % FOLDS != fold]
    matrix = features.encode(unseen).to_numpy(np.float64)
    log_price = np.zeros(len(unseen))
    for seed in range(seeds):  # the default seed first: one seed is the recipe as it is
        params = {**RECIPES[recipe], **({"random_state": seed} if seed else {})}
        member = CANDIDATES["lightgbm"].build(params)
        member.fit(train, features.log_price(train[schema.TARGET]))
        log_price = log_price + member.predict_log_matrix(matrix) / seeds
    actual = unseen[schema.TARGET].to_numpy(float)
    return name, draw, fold, float(gate.ape(actual, np.exp(log_price)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--stones", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write every fit's MAPE to this file")
    args = parser.parse_args()
    draws = range(args.draws)
    # the fold fits of an average are its recipe's: fitted once
    jobs = [(name, d, -1, args.stones) for name in [*RECIPES, *AVERAGES] for d in draws]
    jobs += [(name, d, k, args.stones) for name in RECIPES for d in draws for k in range(FOLDS)]
    mape: dict[tuple[str, int, int], float] = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for done, (name, draw, fold, value) in enumerate(pool.map(fitted_mape, jobs), 1):
            mape[name, draw, fold] = value
            if done % 50 == 0:
                print(f"{done} of {len(jobs)} fits", flush=True)
    registered = {n: np.array([mape[n, d, -1] for d in draws]) for n in [*RECIPES, *AVERAGES]}
    folds = {n: np.array([[mape[n, d, k] for k in range(FOLDS)] for d in draws]) for n in RECIPES}
    luck = {n: v - folds[AVERAGES.get(n, (n, 1))[0]].mean(axis=1) for n, v in registered.items()}
    rows = [
        [n, f"{registered[n].mean():.3f}", f"{luck[n].mean():+.3f}", f"{luck[n].std(ddof=1):.4f}"]
        for n in registered
    ]
    print(
        format_table(
            ["recipe", "MAPE % (all stones)", "luck: mean", "luck: SD"],
            rows,
            f"{args.draws} draws of {args.stones:,} public stones; luck = the fit's MAPE minus its "
            f"{FOLDS} fold fits' mean, on {UNSEEN:,} unseen stones",
        )
    )
    for a, b in PAIRS:
        diff = registered[b] - registered[a]
        se = diff.std(ddof=1) / np.sqrt(len(diff))
        print(f"{b} minus {a}: {diff.mean():+.3f} points of MAPE (SE {se:.3f}, n {len(diff)})")
    write_json(
        args.json,
        {
            "benchmark": "fit_luck",
            "environment": environment(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "registered_mape": {n: v.tolist() for n, v in registered.items()},
            "fold_mape": {n: v.tolist() for n, v in folds.items()},
            "luck": {n: v.tolist() for n, v in luck.items()},
        },
    )


if __name__ == "__main__":
    main()
