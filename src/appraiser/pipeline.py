"""Retraining: a challenger on every accepted stone in the store, a gate, and promotion.

Champion and challenger are compared on the same rows: the reference holdout, a fixed fifth of
the store chosen by a hash of each stone's values (a stone in it stays in it, so no model ever
trains on it), which also holds the newest stones no champion has seen.
"""

from __future__ import annotations

import fcntl
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from appraiser import data, evaluate, ingest, registry, schema
from appraiser.config import DEFAULT_TIMEOUT, DEFAULT_TRIALS, RETRAIN_THRESHOLD, settings
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


def feedback_stones() -> pd.DataFrame:
    """Stones priced by an expert after an appraisal (the latest price per appraisal), validated.

    They join the training stones of the next retrain, never the reference holdout.
    """
    import json

    from sqlalchemy import select

    from appraiser import store

    engine = store.ready()
    query = (
        select(store.Appraisal.id, store.Appraisal.input, store.Feedback.price)
        .join(store.Feedback, store.Feedback.appraisal_id == store.Appraisal.id)
        .order_by(store.Feedback.id)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    if not rows:
        return pd.DataFrame(columns=list(schema.COLUMNS))
    latest = {appraisal: (text, price) for appraisal, text, price in rows}
    frame = pd.DataFrame(
        [{**json.loads(text), schema.TARGET: price} for text, price in latest.values()]
    )
    return data.validate(frame.astype(str), dedupe=False, source="feedback").clean


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
    fit_part = pd.concat([stones.loc[~held, columns], feedback_stones()], ignore_index=True)
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


# --- one pass of the automated pipeline, and the folder watcher ----------------------------------

DRIFT_KS = 0.1  # a numeric feature drifts when the KS statistic passes this (and p < 0.01)
DRIFT_PSI = 0.2  # a grade drifts when its population stability index passes this
INBOX_SUFFIXES = (".csv", ".parquet", ".pq")


class PipelineBusy(RuntimeError):
    """Another pipeline pass holds the lock."""


def drift_report(new: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Each feature of new stones against the training stones: KS for numbers, PSI for grades."""
    from scipy.stats import ks_2samp

    rows = []
    for column in schema.NUMERIC_FEATURES:
        test = ks_2samp(new[column], reference[column])
        drifted = bool(test.statistic > DRIFT_KS and test.pvalue < 0.01)
        rows.append(
            {
                "feature": column,
                "test": "KS",
                "statistic": float(test.statistic),
                "p_value": float(test.pvalue),
                "drift": drifted,
            }
        )
    for column, order in schema.GRADES.items():
        expected = reference[column].value_counts(normalize=True).reindex(order, fill_value=0)
        actual = new[column].value_counts(normalize=True).reindex(order, fill_value=0)
        e, a = expected.clip(lower=1e-4), actual.clip(lower=1e-4)
        psi = float(((a - e) * np.log(a / e)).sum())
        rows.append(
            {
                "feature": column,
                "test": "PSI",
                "statistic": psi,
                "p_value": float("nan"),
                "drift": psi > DRIFT_PSI,
            }
        )
    return pd.DataFrame(rows)


def log_drift(drift: pd.DataFrame, new_stones: int) -> str:
    """Record a drift report as an MLflow run (kind=drift): one metric per feature, the table."""
    import mlflow

    registry.use_experiment()
    with mlflow.start_run(run_name="drift check") as run:
        mlflow.set_tags({"kind": "drift", "drift": str(bool(drift["drift"].any()))})
        mlflow.log_param("new_stones", new_stones)
        mlflow.log_metrics(
            {f"drift_{r.feature}_{r.test.lower()}": r.statistic for r in drift.itertuples()}
        )
        mlflow.log_text(drift.to_csv(index=False), "drift.csv")
    return str(run.info.run_id)


def _champion_max_batch() -> int:
    """The newest store batch the champion was trained with (0 when it did not come from it)."""
    version = registry.champion_version()
    if version is None:
        return 0
    mv = registry.client().get_model_version(registry.REGISTERED_MODEL, version)
    run = registry.client().get_run(mv.run_id) if mv.run_id else None
    return int(run.data.tags.get("store_max_batch", 0)) if run else 0


@dataclass
class PassReport:
    """What one pipeline pass did, for people and for logs."""

    ingested: list[ingest.IngestReport]
    failed: list[tuple[str, str]]
    new_stones: int
    drift: pd.DataFrame | None
    retrain_reason: str | None
    result: TrainResult | None


def _lock_path() -> Path:
    home = settings().home
    home.mkdir(parents=True, exist_ok=True)
    return home / "pipeline.lock"


def _move(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists():  # never overwrite an earlier file of the same name
        target = folder / f"{path.stem}.{int(time.time() * 1000)}{path.suffix}"
    return Path(shutil.move(str(path), target))


def ingest_inbox(
    inbox: Path, source: str = "inbox"
) -> tuple[list[ingest.IngestReport], list[tuple[str, str]]]:
    """Ingest every file in the inbox; move each to processed/ or failed/ (with a .reason.txt)."""
    reports, failed = [], []
    for path in sorted(p for p in inbox.iterdir() if p.suffix.lower() in INBOX_SUFFIXES):
        try:
            reports.append(ingest.ingest_file(path, source=source))
            _move(path, inbox / "processed")
        except data.DataError as exc:
            moved = _move(path, inbox / "failed")
            moved.with_name(moved.name + ".reason.txt").write_text(
                f"{exc}\nNothing of this file was stored: fix it and drop it in the inbox again.\n"
            )
            failed.append((path.name, str(exc)))
    return reports, failed


BUSY = "another pipeline pass is running; try again when it ends"
# the key of the PostgreSQL advisory lock (any 64-bit number, the same for every process)
ADVISORY_LOCK_KEY = 0x41505052414953  # "APPRAIS"


@contextmanager
def exclusive() -> Iterator[None]:
    """Hold the pipeline's lock or raise PipelineBusy at once, so two retrains never overlap.

    Passes, API retrain jobs and watchers take it. With a PostgreSQL store it is an advisory lock
    in the database, which holds across machines (and is released if the holder dies); with
    SQLite, a lock file under APPRAISER_HOME, which holds on one machine.
    """
    from sqlalchemy import text

    from appraiser import store

    engine = store.ready()
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            key = {"key": ADVISORY_LOCK_KEY}
            got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), key).scalar()
            # a session lock outlives the transaction: end it, so the connection does not sit
            # idle in a transaction for the whole retrain (servers may kill such sessions)
            conn.commit()
            if not got:
                raise PipelineBusy(BUSY)
            try:
                yield
            finally:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), key)
                    conn.commit()
                except Exception:  # the session is gone: so is its lock
                    pass
        return
    with _lock_path().open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise PipelineBusy(BUSY) from exc
        yield


def run_pass(
    inbox: Path | None = None,
    *,
    threshold: int = RETRAIN_THRESHOLD,
    trials: int = DEFAULT_TRIALS,
    timeout: float = DEFAULT_TIMEOUT,
    policy: GatePolicy | None = None,
    show_progress: bool = True,
) -> PassReport:
    """Ingest the inbox, check drift, retrain when enough new stones arrived or drift is strong.

    A lock file under APPRAISER_HOME keeps two passes (and so two retrains) from running at once.
    """
    with exclusive():
        reports, failed = ingest_inbox(inbox) if inbox is not None else ([], [])
        stones = ingest.accepted_stones()
        new = stones[stones["batch_id"] > _champion_max_batch()]
        drift, reason = None, None
        if registry.champion_version() is None:
            reason = "no champion yet"
        else:
            _, champion = registry.load_version()
            if len(new):
                drift = drift_report(new, champion.reference)
                log_drift(drift, len(new))
            if len(new) >= threshold:
                reason = f"{len(new):,} new stones since the champion's training (>= {threshold:,})"
            elif drift is not None and drift["drift"].any() and len(new) >= MIN_STONES:
                reason = "drift in " + ", ".join(drift.loc[drift["drift"], "feature"])
        result = None
        if reason is not None and len(stones) >= MIN_STONES:
            result = retrain(
                trials=trials, timeout=timeout, policy=policy, show_progress=show_progress
            )
        return PassReport(reports, failed, len(new), drift, reason, result)


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
        if any(p.suffix.lower() in INBOX_SUFFIXES for p in inbox.iterdir()):
            report = run_pass(inbox, **options)
            if on_pass is not None:
                on_pass(report)
            done += 1
        else:
            time.sleep(interval)
