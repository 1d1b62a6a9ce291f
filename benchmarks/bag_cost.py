"""What registering an average of fold fits (gate_oc.py --bag) would cost and gain, beside one fit.

    python benchmarks/bag_cost.py [--bag 10] [--shape 322x45] [--stones 5000] [--repeats 30]

On --stones public stones: one LightGBM of the given shape (trees x leaves, learning rate 0.05,
the candidate's defaults otherwise), and the average in log price of --bag such fits, each without
one fold (twins together). Printed for both: fitting time; compiling and tabulating time
(fast.accelerate, as a server does, in a fresh home: no cached compile); the median time to
price 1 and 1,000 stones and to explain 1 and 8; and the MAPE on 30,000 public stones neither
saw, with the paired difference and its SE (over those stones: one training draw, one fit each).
The methods are interleaved so drift hits both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _bench import format_table, use_home


def fitted(stones: pd.DataFrame, shape: tuple[int, int], bag: int, seed: int) -> Any:
    from gate_oc import registered

    from appraiser import features, schema
    from appraiser.models import CANDIDATES, PriceModel

    trees, leaves = shape
    params = {"n_estimators": trees, "num_leaves": leaves, "learning_rate": 0.05}
    widths = [0.2] * len(schema.CARAT_LABELS)

    def fit(part: pd.DataFrame) -> Any:
        member = CANDIDATES["lightgbm"].build(params)
        member.fit(part, features.log_price(part[schema.TARGET]))
        return PriceModel([member], [1.0], widths, 0.9, part[list(schema.COLUMNS)])

    # one fit, or the average of `bag` fits each without one fold: what gate_oc.py --bag registers
    model = registered(fit, stones, bag, seed)
    return PriceModel(model.members, model.weights, widths, 0.9, stones[list(schema.COLUMNS)])


def median_ms(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bag", type=int, default=10)
    parser.add_argument("--shape", default="322x45", help="trees x leaves")
    parser.add_argument("--stones", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from appraiser import data, fast, features, gate, lineage

    os.environ["APPRAISER_NATIVE_TREES"] = "true"
    # a fresh home: compiled trees are cached per forest, and a second run would find them
    use_home(Path(tempfile.mkdtemp(prefix="bag-cost-")))
    shape = tuple(int(v) for v in args.shape.split("x"))
    assert len(shape) == 2, "--shape is trees x leaves, e.g. 322x45"
    public = data.load(None).clean.reset_index(drop=True)
    order = np.random.default_rng(args.seed).permutation(len(public))
    train = public.iloc[order[: args.stones]]
    unseen = public[~np.isin(lineage.stone_keys(public), lineage.stone_keys(train))]
    unseen = unseen.sample(min(30_000, len(unseen)), random_state=args.seed)
    matrix = features.encode(unseen.iloc[:1000]).to_numpy(np.float64)
    rows, errors = [], {}
    models = {}
    for label, bag in (("one fit", 1), (f"average of {args.bag}", args.bag)):
        started = time.perf_counter()
        model = fitted(train, (shape[0], shape[1]), bag, args.seed)
        fit_s = time.perf_counter() - started
        started = time.perf_counter()
        fast.accelerate(model, build="now", explain=True)
        models[label] = (model, fit_s, time.perf_counter() - started)
        price = model.predict(unseen)["price"].to_numpy()
        errors[label] = gate.ape(unseen["price"].to_numpy(float), price)
    timings: dict[str, dict[str, list[float]]] = {k: {} for k in models}
    calls = {
        "price 1 (ms)": lambda m: m.predict_matrix(matrix[:1]),
        "price 1,000 (ms)": lambda m: m.predict_matrix(matrix),
        "explain 1 (ms)": lambda m: m.contributions_matrix(matrix[:1]),
        "explain 8 (ms)": lambda m: m.contributions_matrix(matrix[:8]),
    }
    for _ in range(3):  # interleaved rounds
        for label, (model, _, _) in models.items():
            for name, call in calls.items():
                timings[label].setdefault(name, []).append(
                    median_ms(lambda c=call, m=model: c(m), args.repeats)  # type: ignore[misc]
                )
    for label, (_, fit_s, accelerate_s) in models.items():
        rows.append(
            [
                label,
                f"{fit_s:.1f}",
                f"{accelerate_s:.1f}",
                *(f"{statistics.median(timings[label][n]):.3f}" for n in calls),
                f"{errors[label].mean():.3f}",
            ]
        )
    print(
        format_table(
            ["registered", "fit (s)", "compile + tables (s)", *calls, "MAPE %"],
            rows,
            f"{args.shape} LightGBM on {len(train):,} public stones; "
            f"MAPE on {len(unseen):,} unseen",
        )
    )
    one, many = errors.values()
    diff = one - many
    print(
        f"the average's gain: {diff.mean():+.3f} points of MAPE "
        f"(SE {diff.std(ddof=1) / np.sqrt(len(diff)):.3f}, n {len(diff):,})"
    )


if __name__ == "__main__":
    main()
