"""Judging a challenger against the champion: on which stones, priced how, and the gate's call.

Held-out stones neither model trained on judge always; training stones the champion never saw
judge too when tuning did not see them either (`tuning_mask`), each priced by the challenger's
recipe refitted without it (`cross_fitted_prices`), so a real gain shows on enough stones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from appraiser import gate, lineage, registry
from appraiser.gate import Decision
from appraiser.models import ModelFormatError
from appraiser.tuning import Fitted, fit_model, fold_groups, progress_bars

CROSS_FIT_FOLDS = 10  # each fold model misses 1/10 of the judged stones: less pessimism than 5
MIN_TUNE_STONES = 1000  # fewer stones left to tune on: no cross-fitting, tune on all


def stones_to_judge(fit_part: pd.DataFrame, champion_version: str | None) -> np.ndarray:
    """The training stones that may judge a challenger cross-fitted: the champion never trained
    on them, none is sealed, and none is an expert's price (given after seeing the champion's)."""
    known = lineage.load(champion_version) if champion_version else None
    if known is None:
        return np.zeros(len(fit_part), dtype=bool)
    keys = lineage.stone_keys(fit_part)
    judge = ~known.trained_on(keys) & (lineage.roles(keys) != "sealed")
    if "feedback_id" in fit_part:
        judge &= fit_part["feedback_id"].isna().to_numpy()
    return np.asarray(judge)


def tuning_mask(fit_part: pd.DataFrame, champion_version: str | None) -> np.ndarray | None:
    """What to tune on so that the stones that judge never chose anything (hyperparameters,
    blend, ranges): the stones the champion saw. None (tune on all, judge on held-out stones
    only) when nothing could judge or too few stones would be left to tune on."""
    judge = stones_to_judge(fit_part, champion_version)
    if not judge.any() or int((~judge).sum()) < MIN_TUNE_STONES:
        return None
    return ~judge


def cross_fitted_prices(
    fitted: Fitted,
    judge: np.ndarray,
    *,
    folds: int = CROSS_FIT_FOLDS,
    seed: int = 0,
    show_progress: bool = False,
) -> pd.DataFrame:
    """The stones of `fitted.fit_part` where `judge` is True, each priced by the challenger's
    recipe (its tuned parameters, blend and range) refitted on the training stones without the
    fold that holds it: `challenger_price`, `challenger_low`, `challenger_high`.

    Identical stones share a fold, so no stone is priced by a model that saw its twin. Judged
    stones must not have been tuned on (fit(..., tune_on=...)): then nothing about a judged stone
    shaped the model that prices it. The fold models learn from (folds-1)/folds of the judged
    stones, so they are a little worse than the challenger registered: the comparison leans
    towards the champion (benchmarks/pipeline.py measures by how much).
    """
    stones = fitted.fit_part
    columns = [*stones.columns, "challenger_price", "challenger_low", "challenger_high"]
    rows = np.flatnonzero(judge)
    if not len(rows):
        return pd.DataFrame(columns=columns)
    keys = lineage.stone_keys(stones)  # once: the folds and the twins both need them
    fold_of = fold_groups(keys[rows], seed) % folds
    parts = []
    with progress_bars(show_progress) as progress:
        task = progress.add_task("cross-fitting", total=folds)
        for k in range(folds):
            held = rows[fold_of == k]
            if len(held):
                keep = ~np.isin(keys, keys[held])  # twins of held stones leave with them
                model = fit_model(
                    fitted.results,
                    fitted.weights,
                    stones[keep],
                    fitted.intervals,
                    {},
                    fitted.ranges,
                )
                priced = model.predict(stones.iloc[held])
                part = stones.iloc[held].copy()
                part["challenger_price"] = priced["price"].to_numpy()
                part["challenger_low"] = priced["price_low"].to_numpy()
                part["challenger_high"] = priced["price_high"].to_numpy()
                parts.append(part)
            progress.advance(task)
    return pd.concat(parts, ignore_index=True)[columns]


def against_champion(
    fitted: Fitted,
    pool: pd.DataFrame,
    *,
    champion_version: str | None,
    cross_fit: bool = True,
    show_progress: bool = False,
    **options: Any,
) -> Decision:
    """The gate's decision on `fitted` against `champion_version` (None: there is none), judged
    on the stones of `pool` neither trained on and, with `cross_fit`, on the challenger's own
    training stones the champion never saw, each priced by the challenger refitted without it
    (reference stones alone are often too few to see a real gain); `options` go to gate.decide.
    """
    current = champion_version
    champion_lineage = lineage.load(current) if current else None
    extra = None
    if cross_fit and champion_lineage is not None:
        # only stones that tuning never saw (fit with tune_on=tuning_mask(...)): a stone that
        # helped choose the recipe would judge it with the choice in its favour
        judge = ~fitted.tuned_on & stones_to_judge(fitted.fit_part, current)
        if judge.any():
            extra = cross_fitted_prices(
                fitted, judge, seed=fitted.seed, show_progress=show_progress
            )
    try:
        champion_model = registry.load_version(current)[1] if current else None
    except ModelFormatError as exc:  # saved by an older version of this code
        return Decision(
            False,
            f"champion v{current} cannot be read by this version ({exc}): nothing decided "
            "automatically; compare by hand and use `appraiser models promote`",
            current,
            automatic=False,
        )
    return gate.decide(
        fitted.evaluated,
        lineage.stone_keys(fitted.fit_part),
        pool,
        champion_version=current,
        champion=champion_model,
        champion_lineage=champion_lineage,
        cross_fitted=extra,
        **options,
    )
