"""Retraining: a challenger on the store's stones, a gate that decides by evidence, a pass that
remembers what it already tried.

Every stored stone has a fixed role (lineage.py): `train` stones teach challengers and judge them
against the champion (each priced by both recipes refitted without it: challenge.py), `sealed`
stones are never trained on nor used to decide, and only report how good the champion is over
time. Batches
held by the label-shift guard (screening.py) are left out of everything until an admin releases
them.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from appraiser import (
    audit,
    batches,
    champion,
    clock,
    data,
    drift,
    gate,
    ingest,
    lineage,
    market_loop,
    registry,
    schema,
    store,
)
from appraiser.challenge import against_champion
from appraiser.config import DEFAULT_TIMEOUT, DEFAULT_TRIALS, RETRAIN_THRESHOLD
from appraiser.gate import GatePolicy
from appraiser.locking import BUSY, PipelineBusy, exclusive
from appraiser.models import PriceModel
from appraiser.train import MIN_STONES, TrainResult, fit_and_register
from appraiser.tuning import Fitted, TrainingError

__all__ = ["BUSY", "GatePolicy", "PipelineBusy", "exclusive"]

LEVELS_FILE = (
    "market_levels.json"  # the run's artifact: the level each month's prices were divided by
)


def in_sealed_set(stones: pd.DataFrame) -> np.ndarray:
    """True for the stones no retrain trains on (the sealed ones), fixed by their features."""
    return np.asarray(lineage.roles(stones) == "sealed")


def feedback_stones() -> pd.DataFrame:
    """Stones an admin approved an expert's price for (feedback.py), with `feedback_id`. They
    take the role their features give them, like stored stones; pending or rejected prices never
    reach training, comparables or a comparison."""
    from appraiser import feedback

    return feedback.approved_stones()


@dataclass
class LabelledStones:
    """Every labelled stone the loop may use, by role."""

    stones: pd.DataFrame  # store stones (batch_id) and feedback stones (feedback_id)
    roles: np.ndarray

    def part(self, role: str) -> pd.DataFrame:
        return self.stones[self.roles == role].reset_index(drop=True)

    @property
    def newest_batch(self) -> int | None:
        ids = self.stones["batch_id"].dropna()
        return int(ids.max()) if len(ids) else None


def labelled_stones() -> LabelledStones:
    """The store's stones in use (batches not held or dropped) and the experts' prices, each with
    its `appraised_at` (the day its batch arrived when the file gave none)."""
    from appraiser.store import market as stored_market

    stored = stored_market.dated_stones()[[*schema.COLUMNS, schema.APPRAISED_AT, "batch_id"]]
    stored = stored.astype({"batch_id": float})
    feedback = feedback_stones()
    parts = [stored.assign(feedback_id=np.nan)]
    if len(feedback):
        parts.append(feedback.astype({"feedback_id": float}).assign(batch_id=np.nan))
    both = pd.concat(parts, ignore_index=True)
    for column in schema.NUMERIC_COLUMNS:
        both[column] = both[column].astype(float)
    return LabelledStones(both, lineage.roles(both) if len(both) else np.empty(0, dtype=object))


def measure_sealed(version: str, model: PriceModel, sealed: pd.DataFrame) -> dict[str, Any] | None:
    """The model's error on sealed stones it never trained on, kept in the store (kind=sealed).
    No decision reads it: it tells, over time, how good the champion really is."""
    known = lineage.load(version)
    if known is not None and len(sealed):
        sealed = sealed[~known.trained_on(lineage.stone_keys(sealed))]
    if len(sealed) == 0:
        return None
    priced = model.predict(sealed)
    m = evaluate_metrics(sealed, priced)
    with store.session() as s, s.begin():
        s.add(
            store.Evaluation(
                kind="sealed",
                model_version=version,
                stones=len(sealed),
                mape=m["mape"],
                coverage=m["coverage"],
                bias=float(
                    np.median(np.log(sealed[schema.TARGET].to_numpy() / priced["price"].to_numpy()))
                ),
                details=json.dumps({"known_lineage": known is not None}),
            )
        )
    return {"version": version, "stones": len(sealed), "mape": m["mape"], "coverage": m["coverage"]}


def evaluate_metrics(stones: pd.DataFrame, priced: pd.DataFrame) -> dict[str, float]:
    from appraiser import evaluate

    return evaluate.metrics(
        stones[schema.TARGET], priced["price"], priced["price_low"], priced["price_high"]
    )


def sealed_history() -> pd.DataFrame:
    """The champion's (and challengers') error on the sealed set over time, oldest first."""
    from sqlalchemy import select

    store.ready()
    with store.session() as s:
        rows = s.scalars(
            select(store.Evaluation)
            .where(store.Evaluation.kind == "sealed")
            .order_by(store.Evaluation.id)
        ).all()
        return pd.DataFrame(
            [
                {
                    "at": r.created_at,
                    "version": r.model_version,
                    "stones": r.stones,
                    "mape": r.mape,
                    "coverage": r.coverage,
                }
                for r in rows
            ],
            columns=["at", "version", "stones", "mape", "coverage"],
        )


def retrain(
    *,
    trials: int = DEFAULT_TRIALS,
    timeout: float = DEFAULT_TIMEOUT,
    policy: GatePolicy | None = None,
    show_progress: bool = True,
    actor: str = audit.GATE,
) -> TrainResult:
    """Train a challenger on the store's training stones; promote it only if the gate agrees
    (the move is audited under `actor`: who asked for the retrain, else the system's gate).

    Holds the pipeline lock throughout, so no other retrain, pass or champion move interleaves.
    """
    with exclusive():
        known = labelled_stones()
        # every price on the base level (the champion's, 1.0): eras do not blur (market_loop.py)
        series = market_loop.training_series(champion.loaded)
        known.stones, levels = market_loop.deflate(known.stones, series)
        fit_part = known.part("train")
        if len(fit_part) < MIN_STONES:
            raise TrainingError(
                f"the store holds {len(fit_part)} training stones (need {MIN_STONES}; "
                f"{len(known.stones)} labelled stones in all, 1 in 20 of them sealed): ingest "
                "appraisals first with `appraiser ingest FILE`"
            )
        sealed = known.part("sealed")
        current = champion.current()  # the one judged against, read before training
        newest = known.newest_batch

        def decide(fitted: Fitted) -> gate.Decision:
            # no holdout: every training stone judges, priced by both recipes refitted without it
            return against_champion(
                fitted,
                None,
                champion_version=current,
                policy=policy,
                newest_batch=newest,
                show_progress=show_progress,
            )

        batch_ids = known.stones["batch_id"].dropna()
        feedback_ids = known.stones["feedback_id"].dropna()
        feedback_used = int(fit_part["feedback_id"].notna().sum())
        validation = data.ValidationResult(
            clean=known.stones[list(schema.COLUMNS)],
            rejected=pd.DataFrame(),
            total=len(known.stones),
        )
        result = fit_and_register(
            validation,
            fit_part,
            None,  # measured out of fold: no stone is kept from training but the sealed ones
            final_stones=None,  # the sealed stones stay unseen by every model
            source="store",
            trials=trials,
            timeout=timeout,
            seed=42,
            show_progress=show_progress,
            decide=decide,
            kind="retrain",
            tags={
                "store_max_batch": str(int(batch_ids.max()) if len(batch_ids) else 0),
                "feedback_used": str(feedback_used),
                "market_levels": market_loop.levels_json(levels)[:5000],
            },
            lineage_extra={
                "max_batch_id": int(batch_ids.max()) if len(batch_ids) else 0,
                "max_feedback_id": int(feedback_ids.max()) if len(feedback_ids) else 0,
                # every batch in use now, trained on or not: a later release is then new
                "batches": sorted(int(b) for b in batch_ids.unique()),
            },
            actor=actor,
        )
        result.feedback_used = feedback_used
        registry.client().log_text(result.run_id, market_loop.levels_json(levels), LEVELS_FILE)
        measured = None
        if result.champion:  # only champions are measured there: a challenger's sealed score
            _, model = registry.load_version(result.version)  # would invite choosing by it
            measured = measure_sealed(result.version, model, sealed)
        if measured is not None:
            from appraiser import tracking

            tracking.log_metrics(
                result.run_id,
                {"sealed_mape": measured["mape"], "sealed_stones": measured["stones"]},
            )
        return result


# --- one pass of the automated pipeline, and the folder watcher ----------------------------------

INBOX_SUFFIXES = (".csv", ".parquet", ".pq")
DONE = ("processed", "failed")  # the inbox's folders of files already handled


def drift_stones(new: pd.DataFrame, version: str) -> pd.DataFrame:
    """The stones drift judges this cycle, oldest first: of the store's stones since the last
    retrain (`new`), those of batches received after `version` became champion (its reference
    is what they are compared with) that it did not train on."""
    moves = champion.history()
    since = clock.utc(moves[-1]["at"]) if moves else None
    if since is not None:
        received = {b["id"]: clock.utc(b["received_at"]) for b in batches.listed()}
        later = [i for i, at in received.items() if at is not None and at > since]
        new = new[new["batch_id"].isin(later)]
    known = lineage.load(version)
    if known is not None and len(new):
        new = new[~known.trained_on(lineage.stone_keys(new))]
    return new.reset_index(drop=True)


def log_drift(report: pd.DataFrame, new_stones: int) -> str:
    """Record a drift report as an MLflow run (kind=drift): one metric per feature, the table."""
    import mlflow

    registry.use_experiment()
    with mlflow.start_run(run_name="drift check") as run:
        mlflow.set_tags({"kind": "drift", "drift": str(bool(report["drift"].any()))})
        mlflow.log_param("new_stones", new_stones)
        mlflow.log_metrics(
            {f"drift_{r.feature}_{r.test.lower()}": r.statistic for r in report.itertuples()}
            | {f"drift_{r.feature}_p": r.p_value for r in report.itertuples()}
        )
        mlflow.log_text(data.formula_safe_frame(report).to_csv(index=False), "drift.csv")
    return str(run.info.run_id)


@dataclass
class PassReport:
    """What one pipeline pass did, for people and for logs."""

    ingested: list[ingest.IngestReport]
    failed: list[tuple[str, str]]
    new_stones: int  # stones in batches no retrain has seen yet
    drift: pd.DataFrame | None
    retrain_reason: str | None
    result: TrainResult | None
    new_feedback: int = 0
    held: list[dict[str, Any]] = field(default_factory=list)  # batches waiting for an admin
    signals: list[str] = field(default_factory=list)  # the champion worse on fresh stones
    champion: str | None = None  # after the pass
    sealed: dict[str, Any] | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """What scripts need (`appraiser pipeline run --json`)."""
        result = self.result
        return {
            "busy": False,  # True (and nothing else) when another pass held the lock
            "ingested": [
                {
                    "file": r.path,
                    "batch": r.batch_id,
                    "already_ingested": r.already_ingested,
                    "rows_read": r.rows_read,
                    "rows_accepted": r.rows_accepted,
                    "rows_rejected": r.rows_rejected,
                    "held": r.held,
                    "screening": r.screening.to_dict() if r.screening else None,
                }
                for r in self.ingested
            ],
            "failed": [{"file": name, "reason": why} for name, why in self.failed],
            "new_stones": self.new_stones,
            "new_feedback": self.new_feedback,
            "drift": bool(self.drift is not None and self.drift["drift"].any()),
            "drift_features": drift.drifted(self.drift) if self.drift is not None else [],
            "signals": self.signals,
            "retrained": result is not None,
            "retrain_reason": self.retrain_reason,
            "promoted": bool(result is not None and result.champion),
            "champion": self.champion,
            "challenger": result.version if result is not None else None,
            "decision": result.to_dict() if result is not None else None,
            "held": [
                {"batch": b["id"], "file": b["file_name"], "reason": b["status_reason"]}
                for b in self.held
            ],
            "sealed": self.sealed,
            "note": self.note,
        }


def _move(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists():  # never overwrite an earlier file of the same name
        target = folder / f"{path.stem}.{int(time.time() * 1000)}{path.suffix}"
    return Path(shutil.move(str(path), target))


def inbox_files(inbox: Path) -> list[Path]:
    """The files waiting at the top of the inbox (`processed/` and `failed/` hold what was done)."""
    return sorted(p for p in inbox.iterdir() if p.is_file() and p.suffix.lower() in INBOX_SUFFIXES)


def ingest_inbox(
    inbox: Path, source: str = "inbox"
) -> tuple[list[ingest.IngestReport], list[tuple[str, str]]]:
    """Ingest every file in the inbox (audited as the system's `system:inbox`), all under one
    `source`: whoever may write to the inbox may write any name in it, so a file's folder or name
    never claims an appraiser (the guard would count two folders as two sources that agree);
    move each to processed/ or failed/ (with a .reason.txt)."""
    reports, failed = [], []
    for path in inbox_files(inbox):
        try:
            reports.append(ingest.ingest_file(path, source=source, actor=audit.INBOX))
            _move(path, inbox / "processed")
        except data.DataError as exc:
            moved = _move(path, inbox / "failed")
            moved.with_name(moved.name + ".reason.txt").write_text(
                f"{exc}\nNothing of this file was stored: fix it and drop it in the inbox again.\n"
            )
            failed.append((path.name, str(exc)))
    return reports, failed


def run_pass(
    inbox: Path | None = None,
    *,
    threshold: int = RETRAIN_THRESHOLD,
    trials: int = DEFAULT_TRIALS,
    timeout: float = DEFAULT_TIMEOUT,
    policy: GatePolicy | None = None,
    show_progress: bool = True,
) -> PassReport:
    """Ingest the inbox (each batch screened by the champion), then retrain when something new
    calls for it: no champion yet, `threshold` new stones, the champion worse than expected on a
    new batch, or drift. "New" means after the last retrain, promoted or not: a rejected
    challenger is not trained again until something new arrives.

    Holds the pipeline lock, so two passes (and so two retrains) never run at once.
    """
    with exclusive():
        reports, failed = ingest_inbox(inbox) if inbox is not None else ([], [])
        if any(b["screening"] for b in batches.listed(status="held")):
            # what a busy moment left held, a market may now back
            market_loop.after_acceptance(champion.loaded)
        current = champion.current()
        attempt = lineage.last_attempt()
        known = labelled_stones()
        stones = known.stones
        seen = attempt.batches if attempt else set()
        new = stones[stones["batch_id"].notna() & ~stones["batch_id"].isin(list(seen))]
        last_feedback = attempt.max_feedback_id if attempt else 0
        new_feedback = int((stones["feedback_id"] > last_feedback).sum())
        report = PassReport(
            ingested=reports,
            failed=failed,
            new_stones=len(new),
            drift=None,
            retrain_reason=None,
            result=None,
            new_feedback=new_feedback,
            held=batches.listed(status="held"),
        )
        reasons: list[str] = []
        champion_model = registry.load_version(current)[1] if current else None
        if current is None:
            reasons.append("no champion yet")
        else:
            new_batches = {int(b) for b in new["batch_id"].unique()}
            for batch in batches.listed(status="accepted"):
                screened = batch["screening"]
                if batch["id"] in new_batches and screened and screened.get("worse"):
                    report.signals.append(
                        f"batch {batch['id']}: champion v{screened['version']} "
                        + "; ".join(screened["worse"])
                    )
            if report.signals:
                reasons.append("the champion is worse than expected on new stones")
            if len(new) + new_feedback >= threshold:
                reasons.append(
                    f"{len(new) + new_feedback:,} new labelled stones since the last retrain "
                    f"(>= {threshold:,})"
                )
            assert champion_model is not None
            cycle = drift_stones(new, current)
            report.drift = drift.cycle_report(cycle, champion_model.reference)
            if report.drift is not None:
                log_drift(report.drift, len(cycle))
                if drift.drifted(report.drift):
                    reasons.append("drift in " + ", ".join(drift.drifted(report.drift)))
        if reasons and attempt is not None and len(new) == 0 and new_feedback == 0:
            report.note = "nothing new since the last retrain: not retrained again"
        elif reasons and int((known.roles == "train").sum()) < MIN_STONES:
            report.note = f"fewer than {MIN_STONES} training stones in the store: not retrained"
        elif reasons:
            report.retrain_reason = "; ".join(reasons)
            audit.record(audit.PIPELINE, "retrain_started", reason=report.retrain_reason)
            report.result = retrain(
                trials=trials,
                timeout=timeout,
                policy=policy,
                show_progress=show_progress,
                actor=audit.PIPELINE,
            )
        report.champion = champion.current()
        if report.champion is not None and (reports or report.result is not None):
            _, model = registry.load_version(report.champion)
            report.sealed = measure_sealed(report.champion, model, known.part("sealed"))
        return report


def watch(
    inbox: Path,
    *,
    interval: float = 5.0,
    passes: int | None = None,
    on_pass: Callable[[PassReport], None] | None = None,
    **options: Any,
) -> None:
    """Run a pass whenever files appear in the inbox (polling every `interval` seconds)."""
    done = 0
    while passes is None or done < passes:
        if inbox_files(inbox):
            report = run_pass(inbox, **options)
            if on_pass is not None:
                on_pass(report)
            done += 1
        else:
            time.sleep(interval)
