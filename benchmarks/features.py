"""Features benchmark: raw measurements (x, y, z) against scale-free shape, for one booster.

    python benchmarks/features.py [--data CSV] [--candidate lightgbm|xgboost] [--test 15000]

Trains the candidate with its default parameters on Francesco's collection with each encoding,
prices public stones he does not have (a sample), and counts price drops along the path a real
stone takes (2% heavier, measurements x 1.02^(1/3)) on 3,000 of them. The figures quoted in
src/appraiser/features.py come from this script.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _bench import format_table, resolve_data

from appraiser import data, features, models, schema

ENCODINGS: dict[str, tuple[str, ...]] = {
    "raw x, y, z (before)": ("carat", "x", "y", "z", "cut", "color", "clarity"),
    "shape (now)": features.ENCODED,
}


def encoder(columns: tuple[str, ...]) -> Any:
    def encode(frame: pd.DataFrame) -> pd.DataFrame:
        spread, ratio, depth_ratio = features.shape(
            *(frame[c].to_numpy(dtype=float) for c in ("carat", "x", "y", "z"))
        )
        derived = {"spread": spread, "ratio": ratio, "depth_ratio": depth_ratio}
        out = pd.DataFrame(index=frame.index)
        for c in columns:
            if c in schema.GRADES:
                out[c] = schema.grade_code(c, frame[c]).astype(float)
            elif c in derived:
                out[c] = derived[c]
            else:
                out[c] = frame[c].astype(float)
        return out

    return encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--candidate", default="lightgbm", choices=["lightgbm", "xgboost"])
    parser.add_argument("--test", type=int, default=15000)
    args = parser.parse_args()
    path = resolve_data(args.data, required=True)
    assert path is not None
    public = data.load(None).clean
    mine = data.load(path).clean
    key = list(schema.FEATURES)
    merged = public.merge(mine[key].drop_duplicates(), on=key, how="left", indicator=True)
    test = merged[merged["_merge"] == "left_only"].drop(columns="_merge")
    test = test.sample(min(args.test, len(test)), random_state=0).reset_index(drop=True)
    sample = test.sample(min(3000, len(test)), random_state=1)
    rows = []
    for name, columns in ENCODINGS.items():
        encode = encoder(columns)
        features.ENCODED = columns  # what the members' constraints and matrices follow
        # what the members encode stones with (the price model is not used here)
        models.members._matrix = models.boosters._matrix = (
            lambda s, encode=encode: encode(s).to_numpy(dtype=np.float64)  # type: ignore[misc]
        )
        started = time.perf_counter()
        candidate = models.CANDIDATES[args.candidate]
        member = candidate.build(candidate.defaults).fit(mine, np.log(mine["price"].to_numpy()))
        price = np.exp(member.predict_log(test))
        error = np.abs(price - test["price"].to_numpy()) / test["price"].to_numpy()
        base = np.exp(member.predict_log(sample))
        grown = np.exp(member.predict_log(features.heavier(sample, 1.02)))
        rows.append(
            [
                name,
                f"{100 * error.mean():.2f}",
                f"{100 * (error <= 0.1).mean():.1f}",
                str(int((grown < base * (1 - 1e-9)).sum())),
                f"{time.perf_counter() - started:.1f}",
            ]
        )
    print(
        format_table(
            ["encoding", "MAPE %", "within ±10% %", "drops, 2% heavier (of 3,000)", "seconds"],
            rows,
            f"{args.candidate} (defaults) trained on {path.name}, "
            f"scored on {len(test):,} public stones not in it",
        )
    )


if __name__ == "__main__":
    main()
