"""Does one fit of a recipe land where its neighbours do? A fit's MAPE as its stones grow a little.

    python benchmarks/fit_modes.py [--stones 6000 6300 6500 6700] [--seeds 96 48 1]

For each seed, the public table is shuffled and LightGBM recipes are fitted on its first N stones
for each N of --stones (each set the one before plus a few hundred stones), then scored on 30,000
public stones none of them saw. A converged recipe's MAPE moves by a few hundredths of a point
from one N to the next; an unconverged one can jump between modes (gate_oc.py's luck).
Recipes: gate_oc.py's cheap one (the served near-L1 loss, 150 trees), the same with squared
loss, with 600 trees (gate_oc.py --trees 600), and the LightGBM candidate's defaults (the served
recipe before tuning).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from _bench import format_table

CHEAP = {"n_estimators": 150, "learning_rate": 0.1, "num_leaves": 7, "min_child_samples": 20}
RECIPES: dict[str, dict[str, Any]] = {
    "cheap, near-L1 (150 trees)": {**CHEAP, "subsample": 1.0, "loss_delta": 0.05},
    "cheap, squared loss": {**CHEAP, "subsample": 1.0, "loss_delta": None},
    "cheap, near-L1, 600 trees": {**CHEAP, "subsample": 1.0, "n_estimators": 600},
    "candidate defaults (600 x 15)": {},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stones", type=int, nargs="+", default=[6000, 6300, 6500, 6700])
    parser.add_argument("--seeds", type=int, nargs="+", default=[96, 48, 1])
    args = parser.parse_args()
    from appraiser import data, features, gate, lineage, schema
    from appraiser.models import CANDIDATES
    from appraiser.models.boosters import LightGBMMember

    LightGBMMember.monotone_method = "basic"  # as gate_oc.py fits
    public = data.load(None).clean.reset_index(drop=True)
    rows = []
    for seed in args.seeds:
        order = np.random.default_rng(seed).permutation(len(public))
        largest = public.iloc[order[: max(args.stones)]]
        unseen = public[~np.isin(lineage.stone_keys(public), lineage.stone_keys(largest))]
        unseen = unseen.sample(min(30_000, len(unseen)), random_state=seed)
        actual = unseen[schema.TARGET].to_numpy(float)
        matrix = features.encode(unseen).to_numpy(np.float64)
        for name, params in RECIPES.items():
            mapes = []
            for n in args.stones:
                stones = public.iloc[order[:n]]
                member = CANDIDATES["lightgbm"].build(params)
                member.fit(stones, features.log_price(stones[schema.TARGET]))
                mapes.append(gate.ape(actual, np.exp(member.predict_log_matrix(matrix))).mean())
            spread = max(mapes) - min(mapes)
            rows.append([seed, name, *(f"{m:.3f}" for m in mapes), f"{spread:.3f}"])
            print(f"seed {seed}, {name}: {spread:.3f} point from lowest to highest", flush=True)
    print(
        format_table(
            ["seed", "recipe", *(f"N={n:,}" for n in args.stones), "spread"],
            rows,
            "MAPE % on 30,000 unseen public stones, fitted on the first N of a shuffle",
        )
    )


if __name__ == "__main__":
    main()
