"""Range coverage per grade level and carat band: the range's calibrations side by side, one model.

    python benchmarks/range_coverage.py [--train public|collection] [--stones N] [--seed S]
                                        [--candidate NAME] [--json OUT]

One recipe (a candidate with its default parameters: no tuning, so the figures do not depend on
how busy the machine is) is fitted on the training stones: N public stones drawn at random
(`--train public`, the rest are the test stones) or Francesco's collection (`--train collection`,
the test stones are the public ones he does not have, as in accuracy.py). The same model then gets
its 90% range calibrated three ways (models.AdaptiveRange), each priced on the test stones:

- `one, tuning folds, half`: one distribution of scores for every stone, from the errors of
  5-fold models of half the stones (a retrain tuned on the champion's half: fold models of 40%);
- `one, tuning folds, all`: the same from 5-fold models of every stone (a first training);
- `bands, tuning folds, all`: per carat band (Mondrian), from 5-fold models of every stone
  (CV+), what tuning.fit calibrates now in a first training and in a retrain.

It prints the coverage of every cut, color and clarity level and carat band with a Wilson 95%
interval, marking those outside 88-92% among levels of 500+ stones, and each calibration's mean
price_high / price_low (how wide the range is).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _bench import environment, format_table, resolve_data, write_json

from appraiser import data, evaluate, features, schema, tuning
from appraiser.models import CANDIDATES, AdaptiveRange

GOAL = (88.0, 92.0)  # % per level with MIN_LEVEL test stones or more
MIN_LEVEL = 500


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", choices=("public", "collection"), default="public")
    parser.add_argument("--stones", type=int, default=5000, help="public stones to train on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidate", default="lightgbm", choices=list(CANDIDATES))
    parser.add_argument("--data", type=Path, help="Francesco's CSV (--train collection)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return parser.parse_args(argv)


def split(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    if args.train == "collection":
        from accuracy import unseen_public_stones

        path = resolve_data(args.data, required=True)
        assert path is not None
        return data.load(path).clean.reset_index(drop=True), unseen_public_stones(path)[0]
    public = data.load(None).clean.reset_index(drop=True)
    train = public.sample(args.stones, random_state=args.seed)
    return train.reset_index(drop=True), public.drop(train.index).reset_index(drop=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    train, test = split(args)
    candidate, seed = CANDIDATES[args.candidate], args.seed
    y = features.log_price(train[schema.TARGET])
    matrix = features.encode(train).to_numpy()
    model = candidate.build(candidate.defaults).fit(train, y)
    test_matrix = features.encode(test).to_numpy()
    log_price = model.predict_log_matrix(test_matrix)
    print(f"{args.candidate} (defaults) on {len(train):,} {args.train} stones; {len(test):,} test")

    def errors(rows: np.ndarray, folds: int) -> np.ndarray:
        oof = tuning.cross_validate(
            candidate, candidate.defaults, train[rows], y[rows], folds=folds, seed=seed
        )
        return y[rows] - oof

    half = np.random.default_rng(seed).random(len(train)) < 0.5
    every = np.ones(len(train), dtype=bool)
    variants: dict[str, AdaptiveRange] = {}
    seconds: dict[str, float] = {}
    for name, part, folds, banded in (
        ("one, tuning folds, half", half, tuning.FOLDS, False),
        ("one, tuning folds, all", every, tuning.FOLDS, False),
        ("bands, tuning folds, all", every, tuning.FOLDS, True),
    ):
        started = time.perf_counter()
        fitted = AdaptiveRange.fit(matrix[part], errors(part, folds), tuning.COVERAGE, seed)
        seconds[name] = time.perf_counter() - started
        variants[name] = (
            fitted if banded else AdaptiveRange(fitted.booster, fitted.scores, fitted.coverage)
        )

    coverage: dict[str, list[dict[str, Any]]] = {}
    overall: dict[str, float] = {}
    ratio: dict[str, float] = {}  # mean price_high / price_low: how wide the range is
    for name, ranges in variants.items():
        low, high = ranges.bounds(test_matrix, log_price)
        predicted = pd.DataFrame({"price_low": np.exp(low), "price_high": np.exp(high)})
        coverage[name] = evaluate.grade_coverage(test, predicted)
        truth = np.log(test[schema.TARGET].to_numpy())
        overall[name] = float(100 * ((truth >= low) & (truth <= high)).mean())
        ratio[name] = float(np.exp(high - low).mean())

    def cell(r: dict[str, Any]) -> str:
        out = r["stones"] >= MIN_LEVEL and not GOAL[0] <= r["coverage"] <= GOAL[1]
        return f"{r['coverage']:.1f} ({r['low']:.1f}-{r['high']:.1f}){' !' if out else ''}"

    first = next(iter(coverage.values()))
    table = [
        (r["slice"], r["level"], f"{r['stones']:,}", *(cell(c[i]) for c in coverage.values()))
        for i, r in enumerate(first)
    ]
    table.append(("all", "", f"{len(test):,}", *(f"{v:.1f}" for v in overall.values())))
    print(
        format_table(
            ("slice", "level", "stones", *variants),
            table,
            f"% in the 90% range (Wilson 95% interval; ! outside {GOAL[0]:g}-{GOAL[1]:g}%)",
        )
    )
    outside = {
        name: [
            f"{r['level']} {r['coverage']:.1f}"
            for r in rows_
            if r["stones"] >= MIN_LEVEL and not GOAL[0] <= r["coverage"] <= GOAL[1]
        ]
        for name, rows_ in coverage.items()
    }
    for name, levels in outside.items():
        print(
            f"{name}: calibrated in {seconds[name]:.1f} s; mean high/low {ratio[name]:.3f}; "
            f"outside: {', '.join(levels) or '-'}"
        )
    write_json(
        args.json,
        {
            "benchmark": "range_coverage",
            "environment": environment(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "coverage": coverage,
            "overall": overall,
            "mean_high_over_low": ratio,
            "outside": outside,
            "calibration_seconds": seconds,
        },
    )
    return 0 if not outside[next(reversed(outside))] else 1


if __name__ == "__main__":
    sys.exit(main())
