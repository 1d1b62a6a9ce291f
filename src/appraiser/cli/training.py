"""`appraiser train`, `evaluate` and `retrain`: fit candidates, measure the champion, and
train a challenger that replaces it only on evidence."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from appraiser import data, evaluate, schema
from appraiser.cli.options import Json, Margin, SliceTolerance, Timeout, Trials, policy
from appraiser.cli.render import (
    console,
    fail,
    literal,
    metrics_table,
    print_decision,
    print_json,
    report_table,
    slices_table,
)
from appraiser.config import DEFAULT_TIMEOUT, DEFAULT_TRIALS


def train(
    data_path: Annotated[
        Path | None,
        typer.Option(
            "--data", help="CSV or Parquet of priced stones; default: the public diamonds table"
        ),
    ] = None,
    trials: Trials = DEFAULT_TRIALS,
    timeout: Timeout = DEFAULT_TIMEOUT,
    candidate: Annotated[
        list[str] | None,
        typer.Option("--candidate", "-c", help="train only these candidates (repeatable)"),
    ] = None,
    if_no_champion: Annotated[bool, typer.Option(help="do nothing when a champion exists")] = False,
) -> None:
    """Validate -> tune and train the candidates -> evaluate -> register; promote if better."""
    from appraiser import audit, champion, registry
    from appraiser.train import TrainingError
    from appraiser.train import train as run_training

    try:
        version = champion.current()
    except registry.RegistryError as exc:
        raise fail(str(exc)) from exc
    if if_no_champion and version is not None:
        console.print(
            f"Champion v{version} exists; not training (drop --if-no-champion to retrain)."
        )
        return
    console.print(literal(f"Training on {data_path or data.PUBLIC_TABLE} ..."))
    try:
        result = run_training(
            data_path,
            trials=trials,
            timeout=timeout,
            candidates=candidate,
            actor=audit.cli_actor(),
        )
    except (data.DataError, TrainingError) as exc:
        raise fail(str(exc)) from exc
    console.print(report_table(result.validation))
    if len(result.validation.rejected):
        console.print(
            literal(f"Rejected rows with their reasons: {result.run_dir / 'rejected_rows.csv'}")
        )
    cand = Table(title="Candidates (5-fold CV on 80% of the stones)")
    for col in ("candidate", "CV MAPE %", "within ±10% %", "trials", "seconds"):
        cand.add_column(col, justify="left" if col == "candidate" else "right")
    for row in result.candidates.itertuples():
        cand.add_row(
            str(row.candidate),
            f"{row.cv_mape:.2f}",
            f"{row.cv_within_10:.1f}",
            str(row.trials),
            f"{row.seconds:.0f}",
        )
    console.print(cand)
    console.print(
        metrics_table(f"{result.model_name} on the 20% holdout", {"holdout": result.holdout})
    )
    verdict = (
        ("is now champion", "bold green") if result.champion else ("is not champion", "yellow")
    )
    console.print(
        Text.assemble(
            f"Model version {result.version} ", verdict, ": ", literal(result.decision), "."
        )
    )
    console.print(
        literal(f"Run {result.run_id} in {result.seconds:.0f} s; artifacts in {result.run_dir}")
    )


def evaluate_cmd(
    data_path: Annotated[
        Path | None,
        typer.Option("--data", help="labelled CSV or Parquet; default: the public table"),
    ] = None,
) -> None:
    """Measure the champion on a labelled file: metrics and slices."""
    from appraiser.predict import Appraiser
    from appraiser.registry import RegistryError

    try:
        appraiser = Appraiser.champion()
        checked = data.load(data_path)
    except (RegistryError, data.DataError) as exc:
        raise fail(str(exc)) from exc
    predictions = appraiser.price(checked.clean)
    metrics = evaluate.metrics(
        checked.clean[schema.TARGET],
        predictions["price"],
        predictions["price_low"],
        predictions["price_high"],
    )
    console.print(report_table(checked))
    console.print(
        metrics_table(
            f"Champion v{appraiser.version} on {data_path or data.PUBLIC_TABLE}", {"value": metrics}
        )
    )
    console.print(slices_table(evaluate.slice_metrics(checked.clean, predictions)))


def retrain(
    trials: Trials = DEFAULT_TRIALS,
    timeout: Timeout = DEFAULT_TIMEOUT,
    margin: Margin = 0.0,
    slice_tolerance: SliceTolerance = 1.0,
    as_json: Json = False,
) -> None:
    """Train a challenger on the store's stones; it replaces the champion only on evidence."""
    from appraiser import audit
    from appraiser.locking import PipelineBusy
    from appraiser.pipeline import retrain as run_retrain
    from appraiser.registry import RegistryError
    from appraiser.train import TrainingError

    audit.record(audit.cli_actor(), "retrain_started", trials=trials, timeout=timeout)
    try:
        result = run_retrain(
            trials=trials,
            timeout=timeout,
            policy=policy(margin, slice_tolerance),
            show_progress=not as_json,
            actor=audit.cli_actor(),
        )
    except (TrainingError, PipelineBusy, RegistryError) as exc:
        raise fail(str(exc)) from exc
    if as_json:
        print_json(result.to_dict())
        return
    console.print(metrics_table(f"{result.model_name} out of fold", {"challenger": result.holdout}))
    print_decision(result)
