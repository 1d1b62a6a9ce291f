"""Training: validate -> tune candidates by K-fold CV -> blend -> evaluate -> decide -> register.

The protocol, in order:
1. validate the table; rejected rows are saved with the run, never dropped silently;
2. hold out 20% of the stones for the final, untouched evaluation;
3. tune each candidate with Optuna on the other 80% (K-fold CV, MAPE in dollars), bounded by
   `trials` per candidate and a shared `timeout`; keep each candidate's out-of-fold predictions;
4. blend the two best candidates in log space when that lowers the out-of-fold MAPE;
5. take the 90% range half-width from the out-of-fold residuals (split conformal);
6. fit on the 80%, measure on the holdout (metrics, slices, range coverage);
7. refit on every accepted stone; the gate (gate.py) compares with the champion on stones neither
   trained on (held-out stones, and training stones the champion never saw, cross-fitted); log
   everything to MLflow (tracking.py), register, record the lineage, and move the champion if
   the gate agreed (champion.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sklearn.model_selection import GroupKFold, train_test_split

from appraiser import (
    champion,
    data,
    evaluate,
    explain,
    features,
    gate,
    lineage,
    native,
    registry,
    schema,
    screening,
    tracking,
)
from appraiser.config import DEFAULT_TIMEOUT, DEFAULT_TRIALS, settings
from appraiser.gate import Decision, GatePolicy
from appraiser.locking import PipelineBusy
from appraiser.models import (
    CANDIDATES,
    MIN_CALIBRATION,
    AdaptiveRange,
    Candidate,
    ModelFormatError,
    PriceModel,
)

logger = logging.getLogger(__name__)

FOLDS = 5
HOLDOUT = 0.2
COVERAGE = 0.9
MIN_STONES = 50
BLEND_MARGIN = 0.05  # points of CV MAPE a blend must gain over the best single candidate


class TrainingError(RuntimeError):
    """Training cannot go on (too few valid stones, nothing to train)."""


@dataclass
class CandidateResult:
    name: str
    params: dict[str, Any]
    oof_log: np.ndarray
    cv: dict[str, float]
    trials: int
    seconds: float


def _cv_mape(y_log: np.ndarray, oof_log: np.ndarray, mask: np.ndarray | None = None) -> float:
    y, p = np.exp(y_log), np.exp(oof_log)
    if mask is not None:
        y, p = y[mask], p[mask]
    return float(100 * np.mean(np.abs(p - y) / y))


def fold_groups(stones: pd.DataFrame | np.ndarray, seed: int = 0) -> np.ndarray:
    """A group per distinct stone (its nine features; or stone keys already computed), numbered
    in a seeded random order: identical stones, perhaps with other prices, share a fold."""
    if not len(stones):
        return np.empty(0, dtype=np.int64)
    keys = stones if isinstance(stones, np.ndarray) else lineage.stone_keys(stones)
    _, twins = np.unique(keys, return_inverse=True)
    return np.random.default_rng(seed).permutation(twins.max() + 1)[twins]


def cross_validate(
    candidate: Candidate,
    params: dict[str, Any],
    stones: pd.DataFrame,
    y_log: np.ndarray,
    folds: int = FOLDS,
    seed: int = 0,
    trial: optuna.Trial | None = None,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Out-of-fold log-price predictions; reports to `trial` after each fold so Optuna can prune.
    Folds by `groups` (default fold_groups): a stone is never predicted by a model that saw its
    twin."""
    oof = np.full(len(stones), np.nan)
    groups = fold_groups(stones, seed) if groups is None else groups
    splits = GroupKFold(n_splits=folds).split(stones, groups=groups)
    for k, (fit_idx, val_idx) in enumerate(splits):
        member = candidate.build(params).fit(stones.iloc[fit_idx], y_log[fit_idx])
        oof[val_idx] = member.predict_log(stones.iloc[val_idx])
        if trial is not None:
            done = ~np.isnan(oof)
            trial.report(_cv_mape(y_log, oof, done), k)
            if trial.should_prune():
                raise optuna.TrialPruned()
    return oof


def tune(
    candidate: Candidate,
    stones: pd.DataFrame,
    y_log: np.ndarray,
    trials: int,
    timeout: float,
    seed: int,
    progress: Progress | None = None,
) -> CandidateResult:
    """Search the candidate's space with Optuna (TPE), starting from its defaults."""
    start = time.perf_counter()
    best: dict[str, Any] = {}
    groups = fold_groups(stones, seed)  # once: every trial sees the same folds

    def objective(trial: optuna.Trial) -> float:
        params = candidate.space(trial) if candidate.space else {}
        oof = cross_validate(
            candidate, params, stones, y_log, seed=seed, trial=trial, groups=groups
        )
        score = _cv_mape(y_log, oof)
        if not best or score < best["score"]:
            best.update(score=score, params=params, oof=oof)
        return score

    n_trials = trials if candidate.space else 1
    task = progress.add_task(f"tuning {candidate.name}", total=n_trials) if progress else None
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
    )
    if candidate.space:
        # the defaults are the first trial, so tuning can only improve on them
        tuned = optuna.trial.FixedTrial(candidate.defaults)
        candidate.space(tuned)
        study.enqueue_trial(tuned.params, skip_if_exists=True)

    def advance(_: optuna.Study, __: optuna.trial.FrozenTrial) -> None:
        if progress is not None and task is not None:
            progress.advance(task)

    # the first trial (the defaults) always runs, so every candidate is scored whatever the budget
    study.optimize(objective, n_trials=1, callbacks=[advance])
    remaining = timeout - (time.perf_counter() - start)
    if n_trials > 1 and remaining > 0:
        study.optimize(objective, n_trials=n_trials - 1, timeout=remaining, callbacks=[advance])
    if progress is not None and task is not None:
        progress.update(task, total=len(study.trials), completed=len(study.trials))
    if not best:
        raise TrainingError(f"no {candidate.name} trial finished within the time budget")
    y = np.exp(y_log)
    cv = evaluate.metrics(y, np.exp(best["oof"]))
    return CandidateResult(
        name=candidate.name,
        params={**candidate.defaults, **best["params"]},
        oof_log=best["oof"],
        cv=cv,
        trials=len(study.trials),
        seconds=time.perf_counter() - start,
    )


def blend(results: list[CandidateResult], y_log: np.ndarray) -> dict[str, float]:
    """Weights of the two best candidates that minimise out-of-fold MAPE (weight 1 = no blend).

    Averaging monotone models in log space keeps them monotone, and TreeSHAP values average too.
    """
    ranked = sorted(results, key=lambda r: r.cv["mape"])
    if len(ranked) < 2:
        return {ranked[0].name: 1.0}
    first, second = ranked[0], ranked[1]
    single = _cv_mape(y_log, first.oof_log)
    best_w, best_score = 1.0, single
    for w in np.arange(0.5, 1.0, 0.05):
        score = _cv_mape(y_log, w * first.oof_log + (1 - w) * second.oof_log)
        if score < best_score - 1e-9:
            best_w, best_score = float(w), score
    if single - best_score < BLEND_MARGIN:
        best_w = 1.0  # a blend doubles the cost of every price: it must earn its keep
    weights = {first.name: round(best_w, 2)}
    if best_w < 1.0:
        weights[second.name] = round(1 - best_w, 2)
    return weights


def _fit_model(
    results: dict[str, CandidateResult],
    weights: dict[str, float],
    stones: pd.DataFrame,
    intervals: list[float],
    info: dict[str, Any],
    ranges: AdaptiveRange | None = None,
) -> PriceModel:
    y_log = features.log_price(stones[schema.TARGET])
    members = [CANDIDATES[name].build(results[name].params).fit(stones, y_log) for name in weights]
    return PriceModel(
        members=members,
        weights=list(weights.values()),
        intervals=intervals,
        coverage=COVERAGE,
        reference=stones[list(schema.COLUMNS)].reset_index(drop=True),
        info=info,
        ranges=ranges,
    )


@dataclass
class Fitted:
    """A tuned, blended model measured on a holdout: `evaluated` was fitted without the holdout
    (the gate judges it), `final` on every training stone (the version registered)."""

    model_name: str
    weights: dict[str, float]
    results: dict[str, CandidateResult]
    intervals: list[float]
    ranges: AdaptiveRange | None
    cv: dict[str, float]
    candidates: pd.DataFrame
    evaluated: PriceModel
    final: PriceModel
    fit_part: pd.DataFrame
    tuned_on: np.ndarray  # the stones of fit_part that tuning, blending and ranges saw
    holdout: pd.DataFrame
    holdout_pred: pd.DataFrame
    holdout_metrics: dict[str, float]
    slices: pd.DataFrame
    final_stones: pd.DataFrame
    source: str
    fingerprint: str
    seed: int
    trials: int
    timeout: float


def fit(
    fit_part: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    final_stones: pd.DataFrame | None,
    source: str,
    trials: int = DEFAULT_TRIALS,
    timeout: float = DEFAULT_TIMEOUT,
    candidates: list[str] | None = None,
    seed: int = 42,
    show_progress: bool = True,
    tune_on: np.ndarray | None = None,
) -> Fitted:
    """Tune every candidate on `fit_part`, blend, calibrate the range, measure on `holdout`, and
    refit on `final_stones` (None: `fit_part` is final, nothing is fitted twice).

    `tune_on` (a mask of `fit_part`): tune, blend and calibrate on those stones only; the others
    are then fit on but never chose anything, so they can judge the challenger cross-fitted.
    """
    names = candidates or list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise TrainingError(f"unknown candidate(s) {unknown}; choose from {list(CANDIDATES)}")
    fit_part, holdout = fit_part.reset_index(drop=True), holdout.reset_index(drop=True)
    stones = fit_part if final_stones is None else final_stones
    fingerprint = data.fingerprint(stones[list(schema.COLUMNS)])
    tuned = np.ones(len(fit_part), dtype=bool) if tune_on is None else np.asarray(tune_on, bool)
    tune_part = fit_part[tuned].reset_index(drop=True)
    y_log = features.log_price(tune_part[schema.TARGET])

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    to_tune = [n for n in names if CANDIDATES[n].space]
    deadline = time.perf_counter() + timeout
    results: dict[str, CandidateResult] = {}
    with Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not show_progress,
        transient=False,
    ) as progress:
        for name in names:
            # what one candidate leaves of its share goes to the ones after it
            left = [n for n in to_tune if n not in results]
            share = max(deadline - time.perf_counter(), 0.0) / max(len(left), 1)
            results[name] = tune(CANDIDATES[name], tune_part, y_log, trials, share, seed, progress)

    weights = blend(list(results.values()), y_log)
    oof_blend = sum(w * results[n].oof_log for n, w in weights.items())
    assert isinstance(oof_blend, np.ndarray)
    residuals = y_log - oof_blend
    intervals = explain.banded_halfwidths(residuals, tune_part["carat"].to_numpy(), COVERAGE)
    # the range each stone gets: its difficulty learnt from the out-of-fold errors, its scores
    # cross-fitted (models.AdaptiveRange)
    ranges = (
        AdaptiveRange.fit(features.encode(tune_part).to_numpy(), residuals, COVERAGE, seed)
        if np.isfinite(residuals).sum() >= MIN_CALIBRATION
        else None  # too few stones: the carat-band widths
    )
    model_name = (
        " + ".join(f"{w:g} {n}" for n, w in weights.items())
        if len(weights) > 1
        else next(iter(weights))
    )
    cv = evaluate.metrics(np.exp(y_log), np.exp(oof_blend))
    table = _candidates_table(results, weights, model_name, cv)

    info = {
        "source": source,
        "fingerprint": fingerprint,
        "rows": len(stones),
        "seed": seed,
        # what the label-shift guard expects of this model's errors (screening.py)
        "residuals": screening.residual_sample(residuals, seed),
    }
    evaluated = _fit_model(results, weights, fit_part, intervals, info, ranges)
    holdout_pred = evaluated.predict(holdout)
    holdout_metrics = evaluate.metrics(
        holdout[schema.TARGET],
        holdout_pred["price"],
        holdout_pred["price_low"],
        holdout_pred["price_high"],
    )
    final = (
        evaluated
        if final_stones is None
        else _fit_model(results, weights, final_stones, intervals, info, ranges)
    )
    return Fitted(
        model_name=model_name,
        weights=weights,
        results=results,
        intervals=intervals,
        ranges=ranges,
        cv=cv,
        candidates=table,
        evaluated=evaluated,
        final=final,
        fit_part=fit_part,
        tuned_on=tuned,
        holdout=holdout,
        holdout_pred=holdout_pred,
        holdout_metrics=holdout_metrics,
        slices=evaluate.slice_metrics(holdout, holdout_pred),
        final_stones=stones,
        source=source,
        fingerprint=fingerprint,
        seed=seed,
        trials=trials,
        timeout=timeout,
    )


def _candidates_table(
    results: dict[str, CandidateResult],
    weights: dict[str, float],
    model_name: str,
    cv: dict[str, float],
) -> pd.DataFrame:
    table = pd.DataFrame(
        [
            {
                "candidate": r.name,
                **{f"cv_{k}": v for k, v in r.cv.items()},
                "trials": r.trials,
                "seconds": round(r.seconds, 1),
                "params": json.dumps(r.params),
            }
            for r in results.values()
        ]
    )
    if len(weights) > 1:
        table.loc[len(table)] = {
            "candidate": f"blend ({model_name})",
            **{f"cv_{k}": v for k, v in cv.items()},
            "trials": 0,
            "seconds": 0.0,
            "params": json.dumps(weights),
        }
    return table.sort_values("cv_mape").reset_index(drop=True)


@dataclass
class TrainResult:
    version: str
    champion: bool  # promoted to champion
    decision: str  # why (gate.reason, plus what happened at promotion)
    model_name: str
    holdout: dict[str, float]
    cv: dict[str, float]
    candidates: pd.DataFrame
    slices: pd.DataFrame
    validation: data.ValidationResult
    run_id: str
    run_dir: Path
    seconds: float
    fingerprint: str
    weights: dict[str, float] = field(default_factory=dict)
    gate: Decision | None = None
    champion_before: str | None = None  # the champion the gate judged against
    champion_after: str | None = None  # the champion once the attempt was over
    feedback_used: int = 0

    def to_dict(self) -> dict[str, Any]:
        """What scripts need (`appraiser retrain --json`)."""
        return {
            "promoted": self.champion,
            "challenger": self.version,
            "champion": self.champion_after,
            "champion_before": self.champion_before,
            "model": self.model_name,
            "decision": self.decision,
            "gate": self.gate.to_dict() if self.gate else None,
            "feedback_used": self.feedback_used,
            "holdout": self.holdout,
            "run_id": self.run_id,
            "seconds": round(self.seconds, 1),
        }


Decide = Callable[[Fitted], Decision]


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
    with Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not show_progress,
    ) as progress:
        task = progress.add_task("cross-fitting", total=folds)
        for k in range(folds):
            held = rows[fold_of == k]
            if len(held):
                keep = ~np.isin(keys, keys[held])  # twins of held stones leave with them
                model = _fit_model(
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


def _promote(version: str, decision: Decision, actor: str) -> tuple[bool, str]:
    """Move the champion to `version` if the gate agreed and the champion is still the one it
    judged against; (promoted, what happened)."""
    if not decision.promote:
        return False, decision.reason
    try:
        champion.move(
            version, kind="gate", reason=decision.reason, actor=actor, expected=decision.champion
        )
    except champion.ChampionChanged as exc:
        return False, f"{decision.reason}; but {exc}"
    except PipelineBusy:
        return False, (
            f"{decision.reason}; but another pass or retrain holds the pipeline lock, so "
            f"v{version} was not promoted: `appraiser models promote {version}` once it ends"
        )
    return True, decision.reason


def train(
    path: str | Path | None = None,
    *,
    trials: int = DEFAULT_TRIALS,
    timeout: float = DEFAULT_TIMEOUT,
    candidates: list[str] | None = None,
    seed: int | None = None,
    show_progress: bool = True,
    promote_if_better: bool = True,
    policy: GatePolicy | None = None,
) -> TrainResult:
    """Train, evaluate and register a model on a table (the public table when no path is given).

    The gate compares it with the champion on this file's holdout stones the champion did not
    train on (none, when the champion trained on the same file: then a person decides).
    """
    seed = settings().seed if seed is None else seed
    checked = data.load(path)
    stones = checked.clean
    if len(stones) < MIN_STONES:
        raise TrainingError(
            f"only {len(stones)} valid stones (need at least {MIN_STONES}); "
            f"{len(checked.rejected)} rows were rejected, see the quality report"
        )
    fit_part, holdout = train_test_split(stones, test_size=HOLDOUT, random_state=seed)
    current = registry.champion_version() if promote_if_better else None

    def decide(fitted: Fitted) -> Decision:
        if not promote_if_better:
            return Decision(False, "promotion not asked for", None, automatic=False)
        unsealed = fitted.holdout[lineage.roles(fitted.holdout) != "sealed"]  # no decision
        return against_champion(  # ever reads a sealed stone
            fitted,
            unsealed,
            champion_version=current,
            policy=policy,
            pool_name="holdout stones of this file",
            show_progress=show_progress,
        )

    return fit_and_register(
        checked,
        fit_part,
        holdout,
        final_stones=stones,
        source=str(path) if path is not None else data.PUBLIC_TABLE,
        trials=trials,
        timeout=timeout,
        candidates=candidates,
        seed=seed,
        show_progress=show_progress,
        decide=decide,
        kind="train",
        tune_on=tuning_mask(fit_part.reset_index(drop=True), current),
    )


def fit_and_register(
    validation: data.ValidationResult,
    fit_part: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    final_stones: pd.DataFrame | None,
    source: str,
    decide: Decide,
    kind: str,
    trials: int = DEFAULT_TRIALS,
    timeout: float = DEFAULT_TIMEOUT,
    candidates: list[str] | None = None,
    seed: int = 42,
    show_progress: bool = True,
    tags: dict[str, str] | None = None,
    lineage_extra: dict[str, Any] | None = None,
    actor: str = "gate",
    tune_on: np.ndarray | None = None,
) -> TrainResult:
    """Fit, decide, log to MLflow and register, record the lineage, then move the champion if the
    gate agreed (compare-and-set against the champion it judged).

    A failure anywhere leaves the champion as it was and shows as a FAILED run in MLflow, tagged
    with the error, so nobody mistakes a crashed retrain for one that found nothing better.
    """
    started = time.perf_counter()
    try:
        fitted = fit(
            fit_part,
            holdout,
            final_stones=final_stones,
            source=source,
            trials=trials,
            timeout=timeout,
            candidates=candidates,
            seed=seed,
            show_progress=show_progress,
            tune_on=tune_on,
        )
        decision = decide(fitted)
        logged = tracking.log_training(
            fitted, validation, decision, tags={"kind": kind, **(tags or {})}
        )
        lineage.record(
            logged.version,
            fitted.final_stones,
            run_id=logged.run_id,
            source=source,
            kind=kind,
            decision=decision.to_dict(),
            **(lineage_extra or {}),
        )
    except Exception as exc:  # nothing moved: the champion is as it was
        try:
            tracking.log_failure(kind, exc)
        except Exception as logging_failed:  # the registry is down too: say so, keep the cause
            exc.add_note(f"(the FAILED run could not be logged either: {logging_failed})")
        raise TrainingError(
            f"{kind} failed ({type(exc).__name__}: {exc}); the champion is unchanged. "
            "Its MLflow run is marked FAILED when the registry could be reached; fix the cause "
            "and run it again."
        ) from exc
    if decision.promote:  # compiled before the move: the servers find the new champion's
        native.attach(fitted.final, build=True)  # fast trees ready, and none compiles them
    promoted, said = _promote(logged.version, decision, actor)
    champion_after: str | None = decision.champion
    try:  # after the move, a failure is a warning: the version and the move stand
        tracking.record_outcome(logged.run_id, promoted, said)
        lineage.record_outcome(logged.version, promoted, said)
        champion_after = registry.champion_version()
    except Exception as exc:
        logger.warning("v%s: the outcome could not be recorded everywhere: %s", logged.version, exc)
    return TrainResult(
        version=logged.version,
        champion=promoted,
        decision=said,
        model_name=fitted.model_name,
        holdout=fitted.holdout_metrics,
        cv=fitted.cv,
        candidates=fitted.candidates,
        slices=fitted.slices,
        validation=validation,
        run_id=logged.run_id,
        run_dir=logged.run_dir,
        seconds=time.perf_counter() - started,
        fingerprint=fitted.fingerprint,
        weights=fitted.weights,
        gate=decision,
        champion_before=decision.champion,
        champion_after=champion_after,
    )
