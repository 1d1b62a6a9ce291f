"""MLflow logging of a training run: parameters, metrics, artifacts, the decision, the version.

Everything a person needs to audit a model later is on its run: the data-quality report and the
rejected rows, the candidates' scores, the holdout metrics by slice with plots, the gate's decision
with every number it rests on (`decision.json`), and the keys of the stones it trained on.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd

from appraiser import data, evaluate, lineage, registry, schema
from appraiser.config import settings
from appraiser.gate import Decision

if TYPE_CHECKING:
    from appraiser.tuning import Fitted

FOLDS_PARAM = 5


@dataclass
class Logged:
    version: str
    run_id: str
    run_dir: Path


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


def decision_metrics(decision: Decision) -> dict[str, float]:
    """The decision's numbers as MLflow metrics (gate_*, forward_*)."""
    out: dict[str, float] = {}
    for prefix, comparison in (("gate", decision.comparison), ("forward", decision.forward)):
        if comparison is not None:
            for key in ("stones", "champion_mape", "challenger_mape", "improvement", "low", "high"):
                value = float(getattr(comparison, key))
                if np.isfinite(value):
                    out[f"{prefix}_{key}"] = value
            if comparison.fit_luck > 0:  # only the headline is widened for it
                out[f"{prefix}_fit_luck"] = comparison.fit_luck
    return out


def _runs_dir() -> Path:
    folder = settings().runs_dir
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def log_training(
    fitted: Fitted, validation: data.ValidationResult, decision: Decision, tags: dict[str, str]
) -> Logged:
    """Write the run's files, log the run and its model, register a new version (not promoted)."""
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=_runs_dir()))
    model_dir = fitted.final.save(run_dir / "model")
    for name, table in (
        ("rejected_rows", validation.rejected),
        ("quality_report", validation.report),
        ("candidates", fitted.candidates),
        ("slice_metrics", fitted.slices),
    ):
        data.formula_safe_frame(table).to_csv(run_dir / f"{name}.csv", index=False)
    (run_dir / "decision.json").write_text(json.dumps(decision.to_dict(), indent=2, default=str))
    pd.DataFrame(
        {"stone_key": np.unique(lineage.stone_keys(fitted.final_stones)).astype("uint64")}
    ).to_parquet(run_dir / "training_stone_keys.parquet", index=False)
    evaluate.plot_predictions(
        fitted.holdout[schema.TARGET],
        fitted.holdout_pred["price"],
        run_dir / "holdout_predictions.png",
        f"{fitted.model_name} on the holdout",
    )
    evaluate.plot_slices(fitted.slices, run_dir / "holdout_slices.png")
    batches = (
        sorted(int(b) for b in fitted.final_stones["batch_id"].dropna().unique())
        if "batch_id" in fitted.final_stones
        else []
    )

    registry.use_experiment()
    with mlflow.start_run(run_name=f"{tags.get('kind', 'train')} {fitted.model_name}") as run:
        mlflow.set_tags(
            {
                "data_source": fitted.source,
                "data_fingerprint": fitted.fingerprint,
                "lineage_batches": json.dumps(batches)[:5000],
                "decision": decision.reason[:5000],
                "promoted": "pending",
                **tags,
            }
        )
        mlflow.log_params(
            {
                "model": fitted.model_name,
                "weights": json.dumps(fitted.weights),
                "trials": fitted.trials,
                "timeout": fitted.timeout,
                "folds": FOLDS_PARAM,
                "holdout_rows": len(fitted.holdout),
                "training_stones": len(fitted.final_stones),
                "seed": fitted.seed,
                "registered_seeds": fitted.final.info["registered_seeds"],
                "data_rows_read": validation.total,
                "data_rows_accepted": len(validation.clean),
                "data_rows_rejected": len(validation.rejected),
                "interval_log_halfwidths": json.dumps([round(w, 4) for w in fitted.intervals]),
                **{
                    f"{n}_params": json.dumps(fitted.results[n].params)[:6000]
                    for n in fitted.weights
                },
            }
        )
        mlflow.log_metrics(
            {
                **_flat("holdout", fitted.holdout_metrics),
                **_flat("cv", fitted.cv),
                **_slice_metric_names(fitted.slices),
                **{f"candidate_{r.name}_cv_mape": r.cv["mape"] for r in fitted.results.values()},
                **decision_metrics(decision),
            }
        )
        for file in sorted(run_dir.glob("*.*")):
            mlflow.log_artifact(str(file))
        model_uri = registry.log_model(model_dir, fitted.holdout[list(schema.FEATURES)].head(5))
        version = registry.register(
            model_uri,
            run.info.run_id,
            f"{fitted.model_name}; holdout MAPE {fitted.holdout_metrics['mape']:.2f}%",
        )
    return Logged(version=version, run_id=run.info.run_id, run_dir=run_dir)


def record_outcome(run_id: str, promoted: bool, decision: str) -> None:
    """Tag the run with what finally happened (a compare-and-set may refuse a promotion)."""
    client = registry.client()
    client.set_tag(run_id, "promoted", str(promoted))
    client.set_tag(run_id, "decision", decision[:5000])


def log_metrics(run_id: str, metrics: dict[str, Any]) -> None:
    """Add metrics to a finished run (e.g. the sealed set's figures)."""
    client = registry.client()
    for key, value in metrics.items():
        if value is not None and np.isfinite(float(value)):
            client.log_metric(run_id, key, float(value))


def log_failure(kind: str, exc: BaseException) -> None:
    """A FAILED run tagged with the error: a crashed retrain is never mistaken for a quiet one."""
    registry.use_experiment()
    with mlflow.start_run(run_name=f"{kind} failed") as run:
        mlflow.set_tags({"kind": kind, "error": f"{type(exc).__name__}: {exc}"[:5000]})
    registry.client().set_terminated(run.info.run_id, status="FAILED")
