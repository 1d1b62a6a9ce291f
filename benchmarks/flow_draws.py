"""The issue-9 flow's first retrain over several draws of fresh stones: judged vs true gain.

    python benchmarks/flow_draws.py [--data CSV] [--seeds 0 1 2] [--fresh 5000]

Per seed, in a fresh APPRAISER_HOME with the default tuning budget, as benchmarks/pipeline.py's
steps 1-2 (its seed 0 is that benchmark's draw): `train --data collection` (v1), ingest the
collection and --fresh public stones not in it (shuffled with the seed), `retrain` (v2). Printed:
- the gate's decision: its gain (v1's MAPE minus v2's on the stones neither trained on) and 95% CI;
- the true gain: v1 against v2 on the public stones in no set (all but 2 x --fresh + 1,000);
- the gain on the cross-fitted part alone, and the gain on those unseen stones of one model fitted
  as a fold model is (the recipe without a tenth of the judged training stones): what the
  cross-fitted comparison estimates, so the gap between the two is the draw's luck.
Gains in points of MAPE.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _bench import others_shuffled, resolve_data, unseen_stones
from pipeline import fresh_home


def ape(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    return np.abs(predicted / truth - 1) * 100


def one_draw(path: Path, public: pd.DataFrame, collection: pd.DataFrame, n: int, seed: int) -> dict:
    from appraiser import challenge, registry, train, tuning
    from appraiser.ingest import ingest_file
    from appraiser.pipeline import retrain

    fresh_home()
    others = others_shuffled(public, collection, seed)
    fresh, unseen = others.iloc[:n], unseen_stones(others, n)
    work = Path(tempfile.mkdtemp(prefix="appraiser-draws-"))
    fresh.to_csv(work / "fresh.csv", index=False)

    seen: dict[str, Any] = {}
    real_cross_fit = challenge.cross_fitted_prices

    def keep_cross_fit(fitted: tuning.Fitted, judge: np.ndarray, **options: Any) -> pd.DataFrame:
        seen.update(fitted=fitted, judge=judge)
        seen["priced"] = real_cross_fit(fitted, judge, **options)
        return seen["priced"]

    challenge.cross_fitted_prices = keep_cross_fit
    try:
        v1 = train.train(path, show_progress=False)
        for source, file in (("francesco", path), ("new expert", work / "fresh.csv")):
            ingest_file(file, source=source)
        v2 = retrain(show_progress=False)
    finally:
        challenge.cross_fitted_prices = real_cross_fit
    comparison = v2.gate.comparison if v2.gate else None
    m1, m2 = (registry.load_version(v.version)[1] for v in (v1, v2))
    truth = unseen["price"].to_numpy(float)
    a1, a2 = (ape(truth, m.predict(unseen)["price"].to_numpy()) for m in (m1, m2))
    if "priced" not in seen:  # the gate judged no stone cross-fitted: nothing more to say
        return {"seed": seed, "promoted": v2.champion, "decision": v2.decision}
    priced = seen["priced"]
    judged_truth = priced["price"].to_numpy(float)
    cf_gain = (
        ape(judged_truth, m1.predict(priced)["price"].to_numpy())
        - ape(judged_truth, priced["challenger_price"].to_numpy())
    ).mean()
    fitted, judge = seen["fitted"], seen["judge"]
    keep = np.ones(len(fitted.fit_part), bool)
    keep[np.random.default_rng(seed).permutation(np.flatnonzero(judge))[: judge.sum() // 10]] = 0
    fold_like = tuning.fit_model(
        fitted.results, fitted.weights, fitted.fit_part[keep], fitted.intervals, {}, fitted.ranges
    )
    a_fold = ape(truth, fold_like.predict(unseen)["price"].to_numpy())
    return {
        "seed": seed,
        "judged_stones": comparison.stones if comparison else 0,
        "judged_gain": comparison.improvement if comparison else None,
        "judged_low": comparison.low if comparison else None,
        "judged_high": comparison.high if comparison else None,
        "promoted": v2.champion,
        "unseen_stones": len(unseen),
        "true_gain": a1.mean() - a2.mean(),
        "true_gain_se": (a1 - a2).std(ddof=1) / np.sqrt(len(unseen)),
        "cross_fitted_stones": len(priced),
        "cross_fitted_gain": cf_gain,
        "fold_like_gain_on_unseen": a1.mean() - a_fold.mean(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fresh", type=int, default=5000)
    args = parser.parse_args()
    path = resolve_data(args.data, required=True)
    assert path is not None
    os.environ["APPRAISER_NATIVE_TREES"] = "false"  # nothing here is served
    from appraiser import data

    public, collection = data.load(None).clean, data.load(path).clean
    for seed in args.seeds:
        figures = one_draw(path, public, collection, args.fresh, seed)
        rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
        print(json.dumps(rounded), flush=True)


if __name__ == "__main__":
    main()
