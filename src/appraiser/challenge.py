"""Judging a challenger against the champion: on which stones, priced how, and the gate's call.

Double cross-fitting: every labelled stone that may judge (not sealed, not an expert's price) is
priced by the champion's recipe and by the challenger's, each refitted on its own training stones
without the fold that holds the stone (`cross_fitted_prices`). No stone then judges a model that
trained on it, yet no stone has to be kept from training to judge: both models train on every
non-sealed stone, and nearly every labelled stone judges. Both fold models miss the same tenth of
the judged stones, so neither side is handicapped against the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from appraiser import gate, lineage, registry, schema
from appraiser.gate import Decision
from appraiser.models import ModelFormatError, PriceModel
from appraiser.tuning import Fitted, fit_model, fold_groups, progress_bars, refit

CROSS_FIT_FOLDS = 10  # each fold model misses 1/10 of the judged stones: little lost to either side

Recipe = Callable[[pd.DataFrame], PriceModel]  # training stones -> a fitted model
PRICED = ["champion_price", "challenger_price", "challenger_low", "challenger_high"]


def may_judge(stones: pd.DataFrame) -> np.ndarray:
    """The stones that may judge: none sealed (no decision reads those), and none an expert's price
    (given after seeing the champion's)."""
    if not len(stones):
        return np.zeros(0, dtype=bool)
    judge = lineage.roles(stones) != "sealed"
    if "feedback_id" in stones:
        judge &= stones["feedback_id"].isna().to_numpy()
    return np.asarray(judge)


def challenger_recipe(fitted: Fitted) -> Recipe:
    """The challenger's tuned recipe (parameters, blend, range), fitted on given stones."""
    return lambda stones: fit_model(
        fitted.results, fitted.weights, stones, fitted.intervals, {}, fitted.ranges
    )


def champion_recipe(model: PriceModel) -> Recipe:
    """The champion's stored recipe, refitted as it is (no tuning) on given stones."""
    return lambda stones: refit(model, stones)


def cross_fitted_prices(
    judged: pd.DataFrame,
    challenger: tuple[Recipe, pd.DataFrame],
    champion: tuple[Recipe, pd.DataFrame],
    *,
    folds: int | None = None,
    seed: int = 0,
    show_progress: bool = False,
) -> pd.DataFrame:
    """Each stone of `judged` priced by both recipes, each (recipe, its training stones) refitted
    without the fold that holds the stone: `judged` plus `champion_price`, `challenger_price`,
    `challenger_low` and `challenger_high`.

    Identical stones share a fold and leave both training sets together, so no stone is priced by
    a model that saw it or its twin. A training stone that does not judge (an expert's price, a
    sealed stone the champion trained on) stays in every fold model.
    """
    folds = CROSS_FIT_FOLDS if folds is None else folds  # read here: tests/conftest.py lowers it
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, not {folds}")
    columns = [*judged.columns, *PRICED]
    if not len(judged):
        return pd.DataFrame(columns=columns)
    judged = judged.reset_index(drop=True)
    keys = lineage.stone_keys(judged)
    fold_of = fold_groups(keys, seed) % folds
    sides = [
        (recipe, stones, lineage.stone_keys(stones)) for recipe, stones in (champion, challenger)
    ]
    parts = []
    with progress_bars(show_progress) as progress:
        task = progress.add_task("cross-fitting (x2)", total=folds)
        for k in range(folds):
            held = np.flatnonzero(fold_of == k)
            if len(held):
                out = [
                    recipe(stones[~np.isin(trained, keys[held])]).predict(judged.iloc[held])
                    for recipe, stones, trained in sides
                ]
                part = judged.iloc[held].copy()
                part["champion_price"] = out[0]["price"].to_numpy()
                part["challenger_price"] = out[1]["price"].to_numpy()
                part["challenger_low"] = out[1]["price_low"].to_numpy()
                part["challenger_high"] = out[1]["price_high"].to_numpy()
                parts.append(part)
            progress.advance(task)
    return pd.concat(parts, ignore_index=True)[columns]


def against_champion(
    fitted: Fitted,
    pool: pd.DataFrame | None,
    *,
    champion_version: str | None,
    cross_fit: bool = True,
    show_progress: bool = False,
    **options: Any,
) -> Decision:
    """The gate's decision on `fitted` against `champion_version` (None: there is none), judged
    on the stones of `pool` (a holdout the challenger did not train on; None: there is none) and
    of the challenger's training stones, each priced by both recipes refitted without it
    (`cross_fit`; without it, only on the stones of `pool` neither model trained on). `options`
    go to gate.decide."""
    current = champion_version
    pool = pool if pool is not None else fitted.fit_part.iloc[:0]
    champion_lineage = lineage.load(current) if current else None
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
    extra = None
    if cross_fit and champion_model is not None and champion_lineage is not None:
        stones = pd.concat([pool, fitted.fit_part], ignore_index=True)
        judged = stones[may_judge(stones)].drop_duplicates(list(schema.COLUMNS))
        extra = cross_fitted_prices(
            judged,
            (challenger_recipe(fitted), fitted.fit_part),
            (champion_recipe(champion_model), champion_model.reference),
            seed=fitted.seed,
            show_progress=show_progress,
        )
        pool = pool.iloc[:0]  # every judged stone is in `extra`, priced out of fold by both
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
