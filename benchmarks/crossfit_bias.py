"""Is the gate's cross-fitted comparison pessimistic? Its gain against the gain on unseen stones.

    python benchmarks/crossfit_bias.py [--data CSV] [--seeds 0 1] [--fresh 5000]

The gate judges a challenger on its own training stones the champion never saw, each priced by
the challenger's recipe refitted without the tenth that holds it (challenge.cross_fitted_prices).
Those fold models miss a tenth of the new stones, so they may price a little worse than the
challenger itself. Per seed, without tuning (LightGBM's defaults: the question is the mechanism):
1. v1: fit on Francesco's collection (or the public table's first 5,000 stones without it);
2. v2: fit on the collection plus --fresh public stones (not in it), tuned on the collection only,
   as a retrain does; the fresh stones are then priced cross-fitted (10 folds);
3. the cross-fitted gain (v1's MAPE minus the fold models' on the fresh stones) beside the gain
   on 10,000 other public stones (v1 against v2, and against a model missing a tenth of the fresh
   stones, as a fold model does). Gains in points of MAPE.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from _bench import others_shuffled, resolve_data


def ape(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    return np.abs(predicted / truth - 1) * 100


def one_seed(collection: pd.DataFrame, public: pd.DataFrame, fresh_n: int, seed: int) -> dict:
    from appraiser.challenge import cross_fitted_prices
    from appraiser.tuning import fit, fit_model

    others = others_shuffled(public, collection, seed)
    fresh, test = others.iloc[:fresh_n], others.iloc[fresh_n : fresh_n + 10_000]
    options: dict = {"trials": 1, "timeout": 60, "candidates": ["lightgbm"], "seed": 42}
    options["show_progress"] = False
    v1 = fit(collection, test.head(100), final_stones=None, source="collection", **options)
    both = pd.concat([collection, fresh], ignore_index=True)
    tune_on = np.r_[np.ones(len(collection), bool), np.zeros(len(fresh), bool)]
    v2 = fit(both, test.head(100), final_stones=None, source="both", tune_on=tune_on, **options)
    judged = cross_fitted_prices(v2, ~tune_on, seed=42)
    truth = judged["price"].to_numpy()
    v1_judged = ape(truth, v1.evaluated.predict(judged)["price"].to_numpy())
    folds_judged = ape(truth, judged["challenger_price"].to_numpy())
    paired = v1_judged - folds_judged
    test_truth = test["price"].to_numpy()
    v1_test = ape(test_truth, v1.evaluated.predict(test)["price"].to_numpy())
    v2_test = ape(test_truth, v2.evaluated.predict(test)["price"].to_numpy())
    keep = np.ones(len(both), bool)
    keep[np.flatnonzero(~tune_on)[::10]] = False  # a tenth of the fresh stones left out
    fold_like = fit_model(v2.results, v2.weights, both[keep], v2.intervals, {}, v2.ranges)
    fold_test = ape(test_truth, fold_like.predict(test)["price"].to_numpy())
    return {
        "seed": seed,
        "judged": len(judged),
        "cross_fitted_gain": paired.mean(),
        "cross_fitted_gain_se": paired.std(ddof=1) / np.sqrt(len(paired)),
        "gain_on_unseen_stones": v1_test.mean() - v2_test.mean(),
        "gain_on_unseen_se": (v1_test - v2_test).std(ddof=1) / np.sqrt(len(test)),
        "fold_sized_model_gain_on_unseen": v1_test.mean() - fold_test.mean(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--fresh", type=int, default=5000)
    args = parser.parse_args()
    os.environ["APPRAISER_HOME"] = tempfile.mkdtemp(prefix="appraiser-crossfit-")
    os.environ["APPRAISER_NATIVE_TREES"] = "false"  # nothing here is served
    from appraiser import data

    public = data.load(None).clean
    path = resolve_data(args.data, required=False)
    collection = data.load(path).clean if path else public.head(5000)
    collection = collection.reset_index(drop=True)
    for seed in args.seeds:
        figures = one_seed(collection, public, args.fresh, seed)
        rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}
        print(json.dumps(rounded))


if __name__ == "__main__":
    main()
