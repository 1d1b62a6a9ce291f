"""Guard benchmark: how often the label-shift guard and drift are wrong, by simulation.

    python benchmarks/guard.py [--draws 400] [--train 8000] [--cycles 100] [--only guard|drift]

A small champion (LightGBM with its defaults, one tuning trial, its adaptive range) is trained once
on `--train` public stones; every batch is drawn from the public stones it never saw, so the truth
of each draw is known:
- honest batches at their true prices (hard stones: 50 I1, 50 I1-or-Fair, 50 of 2 carats or more;
  plain random batches of 50 and 300), and 300 stones after a market move of +8%: the share held
  is the guard's false-alarm rate;
- poisoned batches: 300 stones with a quarter of their prices x4 or x5, and whole batches marked
  up 30%, in euros (x0.68), in cents (x100) or with shuffled prices: the share held is its power;
- drift per retrain cycle: passes that each add 50 honest stones to the stones since the last
  retrain, with the test run on all of them at every pass (as before) and with drift.cycle_report.
Rates carry Wilson 95% intervals. About 4 minutes on two quiet cores (drift is most of it).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _bench import format_table, quick_model, rate, wilson, write_json


def champion(public: pd.DataFrame, size: int) -> tuple[Any, pd.DataFrame]:
    """(a model trained on `size` public stones, the public stones it never saw)."""

    order = np.random.default_rng(7).permutation(len(public))
    train_part = public.iloc[order[:size]].reset_index(drop=True)
    unseen = public.iloc[order[size:]].reset_index(drop=True)
    return quick_model(train_part, timeout=30), unseen


def quarter(factor: float) -> Callable[[pd.Series, np.random.Generator], np.ndarray]:
    def change(price: pd.Series, rng: np.random.Generator) -> np.ndarray:
        out = price.to_numpy(dtype=float).copy()
        out[rng.choice(len(out), len(out) // 4, replace=False)] *= factor
        return out

    return change


def guard_rates(model: Any, unseen: pd.DataFrame, draws: int) -> dict[str, Any]:
    from appraiser import screening

    def same(price: pd.Series, rng: np.random.Generator) -> np.ndarray:
        return price.to_numpy(dtype=float)

    pools = {
        "I1": unseen[unseen["clarity"] == "I1"],
        "I1 or Fair": unseen[(unseen["clarity"] == "I1") | (unseen["cut"] == "Fair")],
        "2 ct+": unseen[unseen["carat"] >= 2],
        "random": unseen,
    }
    cases: list[tuple[str, str, int, Callable[..., np.ndarray], int]] = [
        ("honest", "I1", 50, same, draws),
        ("honest", "I1 or Fair", 50, same, draws),
        ("honest", "2 ct+", 50, same, draws),
        ("honest", "random", 50, same, draws),
        ("honest", "random", 300, same, draws),
        ("market moved +8%", "random", 300, lambda p, r: p.to_numpy() * 1.08, draws // 2),
        ("poisoned: a quarter x4", "random", 300, quarter(4), draws),
        ("poisoned: a quarter x5", "random", 300, quarter(5), draws),
        ("poisoned: a quarter x5", "I1", 50, quarter(5), draws // 2),
        ("marked up 30%", "random", 50, lambda p, r: p.to_numpy() * 1.3, draws // 2),
        ("euros (x0.68)", "random", 50, lambda p, r: p.to_numpy() * 0.68, draws // 2),
        ("cents (x100)", "random", 50, lambda p, r: p.to_numpy() * 100, draws // 2),
        ("prices shuffled", "random", 50, lambda p, r: r.permutation(p.to_numpy()), draws // 2),
    ]
    out: dict[str, Any] = {}
    rows = []
    for label, pool_name, size, change, count in cases:
        pool = pools[pool_name]
        held = worse = 0
        why: dict[str, int] = {"shift": 0, "spread": 0, "far-off": 0, "coverage": 0}
        for seed in range(count):
            rng = np.random.default_rng(seed)
            batch = pool.sample(size, random_state=seed)
            batch = batch.assign(price=change(batch["price"], rng))
            found = screening.screen(model, "1", batch, seed=seed)
            held += found.is_held
            worse += bool(found.worse) and not found.is_held
            for reason in found.held:
                key = (
                    "far-off"
                    if "far from" in reason
                    else "coverage"
                    if "range covers" in reason
                    else "spread"
                    if "disagree" in reason
                    else "shift"
                )
                why[key] += 1
        name = f"{label}, {size} stones ({pool_name}, {len(pool):,} in the pool)"
        out[name] = {"held": wilson(held, count), "worse": wilson(worse, count), "by": why}
        rows.append(
            [
                name,
                rate(held, count),
                rate(worse, count),
                ", ".join(f"{k} {v}" for k, v in why.items() if v),
            ]
        )
    print(
        format_table(
            [
                "batches (drawn from stones the champion never saw)",
                "held",
                "worse only",
                "held for",
            ],
            rows,
            "The label-shift guard",
        )
    )
    return out


def drift_rates(model: Any, unseen: pd.DataFrame, cycles: int, passes: int) -> dict[str, Any]:
    from appraiser import drift

    reference = model.reference
    before = now = 0
    started = time.perf_counter()
    for cycle in range(cycles):
        stones = unseen.sample(50 * passes, random_state=cycle).reset_index(drop=True)
        alarm_before = alarm_now = False
        for k in range(1, passes + 1):
            new = stones.iloc[: 50 * k]
            if not alarm_before:
                alarm_before = bool(drift.drift_report(new, reference, seed=k)["drift"].any())
            if not alarm_now:
                report = drift.cycle_report(new, reference)
                alarm_now = report is not None and bool(report["drift"].any())
        before += alarm_before
        now += alarm_now
    out = {"every_pass_all_stones": wilson(before, cycles), "cycle_report": wilson(now, cycles)}
    print(
        format_table(
            ["drift tested", "cycles with a false alarm"],
            [
                [
                    f"every pass, on all stones since the retrain ({passes} passes of 50)",
                    rate(before, cycles),
                ],
                ["drift.cycle_report (checkpoints, alpha spent over the cycle)", rate(now, cycles)],
            ],
            f"Drift per retrain cycle, same population ({time.perf_counter() - started:.0f} s)",
        )
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=400, help="batches per honest case")
    parser.add_argument("--train", type=int, default=8000, help="the champion's training stones")
    parser.add_argument("--cycles", type=int, default=100, help="retrain cycles for drift")
    parser.add_argument("--passes", type=int, default=10, help="passes of 50 stones per cycle")
    parser.add_argument("--only", choices=["guard", "drift"], default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from appraiser import data

    public = data.load(None).clean
    started = time.perf_counter()
    model, unseen = champion(public, args.train)
    print(
        f"champion: LightGBM on {args.train:,} public stones "
        f"({time.perf_counter() - started:.0f} s)"
    )
    results: dict[str, Any] = {}
    if args.only in (None, "guard"):
        results["guard"] = guard_rates(model, unseen, args.draws)
    if args.only in (None, "drift"):
        results["drift"] = drift_rates(model, unseen, args.cycles, args.passes)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
