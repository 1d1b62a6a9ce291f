"""Training: validate -> tune candidates by K-fold CV -> blend -> evaluate -> decide -> register.

The protocol, in order:
1. validate the table; rejected rows are saved with the run, never dropped silently;
2. hold out 20% of the stones for the final, untouched evaluation (identical stones, perhaps
   with other prices, all on one side: a twin across the line would leak its price);
3. tune each candidate with Optuna on the other 80% (K-fold CV, MAPE in dollars), bounded by
   `trials` per candidate and a shared `timeout`; keep each candidate's out-of-fold predictions;
4. blend the two best candidates in log space when that lowers the out-of-fold MAPE;
5. take the 90% range half-width from the out-of-fold residuals (split conformal);
6. fit on the 80%, measure on the holdout (metrics, slices, range coverage);
7. refit on every accepted stone; the gate (gate/) compares with the champion on the holdout
   and training stones, each priced by both recipes refitted without it (challenge.py); log
   everything to MLflow (tracking.py), register, record the lineage, and move the champion if
   the gate agreed (champion.py).

Steps 3 to 6 are tuning.py's; choosing the stones that judge, and judging, challenge.py's; here
the whole run, registered (a failure leaves the champion as it was and logs a FAILED run).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from appraiser import audit, champion, data, fast, lineage, tracking
from appraiser.challenge import against_champion
from appraiser.config import DEFAULT_TIMEOUT, DEFAULT_TRIALS, settings
from appraiser.gate import Decision, GatePolicy
from appraiser.locking import PipelineBusy
from appraiser.tuning import Fitted, TrainingError, fit, fold_groups

logger = logging.getLogger(__name__)

HOLDOUT = 0.2
MIN_STONES = 50


@dataclass
class TrainResult:
    """What a training run made and decided: the version registered, the gate's call, figures."""

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
    actor: str = audit.GATE,
) -> TrainResult:
    """Train, evaluate and register a model on a table (the public table when no path is given);
    a promotion is audited under `actor` (the person who ran it; the system's gate by default).

    The gate compares it with the champion on this file's stones (not the sealed ones), each
    priced by both recipes refitted without it (challenge.against_champion).
    """
    seed = settings().seed if seed is None else seed
    checked = data.load(path)
    stones = checked.clean
    if len(stones) < MIN_STONES:
        raise TrainingError(
            f"only {len(stones)} valid stones (need at least {MIN_STONES}); "
            f"{len(checked.rejected)} rows were rejected, see the quality report"
        )
    fit_part, holdout = split_holdout(stones, seed)
    current = champion.current() if promote_if_better else None

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
        actor=actor,
    )


def split_holdout(stones: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fit part, holdout): about HOLDOUT of the stones held out, identical stones (the nine
    features; tuning.fold_groups) on one side."""
    split = GroupShuffleSplit(n_splits=1, test_size=HOLDOUT, random_state=seed)
    fit_rows, held_rows = next(split.split(stones, groups=fold_groups(stones, seed)))
    return stones.iloc[fit_rows], stones.iloc[held_rows]


def fit_and_register(
    validation: data.ValidationResult,
    fit_part: pd.DataFrame,
    holdout: pd.DataFrame | None,
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
    actor: str = audit.GATE,
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
        fast.accelerate(fitted.final, build="now", explain=False)  # compiled: none compiles them
    promoted, said = _promote(logged.version, decision, actor)
    champion_after: str | None = decision.champion
    try:  # after the move, a failure is a warning: the version and the move stand
        tracking.record_outcome(logged.run_id, promoted, said)
        lineage.record_outcome(logged.version, promoted, said)
        champion_after = champion.current()
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
