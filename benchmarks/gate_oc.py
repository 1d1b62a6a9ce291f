"""The gate's operating characteristics: how often it promotes, given each challenger's TRUE gain.

    python benchmarks/gate_oc.py [--draws 1200] [--workers 1] [--seed 0] [--json out.json]
    python benchmarks/gate_oc.py --smoke          # 6 draws: the script works, no figure
    python benchmarks/gate_oc.py --bag 10         # each model registered as 10 fold fits' average
    python benchmarks/gate_oc.py --served-defaults --collection 5000 --seeds 2   # the product's
                                                    # way: 2 seeds' fits registered

Each draw, from the public table (53,940 stones), with a cheap fixed recipe (LightGBM, 150 trees
of 7 leaves, monotone, fixed parameters) so that many draws fit:
- the champion: the recipe trained on every stone of a "collection" (--collection stones), as
  `appraiser train --data` does;
- the challenger: the recipe, or a perturbed one, trained on the collection's and some fresh
  stones' non-sealed ones, as a retrain does (lineage.roles: the sealed stones stay out);
- the gate as it runs: every non-sealed stone priced by both recipes refitted without the fold
  holding it (challenge.cross_fitted_prices, 10 folds, twins together), then gate.decide with the
  default policy (lower bound > 0, estimate >= 0.02 point, slices, sanity; not coverage, see
  POLICY);
- the TRUE gain: champion MAPE minus challenger MAPE on 30,000 public stones neither saw (their
  twins too), paired, so its own SE is about 0.01 point.
Draws mix four kinds so true gains spread from clearly worse to clearly better: a handful of
fresh stones (a near-tie), a weaker challenger (fewer trees) with a few fresh stones, a few fresh
stones, many fresh stones. Printed, conditional on the true gain (Wilson 95%):
(A) P(promote | gain <= 0), (B) P(promote | gain >= 0.10), (C) P(promote | |gain| <= 0.02), and
(D) the calibration of the estimate: (estimate - truth) / SE over all draws, mean and SD (the SE
the gate uses, the stones' and the fit luck's, with the truth's own). Each draw also records the
rule before the fit luck was added (`promote_before`: the stones' noise alone).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _bench import format_table, wilson, write_json

# No bagging: a fit is then fixed by its stones, not by the luck of one bagging draw, which no
# estimate from other fits can see.
# small leaves and no bagging keep it stable: 70 more stones move one fit's MAPE on 30,000 unseen
# stones by about 0.02 point (the served recipe's: about 0.03), not by 0.05-0.15 as with 15 leaves
RECIPE = {
    "n_estimators": 150,
    "learning_rate": 0.1,
    "num_leaves": 7,
    "min_child_samples": 20,
    "subsample": 1.0,
}
KINDS = ("tie", "weaker", "few fresh", "many fresh", "second collection")
# ties and weaker challengers: the null needs most draws; a second collection's worth of fresh
# stones (the README's flow) only with --kinds: most such challengers are better by 0.10+ (B)
KIND_SHARES = (0.35, 0.30, 0.20, 0.15, 0.0)
TRUTH_STONES = 30_000
RULES = ("promote", "improvement_rule", "lower_bound_rule", "promote_before")


def _policy() -> Any:
    from appraiser.gate import GatePolicy

    # the default policy but the coverage check: this recipe's range is one width per carat band,
    # which the per-grade coverage check rightly blocks (the served range adapts per grade); the
    # range is not what is measured here
    return GatePolicy(coverage_band=(0.0, 100.0))


POLICY = _policy()


def recipe(params: dict[str, Any], intervals: list[float]) -> Any:
    """Training stones -> a fitted PriceModel of one LightGBM member with fixed parameters."""
    from appraiser import features, schema
    from appraiser.models import CANDIDATES, PriceModel
    from appraiser.models.boosters import LightGBMMember

    # "basic" monotone constraints: 13x faster than the served "advanced" ones (0.5 s against
    # 6.7 s for 4,000 stones here), and the gate's error rates are about the comparison
    LightGBMMember.monotone_method = "basic"

    def fit(stones: pd.DataFrame) -> PriceModel:
        member = CANDIDATES["lightgbm"].build(params)
        member.fit(stones, features.log_price(stones[schema.TARGET]))
        return PriceModel([member], [1.0], intervals, 0.9, stones[list(schema.COLUMNS)])

    return fit


def registered(fit: Any, stones: pd.DataFrame, bag: int, seed: int) -> Any:
    """The model registered from `stones`: one fit of the recipe (the product today), or with
    `bag` > 1 the average in log price of `bag` fits, each without one fold (twins together): for
    a challenger with `bag` = 10 and seed = draw, the very fold models cross-fitting judges."""
    from appraiser import lineage, schema
    from appraiser.models import PriceModel
    from appraiser.tuning import fold_groups

    if bag <= 1:
        return fit(stones)
    fold_of = fold_groups(lineage.stone_keys(stones), seed) % bag
    fits = [fit(stones[fold_of != k]) for k in range(bag)]
    members = [m for one in fits for m in one.members]
    reference = stones[list(schema.COLUMNS)]
    return PriceModel(members, [1.0 / bag] * bag, fits[0].intervals, 0.9, reference)


def seed_average(
    params: dict[str, Any], intervals: list[float], stones: pd.DataFrame, seeds: int
) -> Any:
    """The model registered as the product registers it (tuning.REGISTERED_SEEDS): one LightGBM
    member, the mean of `seeds` fits of the recipe on every stone with different bagging seeds
    (LightGBMMember.fit_averaged); the fold fits stay single fits."""
    from appraiser import features, schema
    from appraiser.models import CANDIDATES, PriceModel

    member = CANDIDATES["lightgbm"].build(params)
    member.fit_averaged(stones, features.log_price(stones[schema.TARGET]), seeds)
    return PriceModel([member], [1.0], intervals, 0.9, stones[list(schema.COLUMNS)])


def calibrated_intervals(public: pd.DataFrame, base: dict[str, Any]) -> list[float]:
    """The recipe's 90% half-widths per carat band, from its errors on stones it did not see
    (once, on stones apart from every draw's): the ranges the coverage check judges."""
    from appraiser import explain, features, schema

    sample = public.sample(8000, random_state=999)
    model = recipe(base, [0.2] * len(schema.CARAT_LABELS))(sample.iloc[:3000])
    rest = sample.iloc[3000:]
    residuals = features.log_price(rest[schema.TARGET]) - model.predict_log(rest)
    return list(explain.banded_halfwidths(residuals, rest["carat"].to_numpy(), 0.9))


def one_draw(
    draw: int,
    base_seed: int,
    collection_size: int,
    intervals: list[float],
    bag: int = 1,
    base: dict[str, Any] | None = None,
    seeds: int = 1,
    shares: tuple[float, ...] | None = None,
) -> dict:
    from appraiser import challenge, explain, gate, lineage, schema

    public, public_keys = _public(), _public_keys()
    rng = np.random.default_rng([base_seed, draw])
    kind = KINDS[rng.choice(len(KINDS), p=shares or KIND_SHARES)]
    fresh_n = {
        "tie": int(rng.integers(20, 200)),
        "weaker": int(rng.integers(100, 1000)),
        "few fresh": int(rng.integers(100, 800)),
        "many fresh": int(rng.integers(1000, 3000)),
        "second collection": int(rng.integers(4000, 6000)),
    }[kind]
    order = rng.permutation(len(public))
    collection = public.iloc[order[:collection_size]]
    fresh = public.iloc[order[collection_size : collection_size + fresh_n]]
    base = base or RECIPE
    champion_params, challenger_params = dict(base), dict(base)
    if kind == "weaker":
        # a little weaker: true gains near zero, where the null is hard (far below it is easy)
        fewer = int(rng.integers(110, 150))  # of 150: the same share of --trees
        challenger_params["n_estimators"] = round(fewer * base["n_estimators"] / 150)
    store = pd.concat([collection, fresh], ignore_index=True)
    unsealed = store[lineage.roles(store) != "sealed"].reset_index(drop=True)
    champion_fit, challenger_fit = (
        recipe(p, intervals) for p in (champion_params, challenger_params)
    )
    started = time.perf_counter()
    if seeds > 1:
        champion = seed_average(champion_params, intervals, collection, seeds)
        challenger = seed_average(challenger_params, intervals, unsealed, seeds)
    else:
        champion = registered(champion_fit, collection, bag, seed=draw + 7919)
        challenger = registered(challenger_fit, unsealed, bag, seed=draw)
    judged = unsealed[challenge.may_judge(unsealed)].drop_duplicates()
    priced = challenge.cross_fitted_prices(
        judged, (challenger_fit, unsealed), (champion_fit, collection), seed=draw
    )
    # the challenger's range from its own out-of-fold errors, as tuning calibrates a retrain's
    residuals = np.log(priced["price"].to_numpy(float) / priced["challenger_price"].to_numpy())
    widths = explain.banded_halfwidths(residuals, priced["carat"].to_numpy(), 0.9)
    width = np.asarray(widths)[schema.carat_band_index(priced["carat"].to_numpy())]
    priced["challenger_low"] = priced["challenger_price"] * np.exp(-width)
    priced["challenger_high"] = priced["challenger_price"] * np.exp(width)
    known = lineage.Lineage("1", np.unique(lineage.stone_keys(collection)), "c", [], None, None)
    decision = gate.decide(
        challenger,
        lineage.stone_keys(unsealed),
        store.iloc[:0],
        champion_version="1",
        champion=champion,
        champion_lineage=known,
        cross_fitted=priced,
        policy=POLICY,
    )
    gate_seconds = time.perf_counter() - started
    # the truth: public stones neither model saw, nor any twin of theirs
    seen = np.isin(public_keys, lineage.stone_keys(store))
    unseen_rows = np.flatnonzero(~seen)
    truth_rows = rng.choice(unseen_rows, size=min(TRUTH_STONES, len(unseen_rows)), replace=False)
    truth = public.iloc[truth_rows]
    actual = truth["price"].to_numpy(float)
    true_diff = gate.ape(actual, champion.predict(truth)["price"].to_numpy()) - gate.ape(
        actual, challenger.predict(truth)["price"].to_numpy()
    )
    paired = gate.ape(priced["price"].to_numpy(float), priced["champion_price"].to_numpy()) - (
        gate.ape(priced["price"].to_numpy(float), priced["challenger_price"].to_numpy())
    )
    comparison = decision.comparison
    luck = comparison.fit_luck if comparison else 0.0
    # the lower bound without the fit luck (the stones' noise alone: the gate until 2026-12-07)
    grow = np.sqrt(1 + POLICY.fit_luck_ratio**2)
    noise_low = (
        comparison.improvement - (comparison.improvement - comparison.low) / grow
        if comparison
        else float("nan")
    )
    others_pass = all(c.passed for c in decision.checks if c.name != "improvement")
    return {
        "draw": draw,
        "kind": kind,
        "fresh": fresh_n,
        "judged": len(priced),
        "promote": bool(decision.promote),
        "improvement_rule": bool(
            comparison is not None and comparison.low > 0 and comparison.improvement >= 0.02
        ),
        "lower_bound_rule": bool(comparison is not None and comparison.low > 0),
        "promote_before": bool(
            comparison is not None
            and noise_low > 0
            and comparison.improvement >= POLICY.min_gain
            and others_pass
        ),
        "noise_low": float(noise_low),
        "fit_luck": float(luck),
        "estimate": float(paired.mean()),
        "estimate_se": float(paired.std(ddof=1) / np.sqrt(len(paired))),
        "low": comparison.low if comparison else float("nan"),
        "true_gain": float(true_diff.mean()),
        "true_se": float(true_diff.std(ddof=1) / np.sqrt(len(true_diff))),
        "blocked_by": [c.name for c in decision.checks if not c.passed],
        "gate_seconds": gate_seconds,
    }


_PUBLIC: list[pd.DataFrame] = []
_KEYS: list[np.ndarray] = []


def _public_keys() -> np.ndarray:
    if not _KEYS:
        from appraiser import lineage

        _KEYS.append(lineage.stone_keys(_public()))
    return _KEYS[0]


def _public() -> pd.DataFrame:
    if not _PUBLIC:
        from appraiser import data

        _PUBLIC.append(data.load(None).clean.reset_index(drop=True))
    return _PUBLIC[0]


def summarise(rows: pd.DataFrame) -> dict[str, Any]:
    groups = {
        "(A) true gain <= 0": rows["true_gain"] <= 0,
        "(A') -0.05 < true gain <= 0": (rows["true_gain"] > -0.05) & (rows["true_gain"] <= 0),
        "(C) |true gain| <= 0.02": rows["true_gain"].abs() <= 0.02,
        "(B) true gain >= 0.10": rows["true_gain"] >= 0.10,
        "0 < true gain < 0.10": (rows["true_gain"] > 0) & (rows["true_gain"] < 0.10),
    }
    goals = {
        "(A) true gain <= 0": "<= 2.5%, upper bound <= 5%",
        "(A') -0.05 < true gain <= 0": "(the hard part of A)",
        "(C) |true gain| <= 0.02": "<= 10%",
        "(B) true gain >= 0.10": ">= 80%",
        "0 < true gain < 0.10": "",
    }
    out: dict[str, Any] = {}
    table = []
    for label, mask in groups.items():
        n = int(mask.sum())
        figures = {}
        for rule in RULES:
            k = int(rows.loc[mask, rule].sum())
            figures[rule] = wilson(k, n)
        out[label] = {"draws": n, **figures}
        cells = [
            f"{figures[r][0]:.1f}% ({figures[r][1]:.1f}-{figures[r][2]:.1f})" if n else "-"
            for r in RULES
        ]
        table.append([label, n, *cells, goals[label]])
    print(
        format_table(
            [
                "draws where",
                "n",
                "promoted (gate.decide)",
                "improvement rule alone",
                "lower bound > 0 alone",
                "promoted, stones' noise only (before)",
                "goal",
            ],
            table,
            "P(promote | true gain), Wilson 95% intervals",
        )
    )
    # the SE the gate now uses (stones' noise and fit luck), with the truth's own SE
    luck = rows["fit_luck"]
    both = np.sqrt(rows["estimate_se"] ** 2 + luck**2 + rows["true_se"] ** 2)
    z = (rows["estimate"] - rows["true_gain"]) / both
    z_est = (rows["estimate"] - rows["true_gain"]) / np.sqrt(
        rows["estimate_se"] ** 2 + rows["true_se"] ** 2
    )
    n = len(z)
    out["(D) calibration"] = {
        "draws": n,
        "z_mean": float(z.mean()),
        "z_mean_se": float(z.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        "z_sd": float(z.std(ddof=1)) if n > 1 else float("nan"),
        "z_est_only_mean": float(z_est.mean()),
        "z_est_only_sd": float(z_est.std(ddof=1)) if n > 1 else float("nan"),
        "mean_bias_points": float((rows["estimate"] - rows["true_gain"]).mean()),
        "mean_estimate_se": float(rows["estimate_se"].mean()),
        "mean_fit_luck": float(np.mean(luck)),
        "miss_sd_points": float((rows["estimate"] - rows["true_gain"]).std(ddof=1)),
    }
    d = out["(D) calibration"]
    print(
        f"(D) calibration over {n} draws: (estimate - truth) / SE has mean {d['z_mean']:+.2f} "
        f"(SE {d['z_mean_se']:.2f}; goal within +-0.3) and SD {d['z_sd']:.2f} (goal 0.8-1.2); "
        f"with the stones' noise alone {d['z_est_only_mean']:+.2f} / {d['z_est_only_sd']:.2f}; "
        f"mean bias {d['mean_bias_points']:+.3f} points, mean SE {d['mean_estimate_se']:.3f}, "
        f"mean fit luck {d['mean_fit_luck']:.3f}, "
        f"SD of estimate - truth {d['miss_sd_points']:.3f}"
    )
    # how far the estimate lands from the truth, by kind of draw: the part no SE sees shows here
    miss = (rows["estimate"] - rows["true_gain"]).groupby(rows["kind"])
    by_kind = pd.DataFrame({"draws": miss.size(), "mean": miss.mean(), "SD": miss.std()})
    out["miss_by_kind"] = by_kind.round(3).to_dict("index")
    print(
        "estimate - truth, points, by kind of draw: "
        + "; ".join(
            f"{kind} {r['mean']:+.3f} (SD {r['SD']:.3f}, n {int(r['draws'])})"
            for kind, r in by_kind.iterrows()
        )
    )
    out["frontier"] = frontier(rows)
    blocked = rows.loc[~rows["promote"] & rows["improvement_rule"], "blocked_by"]
    if len(blocked):
        print(f"blocked by another check after passing the improvement rule: {blocked.tolist()}")
    return out


def frontier(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """What any rule "promote when the estimate is at least t" could do on these draws: for each
    t, (A) and (B) together. When no t meets both, no choice of threshold can: the estimate's miss
    of each draw's true gain, not the rule, is what must shrink."""
    null, better = rows["true_gain"] <= 0, rows["true_gain"] >= 0.10
    points: list[dict[str, Any]] = []
    for t in np.round(np.arange(0.0, 0.251, 0.01), 2):
        promoted = rows["estimate"] >= t
        a = wilson(int(promoted[null].sum()), int(null.sum()))
        b = wilson(int(promoted[better].sum()), int(better.sum()))
        points.append({"threshold": float(t), "A": a, "B": b})
    meets_a = [p for p in points if p["A"][0] <= 2.5 and p["A"][2] <= 5.0]
    best = max(meets_a, key=lambda p: p["B"][0]) if meets_a else None
    rows_printed = [
        [
            f"{p['threshold']:.2f}",
            f"{p['A'][0]:.1f}% ({p['A'][1]:.1f}-{p['A'][2]:.1f})",
            f"{p['B'][0]:.1f}% ({p['B'][1]:.1f}-{p['B'][2]:.1f})",
        ]
        for p in points[::2]
    ]
    print(
        format_table(
            ["estimate >= t", "(A) gain <= 0", "(B) gain >= 0.10"],
            rows_printed,
            "Any threshold on the estimate, on these draws",
        )
    )
    if best:
        print(
            f"best (B) among thresholds meeting (A): t = {best['threshold']:.2f}, "
            f"(B) {best['B'][0]:.1f}% ({best['B'][1]:.1f}-{best['B'][2]:.1f})"
        )
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=1200)
    parser.add_argument("--smoke", action="store_true", help="6 draws: check that it runs")
    parser.add_argument("--collection", type=int, default=2000, help="the champion's stones")
    parser.add_argument("--workers", type=int, default=1, help="processes (the machine's cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--minutes", type=float, default=None, help="stop starting draws after this long"
    )
    parser.add_argument(
        "--bag",
        type=int,
        default=1,
        help="register the average of this many fold fits instead of one fit (a design option, "
        "not the product: see docs/measurements.md)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="register the average of this many fits of different bagging seeds, on every stone "
        "(the product registers tuning.REGISTERED_SEEDS = 2; --bag ignored; only "
        "--served-defaults bags: the cheap recipe's fits would all be the same)",
    )
    parser.add_argument(
        "--trees",
        type=int,
        default=150,
        help="the recipe's trees (150: cheap, but fits can jump between two modes, see "
        "benchmarks/fit_modes.py; with more, the weaker kind's fewer trees may be better)",
    )
    parser.add_argument(
        "--served-defaults",
        action="store_true",
        help="the LightGBM candidate's defaults instead of the cheap recipe (--trees ignored; "
        "about 4 times slower)",
    )
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=KINDS,
        default=None,
        help="draw only these kinds, in equal shares (default: the mix; e.g. 'second collection' "
        "for (B), 'tie' 'weaker' for (A))",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    kinds = set(args.kinds or ())
    shares = tuple(1 / len(kinds) if k in kinds else 0.0 for k in KINDS) if kinds else None
    draws = 6 if args.smoke else args.draws
    os.environ["APPRAISER_NATIVE_TREES"] = "false"  # nothing here is served
    print("command: python " + " ".join(sys.argv), flush=True)
    started = time.perf_counter()
    base = {**RECIPE, "n_estimators": args.trees}
    if args.served_defaults:  # the served recipe before tuning: near-L1, 600 x 15, bagging 0.7
        from appraiser.models import CANDIDATES

        base = dict(CANDIDATES["lightgbm"].defaults)
    intervals = calibrated_intervals(_public(), base)
    rows: list[dict] = []
    deadline = started + 60 * args.minutes if args.minutes else float("inf")
    with ProcessPoolExecutor(args.workers) as pool:
        jobs = [
            pool.submit(
                one_draw,
                d,
                args.seed,
                args.collection,
                intervals,
                args.bag,
                base,
                args.seeds,
                shares,
            )
            for d in range(draws)
        ]
        for i, job in enumerate(jobs):
            if time.perf_counter() > deadline:  # the budget is spent: report what was drawn
                for pending in jobs[i:]:
                    pending.cancel()
                print(f"time budget spent: {len(rows)} of {draws} draws", flush=True)
                break
            row = job.result()
            rows.append(row)
            if (i + 1) % 25 == 0 or args.smoke:
                print(
                    f"draw {i + 1}/{draws}: {row['kind']}, true {row['true_gain']:+.3f}, "
                    f"estimate {row['estimate']:+.3f} (SE {row['estimate_se']:.3f}), "
                    f"promoted {row['promote']}, {time.perf_counter() - started:.0f} s",
                    flush=True,
                )
    frame = pd.DataFrame(rows)
    summary = summarise(frame)
    seconds = time.perf_counter() - started
    print(f"{len(rows)} draws in {seconds:.0f} s ({seconds / max(len(rows), 1):.1f} s a draw)")
    write_json(args.json, {"summary": summary, "draws": rows, "seconds": seconds})


if __name__ == "__main__":
    main()
