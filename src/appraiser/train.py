"""Training: validate -> tune every candidate by K-fold CV -> blend -> evaluate -> register.

The protocol, in order:
1. validate the table; rejected rows are saved with the run, never dropped silently;
2. hold out 20% of the stones for the final, untouched evaluation;
3. tune each candidate with Optuna on the other 80% (K-fold CV, MAPE in dollars), bounded by
   `trials` per candidate and a shared `timeout`; keep each candidate's out-of-fold predictions;
4. blend the two best candidates in log space when that lowers the out-of-fold MAPE;
5. take the 90% range half-width from the out-of-fold residuals (split conformal);
6. fit on the 80%, measure on the holdout (metrics, slices, plots, range coverage), compare with the
   current champion on the same holdout stones;
7. refit on every accepted stone, log everything to MLflow, register, and promote if better.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sklearn.model_selection import KFold, train_test_split

from appraiser import data, evaluate, explain, features, registry, schema
from appraiser.config import DEFAULT_TIMEOUT, DEFAULT_TRIALS, settings
from appraiser.models import CANDIDATES, Candidate, PriceModel

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


@dataclass
class TrainResult:
    version: str
    champion: bool
    decision: str
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


def _cv_mape(y_log: np.ndarray, oof_log: np.ndarray, mask: np.ndarray | None = None) -> float:
    y, p = np.exp(y_log), np.exp(oof_log)
    if mask is not None:
        y, p = y[mask], p[mask]
    return float(100 * np.mean(np.abs(p - y) / y))


def cross_validate(
    candidate: Candidate,
    params: dict[str, Any],
    stones: pd.DataFrame,
    y_log: np.ndarray,
    folds: int = FOLDS,
    seed: int = 0,
    trial: optuna.Trial | None = None,
) -> np.ndarray:
    """Out-of-fold log-price predictions; reports to `trial` after each fold so Optuna can prune."""
    oof = np.full(len(stones), np.nan)
    splits = KFold(n_splits=folds, shuffle=True, random_state=seed).split(stones)
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

    def objective(trial: optuna.Trial) -> float:
        params = candidate.space(trial) if candidate.space else {}
        oof = cross_validate(candidate, params, stones, y_log, seed=seed, trial=trial)
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
) -> PriceModel:
    y_log = features.log_price(stones[schema.TARGET])
    members = [CANDIDATES[name].build(results[name].params).fit(stones, y_log) for name in weights]
    return PriceModel(
        members=members,
        weights=list(weights.values()),
        intervals=intervals,
        coverage=COVERAGE,
        reference=stones.reset_index(drop=True),
        info=info,
    )


def _flat(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": float(v) for k, v in values.items() if np.isfinite(v)}


def _slice_metric_names(slices: pd.DataFrame) -> dict[str, float]:
    out = {}
    for row in slices.itertuples():
        value = str(row.value).replace(" ", "_").replace("<", "lt").replace(">=", "ge")
        key = f"slice_{row.slice}_{value}"
        key = key.replace("-", "to").replace(".", "p")
        out[f"{key}_mape"] = float(row.mape)
    return out


def compare_with_champion(stones: pd.DataFrame, challenger_mape: float) -> tuple[bool, str]:
    """Whether a challenger with this MAPE on `stones` beats the champion there, and why."""
    current = registry.champion_version()
    if current is None:
        return True, "no champion yet"
    _, champion = registry.load_version(current)
    champion_mape = evaluate.metrics(stones[schema.TARGET], champion.predict(stones)["price"])[
        "mape"
    ]
    better = challenger_mape < champion_mape
    verb = "beats" if better else "does not beat"
    return better, (
        f"holdout MAPE {challenger_mape:.2f}% {verb} champion v{current}'s "
        f"{champion_mape:.2f}% on the same {len(stones):,} stones"
    )


Gate = Callable[[PriceModel, pd.DataFrame, dict[str, float], pd.DataFrame], tuple[bool, str]]


def beats_champion(
    model: PriceModel, holdout: pd.DataFrame, metrics: dict[str, float], slices: pd.DataFrame
) -> tuple[bool, str]:
    """The default gate: promote when the new model's holdout MAPE beats the champion's there."""
    return compare_with_champion(holdout, metrics["mape"])


def train(
    path: str | Path | None = None,
    *,
    trials: int = DEFAULT_TRIALS,
    timeout: float = DEFAULT_TIMEOUT,
    candidates: list[str] | None = None,
    seed: int | None = None,
    show_progress: bool = True,
    promote_if_better: bool = True,
) -> TrainResult:
    """Train, evaluate and register a model on a table (the public table when no path is given)."""
    seed = settings().seed if seed is None else seed
    checked = data.load(path)
    stones = checked.clean
    if len(stones) < MIN_STONES:
        raise TrainingError(
            f"only {len(stones)} valid stones (need at least {MIN_STONES}); "
            f"{len(checked.rejected)} rows were rejected, see the quality report"
        )
    fit_part, holdout = train_test_split(stones, test_size=HOLDOUT, random_state=seed)
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
        gate=beats_champion if promote_if_better else _never,
    )


def _never(
    model: PriceModel, holdout: pd.DataFrame, metrics: dict[str, float], slices: pd.DataFrame
) -> tuple[bool, str]:
    return False, "promotion not asked for"


def fit_and_register(
    validation: data.ValidationResult,
    fit_part: pd.DataFrame,
    holdout: pd.DataFrame,
    **options: Any,
) -> TrainResult:
    """Tune on `fit_part`, measure on `holdout`, refit on `final_stones`, register, maybe promote.

    A failure anywhere leaves the champion as it was and shows as a FAILED run in MLflow, tagged
    with the error, so nobody mistakes a crashed retrain for one that found nothing better.
    """
    try:
        return _fit_and_register(validation, fit_part, holdout, **options)
    except Exception as exc:
        registry.use_experiment()
        kind = (options.get("tags") or {}).get("kind", "train")
        with mlflow.start_run(run_name=f"{kind} failed") as run:
            mlflow.set_tags({"kind": kind, "error": f"{type(exc).__name__}: {exc}"[:5000]})
        registry.client().set_terminated(run.info.run_id, status="FAILED")
        raise TrainingError(
            f"{kind} failed ({type(exc).__name__}: {exc}); the champion is unchanged. "
            f"MLflow run {run.info.run_id} is marked FAILED; fix the cause and run it again."
        ) from exc


def _fit_and_register(
    validation: data.ValidationResult,
    fit_part: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    final_stones: pd.DataFrame,
    source: str,
    trials: int = DEFAULT_TRIALS,
    timeout: float = DEFAULT_TIMEOUT,
    candidates: list[str] | None = None,
    seed: int = 42,
    show_progress: bool = True,
    gate: Gate = beats_champion,
    tags: dict[str, str] | None = None,
) -> TrainResult:
    """The work of fit_and_register; `gate` decides promotion from the holdout results."""
    started = time.perf_counter()
    checked = validation
    stones = final_stones
    names = candidates or list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise TrainingError(f"unknown candidate(s) {unknown}; choose from {list(CANDIDATES)}")
    fingerprint = data.fingerprint(stones)
    fit_part, holdout = fit_part.reset_index(drop=True), holdout.reset_index(drop=True)
    y_log = features.log_price(fit_part[schema.TARGET])

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
            results[name] = tune(CANDIDATES[name], fit_part, y_log, trials, share, seed, progress)

    weights = blend(list(results.values()), y_log)
    oof_blend = sum(w * results[n].oof_log for n, w in weights.items())
    assert isinstance(oof_blend, np.ndarray)
    intervals = explain.banded_halfwidths(y_log - oof_blend, fit_part["carat"].to_numpy(), COVERAGE)
    model_name = (
        " + ".join(f"{w:g} {n}" for n, w in weights.items())
        if len(weights) > 1
        else next(iter(weights))
    )
    cv = evaluate.metrics(np.exp(y_log), np.exp(oof_blend))

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
    table = table.sort_values("cv_mape").reset_index(drop=True)

    info = {"source": source, "fingerprint": fingerprint, "rows": len(stones), "seed": seed}
    evaluated = _fit_model(results, weights, fit_part, intervals, info)
    holdout_pred = evaluated.predict(holdout)
    holdout_metrics = evaluate.metrics(
        holdout[schema.TARGET],
        holdout_pred["price"],
        holdout_pred["price_low"],
        holdout_pred["price_high"],
    )
    slices = evaluate.slice_metrics(holdout, holdout_pred)

    should_promote, decision = gate(evaluated, holdout, holdout_metrics, slices)

    final = _fit_model(results, weights, stones, intervals, info)

    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=_runs_dir()))
    model_dir = final.save(run_dir / "model")
    checked.rejected.to_csv(run_dir / "rejected_rows.csv", index=False)
    checked.report.to_csv(run_dir / "quality_report.csv", index=False)
    table.to_csv(run_dir / "candidates.csv", index=False)
    slices.to_csv(run_dir / "slice_metrics.csv", index=False)
    evaluate.plot_predictions(
        holdout[schema.TARGET],
        holdout_pred["price"],
        run_dir / "holdout_predictions.png",
        f"{model_name} on the holdout",
    )
    evaluate.plot_slices(slices, run_dir / "holdout_slices.png")

    registry.use_experiment()
    with mlflow.start_run(run_name=f"train {model_name}") as run:
        mlflow.set_tags(
            {
                "data_source": source,
                "data_fingerprint": fingerprint,
                "kind": "train",
                **(tags or {}),
            }
        )
        mlflow.log_params(
            {
                "model": model_name,
                "weights": json.dumps(weights),
                "trials": trials,
                "timeout": timeout,
                "folds": FOLDS,
                "holdout_rows": len(holdout),
                "seed": seed,
                "data_rows_read": checked.total,
                "data_rows_accepted": len(stones),
                "data_rows_rejected": len(checked.rejected),
                "interval_log_halfwidths": json.dumps([round(w, 4) for w in intervals]),
                **{f"{n}_params": json.dumps(results[n].params)[:6000] for n in weights},
            }
        )
        mlflow.log_metrics(
            {
                **_flat("holdout", holdout_metrics),
                **_flat("cv", cv),
                **_slice_metric_names(slices),
                **{f"candidate_{r.name}_cv_mape": r.cv["mape"] for r in results.values()},
            }
        )
        for file in sorted(run_dir.glob("*.*")):
            mlflow.log_artifact(str(file))
        model_uri = registry.log_model(model_dir, holdout[list(schema.FEATURES)].head(5))
        version = registry.register(
            model_uri, run.info.run_id, f"{model_name}; holdout MAPE {holdout_metrics['mape']:.2f}%"
        )
        mlflow.set_tag("decision", decision)
        mlflow.set_tag("promoted", str(should_promote))
        if should_promote:
            registry.promote(version, decision)

    return TrainResult(
        version=version,
        champion=should_promote,
        decision=decision,
        model_name=model_name,
        holdout=holdout_metrics,
        cv=cv,
        candidates=table,
        slices=slices,
        validation=checked,
        run_id=run.info.run_id,
        run_dir=run_dir,
        seconds=time.perf_counter() - started,
        fingerprint=fingerprint,
        weights=weights,
    )


def _runs_dir() -> Path:
    folder = settings().runs_dir
    folder.mkdir(parents=True, exist_ok=True)
    return folder
