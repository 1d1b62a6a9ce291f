"""Retraining: a challenger on every accepted stone in the store, a gate, and promotion.

Champion and challenger are compared on the same rows: the reference holdout, a fixed fifth of
the store chosen by a hash of each stone's values (a stone in it stays in it, so no model ever
trains on it), which also holds the newest stones no champion has seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from appraiser import data, evaluate, ingest, registry, schema
from appraiser.config import DEFAULT_TIMEOUT, DEFAULT_TRIALS, settings
from appraiser.models import PriceModel
from appraiser.train import MIN_STONES, Gate, TrainingError, TrainResult, fit_and_register

REFERENCE_BUCKETS = 5  # one stone in five is in the reference holdout


def in_reference_holdout(stones: pd.DataFrame) -> np.ndarray:
    """True for the stones of the reference holdout; fixed by each stone's 10 values."""
    hashed = pd.util.hash_pandas_object(stones[list(schema.COLUMNS)], index=False).to_numpy()
    return np.asarray(hashed % REFERENCE_BUCKETS == 0)


@dataclass(frozen=True)
class GatePolicy:
    """When a challenger may replace the champion."""

    margin: float = 0.0  # points of MAPE the challenger must gain on the holdout
    slice_tolerance: float = 1.0  # points of MAPE any slice may lose
    min_slice_stones: int = 30  # smaller slices are too noisy to judge
    coverage: tuple[float, float] = (80.0, 97.0)  # acceptable 90%-range coverage, in %


def sanity_problems(
    model: PriceModel, holdout: pd.DataFrame, metrics: dict[str, float], policy: GatePolicy
) -> list[str]:
    """What is wrong with a model whatever the champion: NaN prices, bad ranges, non-monotone."""
    problems = []
    prices = model.predict(holdout)["price"].to_numpy()
    if not np.isfinite(prices).all():
        problems.append("some prices are not finite numbers")
    low, high = policy.coverage
    if not low <= metrics.get("coverage", 0.0) <= high:
        problems.append(
            f"90% range covers {metrics.get('coverage', 0):.1f}% (needs {low:g}-{high:g}%)"
        )
    sample = holdout.sample(min(len(holdout), 200), random_state=0)
    base = model.predict(sample)["price"].to_numpy()
    heavier = model.predict(sample.assign(carat=sample["carat"] * 1.05))["price"].to_numpy()
    drops = int((heavier < base * (1 - 1e-9)).sum())
    for grade, order in schema.GRADES.items():
        codes = sample[grade].map({g: i for i, g in enumerate(order)})
        better = sample.assign(**{grade: [order[min(c + 1, len(order) - 1)] for c in codes]})
        drops += int((model.predict(better)["price"].to_numpy() < base * (1 - 1e-9)).sum())
    if drops:
        problems.append(f"{drops} price(s) fell when carat or a grade went up")
    return problems


def make_gate(policy: GatePolicy) -> Gate:
    """A gate: sanity checks, then the headline MAPE margin, then no slice worse than tolerated."""

    def decide(
        model: PriceModel, holdout: pd.DataFrame, metrics: dict[str, float], slices: pd.DataFrame
    ) -> tuple[bool, str]:
        problems = sanity_problems(model, holdout, metrics, policy)
        if problems:
            return False, "sanity checks failed: " + "; ".join(problems)
        current = registry.champion_version()
        if current is None:
            return True, "no champion yet; sanity checks passed"
        _, champion = registry.load_version(current)
        theirs = champion.predict(holdout)
        their_metrics = evaluate.metrics(holdout[schema.TARGET], theirs["price"])
        gain = their_metrics["mape"] - metrics["mape"]
        said = (
            f"holdout MAPE {metrics['mape']:.2f}% vs champion v{current}'s "
            f"{their_metrics['mape']:.2f}% on the same {len(holdout):,} stones"
        )
        if gain < policy.margin or gain <= 0:
            return False, f"{said}: gains {gain:+.2f} points, needs more than {policy.margin:g}"
        both = slices.merge(
            evaluate.slice_metrics(holdout, theirs),
            on=["slice", "value"],
            suffixes=("", "_champion"),
        )
        judged = both[both["stones"] >= policy.min_slice_stones]
        worse = judged[judged["mape"] - judged["mape_champion"] > policy.slice_tolerance]
        if not worse.empty:
            listed = ", ".join(
                f"{r.slice}={r.value} ({r.mape_champion:.1f}% -> {r.mape:.1f}%)"
                for r in worse.itertuples()
            )
            return (
                False,
                f"{said}, but slices got worse beyond {policy.slice_tolerance:g} points: {listed}",
            )
        return True, f"{said}: gains {gain:.2f} points, no slice worse, sanity checks passed"

    return decide


def retrain(
    *,
    trials: int = DEFAULT_TRIALS,
    timeout: float = DEFAULT_TIMEOUT,
    policy: GatePolicy | None = None,
    show_progress: bool = True,
) -> TrainResult:
    """Train a challenger on the store's accepted stones; promote it only if the gate agrees."""
    stones = ingest.accepted_stones()
    if len(stones) < MIN_STONES:
        raise TrainingError(
            f"the store holds {len(stones)} accepted stones (need {MIN_STONES}): "
            "ingest appraisals first with `appraiser ingest FILE`"
        )
    held = in_reference_holdout(stones)
    columns = list(schema.COLUMNS)
    fit_part = stones.loc[~held, columns].reset_index(drop=True)
    holdout = stones.loc[held, columns].reset_index(drop=True)
    validation = data.ValidationResult(
        clean=stones[columns], rejected=pd.DataFrame(), total=len(stones)
    )
    return fit_and_register(
        validation,
        fit_part,
        holdout,
        final_stones=fit_part,  # the reference holdout stays unseen by every model
        source="store",
        trials=trials,
        timeout=timeout,
        seed=settings().seed,
        show_progress=show_progress,
        gate=make_gate(policy or GatePolicy()),
        tags={"kind": "retrain", "store_max_batch": str(int(stones["batch_id"].max()))},
    )
