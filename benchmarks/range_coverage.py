"""Range coverage per grade level and carat band: the range's calibrations side by side, one model.

    python benchmarks/range_coverage.py [--train public|collection] [--stones N] [--seed S]
                                        [--candidate NAME] [--json OUT] [--draws N]

One recipe (a candidate with its default parameters: no tuning, so the figures do not depend on
how busy the machine is) is fitted on the training stones: N public stones drawn at random
(`--train public`, the rest are the test stones) or Francesco's collection (`--train collection`,
the test stones are the public ones he does not have, as in accuracy.py). The same model then gets
its 90% range calibrated three ways (models.AdaptiveRange), each priced on the test stones:

- `one, tuning folds, half`: one distribution of scores for every stone, from the errors of
  5-fold models of half the stones (a retrain tuned on the champion's half: fold models of 40%);
- `one, tuning folds, all`: the same from 5-fold models of every stone (a first training);
- `bands, tuning folds, all`: per carat band (Mondrian), from 5-fold models of every stone
  (CV+), what tuning.fit calibrates now in a first training and in a retrain;
- `bands + grade scale (tried)`: the same, its width scaled per carat band and grade level so that
  each group's calibration scores are covered at 90% (`grade_scale`; not adopted).

It prints the coverage of every cut, color and clarity level and carat band with a Wilson 95%
interval, marking those outside 88-92% among levels of 500+ stones, and each calibration's mean
price_high / price_low (how wide the range is); the cut, color and clarity levels outside are
listed after (carat bands are shown, not counted: issue 23's test), and the exit status is 1 when
the product has any.

`--draws N` (public training stones only): the product's calibration and the grade scale, plain and
with its levels partially pooled (`POOLING_STONES`), on N draws (seeds S to S+N-1), since one
draw's coverage of a level is one outcome of a noisy procedure. Per level and for each: the mean
coverage over the draws (a level the method treats fairly sits near 90%), its SD, its RMS distance
from 90% (bias and noise together) and the draws in 88-92%; for the product, in-sample: the mean
share of the level's own calibration scores inside its range (every band holds 90% of its scores by
construction, a level need not). The test stones are mostly the same from draw to draw: the spread
is the training draw's. Then, for each, how many cut, color and clarity levels of 500+ test stones
fall outside 88-92% a draw and the draws (Wilson 95%) where none does.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _bench import environment, format_table, resolve_data, write_json

from appraiser import data, evaluate, features, schema, tuning
from appraiser.models import CANDIDATES, AdaptiveRange

GOAL = (88.0, 92.0)  # % per level with MIN_LEVEL test stones or more
MIN_LEVEL = 500
PRODUCT = "bands, tuning folds, all"  # what tuning.fit calibrates
GRADE_SCALE = "bands + grade scale (tried)"
# partial pooling: a level's own scale counts n / (n + POOLING_STONES) of its deviation from its
# grade's mean, so a level needs about this many calibration stones for half its own scale: at
# 500, a level's 90% point has a standard error of about 1.3 points of coverage, the size of the
# biases seen
POOLING_STONES = 500
POOLED = f"bands + pooled grade scale (k={POOLING_STONES})"


def calibration_scores(
    matrix: np.ndarray, errors: np.ndarray, ranges: AdaptiveRange, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(which stones calibrated, their scores in order): the cross-fitted scores `ranges` was
    calibrated on (AdaptiveRange.fit keeps the finite errors), computed again stone by stone."""
    finite = np.isfinite(errors)
    scores = AdaptiveRange.cross_fitted_scores(matrix[finite], errors[finite], seed)
    assert np.array_equal(np.sort(scores), ranges.scores), "not the range's calibration scores"
    return finite, scores


def scaled(
    log_price: np.ndarray, bounds: tuple[np.ndarray, np.ndarray], factor: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The log range's ends moved `factor` times as far from the price."""
    low, high = bounds
    return log_price + factor * (low - log_price), log_price + factor * (high - log_price)


def grade_scale(
    train: pd.DataFrame,
    matrix: np.ndarray,
    scores: np.ndarray,
    ranges: AdaptiveRange,
    pooling: int | None = None,
) -> Callable[[pd.DataFrame, np.ndarray], np.ndarray]:
    """Tried, not adopted: a scale on sigma(x) per carat band and cut, color and clarity level, so
    that 90% of each group's calibration scores fall inside (a 90% linear quantile regression on
    the groups' indicators: Gibbs, Cherian and Candes' group-conditional conformal in its
    unaugmented form, without their finite-sample guarantee). t_i = how far stone i's score
    reaches towards its band's ends (inside when t <= 1). Prints the groups' in-sample coverage.
    `train`, `matrix`: the calibrated stones; `scores`: theirs (calibration_scores).
    `pooling` k: each grade's level effects shrunk towards their stone-weighted mean by
    n / (n + k) (partial pooling, as an empirical-Bayes estimate would for a level of n stones)."""
    from sklearn.linear_model import QuantileRegressor

    sigma = ranges.sigma(matrix)  # each stone's band's score quantiles, from its range's ends:
    low, high = (end / sigma for end in ranges.bounds(matrix, np.zeros(len(matrix))))
    reach = np.maximum(scores / high, scores / low)

    def indicators(stones: pd.DataFrame, encoded: np.ndarray) -> np.ndarray:
        band = ranges.band(encoded)
        columns = [np.ones(len(stones))]
        columns += [(band == b).astype(float) for b in range(1, len(ranges.band_scores))]
        for grade in schema.GRADE_COLUMNS:
            levels = schema.GRADES[grade][1:]  # the first level is the intercept's
            columns += [(stones[grade].astype(str) == level).to_numpy(float) for level in levels]
        return np.column_stack(columns)

    groups = indicators(train, matrix)
    fit = QuantileRegressor(quantile=0.9, alpha=0.0, fit_intercept=False, solver="highs")
    fit.fit(groups, np.log(np.maximum(reach, 1e-9)))
    coef = np.array(fit.coef_, dtype=float)
    if pooling is not None:
        start = len(ranges.band_scores)  # after the intercept and the bands' columns
        for grade in schema.GRADE_COLUMNS:
            levels = schema.GRADES[grade]
            size = len(levels) - 1
            effect = np.concatenate([[0.0], coef[start : start + size]])  # the first level: 0
            counts = np.array([(train[grade].astype(str) == v).sum() for v in levels], float)
            mean = float(np.average(effect, weights=counts))
            pooled = mean + (effect - mean) * counts / (counts + pooling)
            coef[0] += pooled[0]  # the first level's effect moves into the intercept
            coef[start : start + size] = pooled[1:] - pooled[0]
            start += size
        # shrinking moves the stone-weighted mean: the intercept again covers 90% of the stones
        coef[0] += float(np.quantile(np.log(np.maximum(reach, 1e-9)) - groups @ coef, 0.9))
    inside = reach <= np.exp(groups @ coef) * (1 + 1e-9)
    band = ranges.band(matrix)
    masks = [band == b for b in range(len(ranges.band_scores))]
    masks += [
        (train[g].astype(str) == v).to_numpy()
        for g in schema.GRADE_COLUMNS
        for v in schema.GRADES[g]
    ]
    shares = [100 * inside[m].mean() for m in masks if m.any()]
    print(
        f"grade scale{' (pooled)' if pooling else ''}: calibration stones inside, all "
        f"{100 * inside.mean():.1f}%, "
        f"each band or level {min(shares):.1f}-{max(shares):.1f}%"
    )
    return lambda stones, encoded: np.exp(indicators(stones, encoded) @ coef)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", choices=("public", "collection"), default="public")
    parser.add_argument("--stones", type=int, default=5000, help="public stones to train on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidate", default="lightgbm", choices=list(CANDIDATES))
    parser.add_argument("--data", type=Path, help="Francesco's CSV (--train collection)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--draws", type=int, default=1, help="draws of public training stones (product only)"
    )
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


def product_coverage(
    train: pd.DataFrame, test: pd.DataFrame, name: str, seed: int
) -> dict[str, tuple[list[dict[str, Any]], float]]:
    """The product's calibration (bands, scores from 5-fold models of every training stone) on
    one model of `name`'s defaults, and the same with the grade scales (plain and pooled): for
    each, the coverage per level and overall (%). The product's rows also hold each grade
    level's share of calibration stones inside."""
    candidate = CANDIDATES[name]
    y = features.log_price(train[schema.TARGET])
    model = candidate.build(candidate.defaults).fit(train, y)
    oof = tuning.cross_validate(
        candidate, candidate.defaults, train, y, folds=tuning.FOLDS, seed=seed
    )
    matrix, test_matrix = features.encode(train).to_numpy(), features.encode(test).to_numpy()
    ranges = AdaptiveRange.fit(matrix, y - oof, tuning.COVERAGE, seed)
    log_price = model.predict_log_matrix(test_matrix)
    low, high = ranges.bounds(test_matrix, log_price)
    truth = np.log(test[schema.TARGET].to_numpy())
    finite, scores = calibration_scores(matrix, y - oof, ranges, seed)
    calibrated, encoded = train[finite].reset_index(drop=True), matrix[finite]
    out = {}
    variants = {PRODUCT: (low, high)}
    for variant, pooling in ((GRADE_SCALE, None), (POOLED, POOLING_STONES)):
        scale = grade_scale(calibrated, encoded, scores, ranges, pooling)
        variants[variant] = scaled(log_price, (low, high), scale(test, test_matrix))
    for variant, (lo, hi) in variants.items():
        predicted = pd.DataFrame({"price_low": np.exp(lo), "price_high": np.exp(hi)})
        overall = float(100 * ((truth >= lo) & (truth <= hi)).mean())
        out[variant] = (evaluate.grade_coverage(test, predicted), overall)
    # the same levels among the calibration stones: the share of their (cross-fitted) scores
    # inside their band's ends, which the range was calibrated to hold at 90% over all of them
    band = ranges.band(encoded)  # compared in score units: the ends are some of these scores
    inside = (scores >= ranges._low[band]) & (scores <= ranges._high[band])
    for row in out[PRODUCT][0]:
        if row["slice"] in schema.GRADE_COLUMNS:
            mask = (calibrated[row["slice"]].astype(str) == row["level"]).to_numpy()
            row["calibration"] = 100 * float(inside[mask].mean()) if mask.any() else float("nan")
    return out


def _judged_outside(row: dict[str, Any]) -> bool:
    """A cut, color or clarity level of MIN_LEVEL+ test stones outside GOAL (issue 23's test)."""
    judged = row["slice"] != "carat band" and row["stones"] >= MIN_LEVEL
    return judged and not GOAL[0] <= row["coverage"] <= GOAL[1]


def _summary(per_draw: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per level over the draws: mean coverage, its SD, RMS distance from 90%, draws in GOAL."""
    levels = []
    for first in per_draw[0]:
        key = (first["slice"], first["level"])  # a level absent from a draw is not counted there
        rows = [r for draw in per_draw for r in draw if (r["slice"], r["level"]) == key]
        values = np.array([r["coverage"] for r in rows])
        calibration = [r["calibration"] for r in rows if "calibration" in r]
        levels.append(
            {
                "slice": first["slice"],
                "level": first["level"],
                "draws": len(rows),
                "stones": int(np.mean([r["stones"] for r in rows])),
                "mean": float(values.mean()),
                "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "rms_from_90": float(np.sqrt(np.mean((values - 90.0) ** 2))),
                "inside": int(((values >= GOAL[0]) & (values <= GOAL[1])).sum()),
                "calibration": float(np.mean(calibration)) if calibration else None,
            }
        )
    return levels


def many_draws(args: argparse.Namespace) -> int:
    """The product's calibration, and the grade scales, over --draws draws of public stones."""
    public = data.load(None).clean.reset_index(drop=True)
    per_draw: dict[str, list[list[dict[str, Any]]]] = {}
    overall: dict[str, list[float]] = {}
    for seed in range(args.seed, args.seed + args.draws):
        train = public.sample(args.stones, random_state=seed)
        test = public.drop(train.index).reset_index(drop=True)
        results = product_coverage(train.reset_index(drop=True), test, args.candidate, seed)
        for variant, (rows, total) in results.items():
            per_draw.setdefault(variant, []).append(rows)
            overall.setdefault(variant, []).append(total)
            outside = [f"{r['level']} {r['coverage']:.1f}" for r in rows if _judged_outside(r)]
            print(f"seed {seed}, {variant}: all {total:.1f}%; outside: {', '.join(outside) or '-'}")
    summaries = {variant: _summary(draws) for variant, draws in per_draw.items()}
    n = args.draws
    table = []
    for i, mine in enumerate(summaries[PRODUCT]):
        cal = mine["calibration"]
        table.append(
            (
                mine["slice"],
                mine["level"],
                f"{mine['stones']:,}",
                f"{cal:.1f}" if cal is not None else "",
                *(
                    f"{v['mean']:.1f} / {v['sd']:.1f} / {v['rms_from_90']:.1f} / {v['inside']}/{n}"
                    for v in (summary[i] for summary in summaries.values())
                ),
            )
        )
    print(
        format_table(
            ("slice", "level", "test stones", "in-sample %", *summaries),
            table,
            f"% in the 90% range over {n} draws of {args.stones:,} public training stones: "
            f"mean / SD / RMS from 90 / draws in {GOAL[0]:g}-{GOAL[1]:g}%",
        )
    )
    counts = {}
    for variant, draws in per_draw.items():
        counts[variant] = [sum(_judged_outside(r) for r in draw) for draw in draws]
        every = counts[variant].count(0)
        low, high = evaluate.wilson(every, n)
        judged = [v for v in summaries[variant] if v["slice"] != "carat band"]
        misses = [r["coverage"] for draw in draws for r in draw if _judged_outside(r)]
        print(
            f"{variant}: overall {np.mean(overall[variant]):.2f}%; cut, color and clarity "
            f"levels of {MIN_LEVEL}+ test stones outside {GOAL[0]:g}-{GOAL[1]:g}%: "
            f"{np.mean(counts[variant]):.2f} a draw ({sum(m < GOAL[0] for m in misses)} below, "
            f"{sum(m > GOAL[1] for m in misses)} above, in all), none in {every}/{n} draws "
            f"({low:.0f}-{high:.0f}%); their mean RMS from 90: "
            f"{np.mean([v['rms_from_90'] for v in judged]):.2f} points"
        )
    for variant in list(counts)[1:]:  # paired, draw by draw: mean +- 1.96 SE (normal)
        diff = np.array(counts[variant]) - np.array(counts[PRODUCT])
        half = 1.96 * float(diff.std(ddof=1)) / np.sqrt(n) if n > 1 else float("nan")
        print(
            f"{variant} minus the product, levels outside a draw: {diff.mean():+.2f} "
            f"({diff.mean() - half:+.2f} to {diff.mean() + half:+.2f}); fewer in "
            f"{(diff < 0).sum()} draws, more in {(diff > 0).sum()}"
        )
    write_json(
        args.json,
        {
            "benchmark": "range_coverage",
            "environment": environment(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "levels": summaries,
            "overall": overall,
            "levels_outside_per_draw": counts,
        },
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.draws < 1:
        sys.exit("--draws must be 1 or more")
    if args.draws > 1:
        if args.train != "public":
            sys.exit("--draws needs --train public: the collection is one draw")
        return many_draws(args)
    train, test = split(args)
    candidate, seed = CANDIDATES[args.candidate], args.seed
    y = features.log_price(train[schema.TARGET])
    matrix = features.encode(train).to_numpy()
    model = candidate.build(candidate.defaults).fit(train, y)
    test_matrix = features.encode(test).to_numpy()
    log_price = model.predict_log_matrix(test_matrix)
    print(f"{args.candidate} (defaults) on {len(train):,} {args.train} stones; {len(test):,} test")

    def errors(rows: np.ndarray) -> np.ndarray:
        oof = tuning.cross_validate(
            candidate, candidate.defaults, train[rows], y[rows], folds=tuning.FOLDS, seed=seed
        )
        return y[rows] - oof

    half = np.random.default_rng(seed).random(len(train)) < 0.5
    every = np.ones(len(train), dtype=bool)
    half_errors, all_errors = errors(half), errors(every)
    variants: dict[str, AdaptiveRange] = {}
    seconds: dict[str, float] = {}  # the calibration's, after the cross-validation
    for name, part, part_errors, banded in (
        ("one, tuning folds, half", half, half_errors, False),
        ("one, tuning folds, all", every, all_errors, False),
        (PRODUCT, every, all_errors, True),
    ):
        started = time.perf_counter()
        fitted = AdaptiveRange.fit(matrix[part], part_errors, tuning.COVERAGE, seed)
        seconds[name] = time.perf_counter() - started
        variants[name] = (
            fitted if banded else AdaptiveRange(fitted.booster, fitted.scores, fitted.coverage)
        )

    bounds = {name: r.bounds(test_matrix, log_price) for name, r in variants.items()}
    started = time.perf_counter()
    finite, scores = calibration_scores(matrix, all_errors, variants[PRODUCT], seed)
    scale = grade_scale(
        train[finite].reset_index(drop=True), matrix[finite], scores, variants[PRODUCT]
    )
    seconds[GRADE_SCALE] = time.perf_counter() - started
    bounds[GRADE_SCALE] = scaled(log_price, bounds[PRODUCT], scale(test, test_matrix))

    coverage: dict[str, list[dict[str, Any]]] = {}
    overall: dict[str, float] = {}
    ratio: dict[str, float] = {}  # mean price_high / price_low: how wide the range is
    for name, (low, high) in bounds.items():
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
            ("slice", "level", "stones", *bounds),
            table,
            f"% in the 90% range (Wilson 95% interval; ! outside {GOAL[0]:g}-{GOAL[1]:g}%)",
        )
    )
    outside = {
        name: [f"{r['level']} {r['coverage']:.1f}" for r in rows_ if _judged_outside(r)]
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
    return 0 if not outside[PRODUCT] else 1


if __name__ == "__main__":
    sys.exit(main())
