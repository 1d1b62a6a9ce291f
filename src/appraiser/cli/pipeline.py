"""`appraiser pipeline run` (one pass, for a scheduler) and `watch` (a folder, continuously):
ingest, screen, check drift, retrain when due."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from appraiser.cli.options import Json, Margin, SliceTolerance, Threshold, Timeout, Trials, policy
from appraiser.cli.render import console, err, fail, labelled, literal, print_decision, print_json
from appraiser.config import DEFAULT_TIMEOUT, DEFAULT_TRIALS, RETRAIN_THRESHOLD

if TYPE_CHECKING:
    from appraiser.pipeline import PassReport

pipeline_app = typer.Typer(help="The automated pipeline: ingest, check drift, retrain when due.")


def print_pass(report: PassReport) -> None:
    """A pass in words: files taken or refused, held batches, warnings, and the retrain's outcome
    (`pipeline run`, and each pass of `watch`)."""
    for done in report.ingested:
        console.print(literal(done.summary()))
        if done.screening is not None:
            console.print(literal(f"  {done.screening.summary()}"))
    for name, why in report.failed:
        err.print(labelled("refused", "bold red", f"{name}: {why} (moved to failed/)"))
    for batch in report.held:
        err.print(
            labelled(
                "held",
                "bold yellow",
                f"batch {batch['id']} ({batch['file_name']}): {batch['status_reason']}; "
                f"`appraiser batches release|drop {batch['id']}`",
            )
        )
    for signal in report.signals:
        err.print(labelled("warning", "yellow", signal))
    if report.drift is not None and report.drift["drift"].any():
        drifted = ", ".join(report.drift.loc[report.drift["drift"], "feature"])
        err.print(
            labelled(
                "warning", "yellow", f"the new stones drift from the training data in {drifted}"
            )
        )
    if report.sealed is not None:
        console.print(
            f"Champion v{report.sealed['version']} on the sealed set: MAPE "
            f"{report.sealed['mape']:.2f}% on {report.sealed['stones']:,} stones"
        )
    if report.result is None:
        said = report.note or "nothing calls for a retrain"
        console.print(
            literal(
                f"{report.new_stones:,} new stones, {report.new_feedback:,} expert prices since "
                f"the last retrain: {said}."
            )
        )
        return
    console.print(literal(f"Retrained ({report.retrain_reason})."))
    print_decision(report.result)


@pipeline_app.command("run")
def pipeline_run(
    inbox: Annotated[Path | None, typer.Option(help="folder of new files to ingest first")] = None,
    threshold: Threshold = RETRAIN_THRESHOLD,
    trials: Trials = DEFAULT_TRIALS,
    timeout: Timeout = DEFAULT_TIMEOUT,
    margin: Margin = 0.0,
    slice_tolerance: SliceTolerance = 1.0,
    as_json: Json = False,
) -> None:
    """One pass, for cron, systemd or Cloud Run: ingest, screen, check drift, retrain if due.

    Exits 0 when the pass did its job, also when another pass was running (nothing to do: the
    running one or the next takes the files) and when a file was refused (it is moved to failed/
    with its reason, and the rest of the inbox is taken): a scheduler alerts on exit statuses,
    and neither is a failure of this pass. Exits 1 when training or the registry failed."""
    from appraiser.locking import PipelineBusy
    from appraiser.pipeline import run_pass
    from appraiser.registry import RegistryError
    from appraiser.store import StoreOutdated
    from appraiser.train import TrainingError

    try:
        report = run_pass(
            inbox,
            threshold=threshold,
            trials=trials,
            timeout=timeout,
            policy=policy(margin, slice_tolerance),
            show_progress=not as_json,
        )
    except PipelineBusy as exc:
        if as_json:
            print_json({"busy": True, "message": str(exc)})
        else:
            console.print(labelled("Nothing done", "yellow", exc))
        return
    except (TrainingError, RegistryError, StoreOutdated) as exc:
        raise fail(str(exc)) from exc
    if as_json:
        print_json(report.to_dict())
    else:
        print_pass(report)


def watch(
    inbox: Annotated[Path, typer.Argument(help="the folder new appraisal files are dropped into")],
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between looks")] = 5.0,
    threshold: Threshold = RETRAIN_THRESHOLD,
) -> None:
    """Watch a folder: each new file is ingested and moved to processed/ or failed/."""
    from appraiser.pipeline import watch as watch_folder

    if not inbox.is_dir():
        raise fail(f"{inbox}: no such folder")
    console.print(literal(f"Watching {inbox} (Ctrl-C to stop) ..."))
    try:
        watch_folder(inbox, interval=interval, on_pass=print_pass, threshold=threshold)
    except KeyboardInterrupt:
        console.print("Stopped.")
