"""The `appraiser` command: thin Typer commands over the same functions the API calls."""

from __future__ import annotations

import enum
import functools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import pandas as pd
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from appraiser import data, evaluate, schema
from appraiser.config import DEFAULT_TIMEOUT, DEFAULT_TRIALS, RETRAIN_THRESHOLD

if TYPE_CHECKING:
    from appraiser.gate import GatePolicy
    from appraiser.pipeline import PassReport
    from appraiser.train import TrainResult

app = typer.Typer(
    help="Diamond Appraiser: prices diamonds, says why, and keeps its model sharp.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Model versions, their metrics, and which one is champion.")
app.add_typer(models_app, name="models")
pipeline_app = typer.Typer(help="The automated pipeline: ingest, check drift, retrain when due.")
app.add_typer(pipeline_app, name="pipeline")
batches_app = typer.Typer(help="Ingested batches; release or drop the ones held for review.")
app.add_typer(batches_app, name="batches")
feedback_app = typer.Typer(help="Experts' prices: send, and review them before they teach.")
app.add_typer(feedback_app, name="feedback")
keys_app = typer.Typer(help="API keys with roles (staff, expert, admin); only hashes are kept.")
app.add_typer(keys_app, name="keys")
db_app = typer.Typer(help="The store's schema: migrate it once per deploy, or check it is current.")
app.add_typer(db_app, name="db")
console = Console()
err = Console(stderr=True)

# options several commands share
Trials = Annotated[int, typer.Option(min=1, help="Optuna trials per tuned candidate")]
Timeout = Annotated[float, typer.Option(min=1, help="seconds of tuning in all")]
Threshold = Annotated[int, typer.Option(min=1, help="new stones that call for a retrain")]


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def validation_message(exc: ValidationError) -> str:
    """One line per problem, each naming the field and the rule it breaks."""
    return schema.error_message(list(exc.errors()))


def _metrics_table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    for name in rows:
        table.add_column(name, justify="right")
    formats = {"mae": "{:,.0f}", "rmse": "{:,.0f}", "r2": "{:.3f}"}
    keys = [k for k in evaluate.METRIC_LABELS if any(k in r for r in rows.values())]
    for key in keys:
        shape = formats.get(key, "{:.2f}")
        cells = [shape.format(r[key]) if key in r else "" for r in rows.values()]
        table.add_row(evaluate.METRIC_LABELS[key], *cells)
    return table


def _report_table(validation: data.ValidationResult) -> Table:
    table = Table(title=f"Data quality: {validation.summary()}")
    table.add_column("reason rows were rejected")
    table.add_column("rows", justify="right")
    for row in validation.report.itertuples():
        table.add_row(str(row.reason), f"{row.rows:,}")
    if validation.report.empty:
        table.add_row("(none: every row is valid)", "0")
    return table


def _slices_table(slices: pd.DataFrame) -> Table:
    table = Table(title="By slice (holdout)")
    for col in ("slice", "value", "stones", "MAPE %", "within ±10% %", "in range %"):
        table.add_column(col, justify="left" if col in ("slice", "value") else "right")
    for row in slices.itertuples():
        table.add_row(
            str(row.slice),
            str(row.value),
            f"{row.stones:,}",
            f"{row.mape:.2f}",
            f"{row.within_10:.1f}",
            f"{getattr(row, 'coverage', float('nan')):.1f}",
        )
    return table


@app.command()
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
    from appraiser import registry
    from appraiser.train import TrainingError
    from appraiser.train import train as run_training

    try:
        version = registry.champion_version()
    except registry.RegistryError as exc:
        raise fail(str(exc)) from exc
    if if_no_champion and version is not None:
        console.print(
            f"Champion v{version} exists; not training (drop --if-no-champion to retrain)."
        )
        return
    console.print(f"Training on {data_path or data.PUBLIC_TABLE} ...")
    try:
        result = run_training(data_path, trials=trials, timeout=timeout, candidates=candidate)
    except (data.DataError, TrainingError) as exc:
        raise fail(str(exc)) from exc
    console.print(_report_table(result.validation))
    if len(result.validation.rejected):
        console.print(f"Rejected rows with their reasons: {result.run_dir / 'rejected_rows.csv'}")
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
        _metrics_table(f"{result.model_name} on the 20% holdout", {"holdout": result.holdout})
    )
    verdict = "[bold green]is now champion[/]" if result.champion else "[yellow]is not champion[/]"
    console.print(f"Model version {result.version} {verdict}: {result.decision}.")
    console.print(f"Run {result.run_id} in {result.seconds:.0f} s; artifacts in {result.run_dir}")


@app.command()
def predict(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="CSV or Parquet of stones")],
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV to write")],
) -> None:
    """Price every stone of a file; bad rows get a message in an `error` column."""
    from appraiser.model_cache import RegistryError
    from appraiser.predict import Appraiser, boosters_without_estimators

    # the cached champion, without importing MLflow; a command that only scores and exits, so
    # the boosters may load without their scikit-learn estimator classes, at the load or when
    # first asked to predict (models.LazyBooster)
    with boosters_without_estimators():
        try:
            appraiser = Appraiser.for_scoring()
        except RegistryError as exc:
            raise fail(str(exc)) from exc
        total = None
        if input_path.suffix.lower() == ".csv" and input_path.exists():
            with input_path.open("rb") as fh:
                total = max(sum(1 for _ in fh) - 1, 0)
        with Progress(
            TextColumn("scoring"),
            BarColumn(),
            TextColumn("{task.completed:,} rows"),
            TimeRemainingColumn(),
            console=err,
        ) as progress:
            task = progress.add_task("scoring", total=total)
            try:
                summary = appraiser.score_file(
                    input_path, output, lambda n: progress.advance(task, n)
                )
            except data.DataError as exc:
                raise fail(str(exc)) from exc
    console.print(
        f"{summary.rows:,} rows: {summary.priced:,} priced, {summary.errors:,} with an "
        f"error (see the `error` column) -> {output} (model v{appraiser.version})"
    )


@app.command(name="evaluate")
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
    console.print(_report_table(checked))
    console.print(
        _metrics_table(
            f"Champion v{appraiser.version} on {data_path or data.PUBLIC_TABLE}", {"value": metrics}
        )
    )
    console.print(_slices_table(evaluate.slice_metrics(checked.clean, predictions)))


@app.command()
def ingest(
    files: Annotated[
        list[str] | None,
        typer.Argument(metavar="FILE...", help="CSV/Parquet paths or URLs (gs://, s3://, ...)"),
    ] = None,
    source: Annotated[
        str, typer.Option(help="where the data comes from, kept with each batch")
    ] = "file",
    sql: Annotated[
        str | None, typer.Option(help="a SQL query whose rows are priced stones")
    ] = None,
    database: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL the --sql query runs on")
    ] = None,
) -> None:
    """Validate priced stones and keep them in the store (each file once, atomically)."""
    from appraiser.ingest import IngestReport, ingest_query
    from appraiser.ingest import ingest as ingest_location

    if not files and not sql:
        raise fail("name at least one FILE, or a --sql query with its --database", code=2)
    if sql and not database:
        raise fail("--sql needs --database (a SQLAlchemy URL)", code=2)
    jobs: list[tuple[str, Callable[[], IngestReport]]] = [
        (f, functools.partial(ingest_location, f, source=source)) for f in files or []
    ]
    if sql and database:
        jobs.append((sql, functools.partial(ingest_query, sql, database, source=source)))
    failed = 0
    for name, job in jobs:
        try:
            report = job()
        except data.DataError as exc:
            err.print(f"[bold red]refused:[/] {exc} (nothing stored from {name})")
            failed += 1
            continue
        console.print(report.summary())
        for reason, rows in sorted(report.reasons.items(), key=lambda kv: -kv[1]):
            console.print(f"  {rows:>7,}  {reason}")
        if report.screening is not None:
            style = "bold yellow" if report.held else "dim"
            console.print(f"  [{style}]{report.screening.summary()}[/]")
    if failed:
        raise typer.Exit(1)


@app.command()
def rejected(
    batch: Annotated[int | None, typer.Option(help="only this batch")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write them to this CSV")
    ] = None,
) -> None:
    """List (or export) the rejected rows kept in the store, with their file lines and reasons."""
    from appraiser.ingest import rejected as rejected_rows

    rows = rejected_rows(batch)
    if output is not None:
        rows.to_csv(output, index=False)
        console.print(f"{len(rows):,} rejected rows -> {output}")
        return
    table = Table(title=f"{len(rows):,} rejected rows" + (f" of batch {batch}" if batch else ""))
    for col in ("batch_id", "line", "reasons"):
        table.add_column(col)
    for row in rows.head(200).itertuples():
        table.add_row(str(row.batch_id), str(row.line), str(row.reasons))
    console.print(table)
    if len(rows) > 200:
        console.print("(first 200 shown; use --output FILE for all of them)")


Json = Annotated[bool, typer.Option("--json", help="print one JSON object for scripts")]


class BatchStatus(enum.StrEnum):
    accepted = "accepted"
    held = "held"
    dropped = "dropped"


def _print_json(value: object) -> None:
    """JSON on stdout, nothing else (progress and warnings go to stderr); NaN becomes null."""
    typer.echo(json.dumps(_finite(value), indent=2, default=str, allow_nan=False))


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _policy(margin: float, slice_tolerance: float) -> GatePolicy:
    from appraiser.gate import GatePolicy

    return GatePolicy(margin=margin, slice_tolerance=slice_tolerance)


Margin = Annotated[
    float,
    typer.Option(
        min=0, help="points of MAPE the improvement's lower 95% bound must pass (default 0)"
    ),
]
SliceTolerance = Annotated[
    float,
    typer.Option(min=0, help="points of MAPE a slice may lose before it can block promotion"),
]


def _print_decision(result: TrainResult) -> None:
    decision = result.gate
    if decision is not None and decision.checks:
        table = Table(
            title=f"The gate: {decision.judged_on.get('stones', 0):,} stones neither "
            "model trained on"
        )
        for col in ("check", "passed", "detail"):
            table.add_column(col)
        for check in decision.checks:
            table.add_row(check.name, "yes" if check.passed else "[red]no[/]", check.detail)
        console.print(table)
    verdict = (
        "[bold green]promoted to champion[/]" if result.champion else "[yellow]not promoted[/]"
    )
    console.print(f"Challenger v{result.version} {verdict}: {result.decision}.")


@app.command()
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
            policy=_policy(margin, slice_tolerance),
            show_progress=not as_json,
            actor=audit.cli_actor(),
        )
    except (TrainingError, PipelineBusy, RegistryError) as exc:
        raise fail(str(exc)) from exc
    if as_json:
        _print_json(result.to_dict())
        return
    console.print(
        _metrics_table(
            f"{result.model_name} on the reference stones", {"challenger": result.holdout}
        )
    )
    _print_decision(result)


@models_app.command("promote")
def promote_cmd(
    version: Annotated[str, typer.Argument(help="the version to serve")],
    expect: Annotated[
        str | None,
        typer.Option(help="promote only if this version is champion now (compare-and-set)"),
    ] = None,
) -> None:
    """Make a version the champion (a person's decision, recorded as such)."""
    from appraiser import audit, champion
    from appraiser.locking import PipelineBusy
    from appraiser.registry import RegistryError

    try:
        before = champion.promote(
            version,
            actor=audit.cli_actor(),
            expected=champion.ANY if expect is None else expect.removeprefix("v"),
        )
    except (RegistryError, PipelineBusy) as exc:
        raise fail(str(exc)) from exc
    console.print(f"v{version} is now champion (was {'v' + before if before else 'none'}).")


@models_app.command("rollback")
def rollback_cmd() -> None:
    """Give the champion alias back to the champion the current one replaced."""
    from appraiser import audit, champion
    from appraiser.locking import PipelineBusy
    from appraiser.registry import RegistryError

    try:
        version = champion.rollback(actor=audit.cli_actor())
    except (RegistryError, PipelineBusy) as exc:
        raise fail(str(exc)) from exc
    console.print(f"Rolled back: v{version} is champion again.")


@models_app.command("sealed")
def sealed_cmd(as_json: Json = False) -> None:
    """The champion's error on the sealed stones over time (no decision ever reads them)."""
    from appraiser.pipeline import sealed_history

    history = sealed_history()
    if as_json:
        _print_json(history.to_dict(orient="records"))
        return
    if history.empty:
        console.print("No sealed-set measurement yet: the store needs stones and a champion.")
        return
    table = Table(title="Sealed set: MAPE of each champion on stones it never trained on")
    for col in ("when", "version", "stones", "MAPE %", "in range %"):
        table.add_column(col)
    for row in history.itertuples():
        table.add_row(
            f"{row.at:%Y-%m-%d %H:%M}",
            f"v{row.version}",
            f"{row.stones:,}",
            f"{row.mape:.2f}",
            f"{row.coverage:.1f}",
        )
    console.print(table)


@models_app.command("history")
def history_cmd(as_json: Json = False) -> None:
    """Every move of the champion, oldest first: who, when, from what, why."""
    from appraiser import champion

    moves = champion.history()
    if as_json:
        _print_json(moves)
        return
    table = Table(title="Champion history")
    for col in ("when", "version", "was", "kind", "by", "why"):
        table.add_column(col)
    for m in moves:
        table.add_row(
            f"{m['at']:%Y-%m-%d %H:%M}",
            f"v{m['version']}",
            f"v{m['previous']}" if m["previous"] else "",
            m["kind"],
            m["actor"],
            m["reason"][:200],
        )
    console.print(table)


def _print_pass(report: PassReport) -> None:
    for done in report.ingested:
        console.print(done.summary())
        if done.screening is not None:
            console.print(f"  {done.screening.summary()}")
    for name, why in report.failed:
        err.print(f"[bold red]refused:[/] {name}: {why} (moved to failed/)")
    for batch in report.held:
        err.print(
            f"[bold yellow]held:[/] batch {batch['id']} ({batch['file_name']}): "
            f"{batch['status_reason']}; `appraiser batches release|drop {batch['id']}`"
        )
    for signal in report.signals:
        err.print(f"[yellow]warning:[/] {signal}")
    if report.drift is not None and report.drift["drift"].any():
        drifted = ", ".join(report.drift.loc[report.drift["drift"], "feature"])
        err.print(f"[yellow]warning:[/] the new stones drift from the training data in {drifted}")
    if report.sealed is not None:
        console.print(
            f"Champion v{report.sealed['version']} on the sealed set: MAPE "
            f"{report.sealed['mape']:.2f}% on {report.sealed['stones']:,} stones"
        )
    if report.result is None:
        said = report.note or "nothing calls for a retrain"
        console.print(
            f"{report.new_stones:,} new stones, {report.new_feedback:,} expert prices since the "
            f"last retrain: {said}."
        )
        return
    console.print(f"Retrained ({report.retrain_reason}).")
    _print_decision(report.result)


@batches_app.callback(invoke_without_command=True)
def batches(
    ctx: typer.Context,
    status: Annotated[
        BatchStatus | None, typer.Option(help="only batches with this status")
    ] = None,
    as_json: Json = False,
) -> None:
    """The store's batches, newest first: status (held ones wait for review) and screening."""
    if ctx.invoked_subcommand is not None:
        return
    from appraiser.ingest import batches as list_batches

    found = list_batches(status=status.value if status else None)
    if as_json:
        _print_json(found)
        return
    table = Table(title="Batches")
    for col in ("batch", "received", "file", "accepted", "status", "champion's errors"):
        table.add_column(col)
    for b in found:
        screened = b["screening"]
        table.add_row(
            str(b["id"]),
            f"{b['received_at']:%Y-%m-%d %H:%M}",
            str(b["file_name"])[-40:],
            f"{b['rows_accepted']:,}",
            b["status"],
            screened["summary"] if screened else "(not screened: no champion then)",
        )
    console.print(table)


def _set_status(batch_id: int, status: str) -> None:
    from appraiser import audit
    from appraiser.ingest import set_batch_status

    try:
        before = set_batch_status(batch_id, status, actor=audit.cli_actor())
    except (KeyError, ValueError) as exc:
        raise fail(str(exc.args[0])) from exc
    console.print(f"Batch {batch_id}: {before} -> {status}.")


@batches_app.command("release")
def release_cmd(batch_id: Annotated[int, typer.Argument(help="a held batch")]) -> None:
    """Release a held batch: its stones train the next retrain."""
    _set_status(batch_id, "accepted")


@batches_app.command("drop")
def drop_cmd(
    batch_id: Annotated[int, typer.Argument(help="the batch to leave out for good")],
) -> None:
    """Drop a batch: kept in the store, never used for training or comparisons."""
    _set_status(batch_id, "dropped")


@feedback_app.command("send")
def feedback_send(
    appraisal_id: Annotated[
        str, typer.Argument(metavar="APPRAISAL_ID", help="printed by `explain` or the API")
    ],
    price: Annotated[float, typer.Argument(help="the expert's price, USD")],
) -> None:
    """Send an expert's price for a past appraisal: kept as pending until an admin approves it."""
    from appraiser import audit, feedback

    bound = schema.BOUNDS[schema.TARGET]
    if bound.violated(price):
        raise fail(f"price {bound.describe()}", code=2)
    try:
        sent = feedback.submit(appraisal_id, price, actor=audit.cli_actor())
    except KeyError as exc:
        raise fail(f"no appraisal with id {appraisal_id} (ids are printed by `explain`)") from exc
    except feedback.FeedbackRefused as exc:
        raise fail(str(exc)) from exc
    console.print(
        f"Expert price {sent['id']} kept as pending: ${price:,.0f} for appraisal {appraisal_id}"
        + (f" (flagged: {sent['flag']})" if sent["flag"] else "")
        + f". `appraiser feedback approve {sent['id']}` lets it teach the model."
    )


class ReviewStatus(enum.StrEnum):
    pending = "pending"
    approved = "approved"
    rejected = "rejected"


@feedback_app.command("list")
def feedback_list(
    status: Annotated[
        ReviewStatus | None, typer.Option(help="only these (default: all)")
    ] = ReviewStatus.pending,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 200,
    as_json: Json = False,
) -> None:
    """Experts' prices and their review status, oldest first (default: the pending queue)."""
    from appraiser import feedback

    found = feedback.listing(status.value if status else None, limit)
    if as_json:
        print(json.dumps(found, default=str))
        return
    if not found:
        console.print("No expert prices" + (f" {status.value}." if status else "."))
        return
    table = Table("id", "appraisal", "model (range)", "expert's price", "expert", "status", "flag")
    for f in found:
        table.add_row(
            str(f["id"]),
            f["appraisal_id"],
            f"${f['appraised_price']:,.0f} "
            f"(${f['price_low'] or 0:,.0f}-${f['price_high'] or 0:,.0f})",
            f"${f['price']:,.0f}",
            str(f["expert"] or "(before review)"),
            f["status"],
            f["flag"] or "",
        )
    console.print(table)


def _review(feedback_id: int, approve: bool, note: str | None) -> None:
    from appraiser import audit, feedback

    try:
        done = feedback.review(feedback_id, approve=approve, actor=audit.cli_actor(), note=note)
    except (KeyError, feedback.FeedbackRefused) as exc:
        raise fail(str(exc.args[0])) from exc
    console.print(f"Expert price {feedback_id} (${done['price']:,.0f}): {done['status']}.")


Note = Annotated[str | None, typer.Option(help="why, for the audit trail")]


@feedback_app.command("approve")
def feedback_approve(
    feedback_id: Annotated[int, typer.Argument(help="from `appraiser feedback list`")],
    note: Note = None,
) -> None:
    """Approve an expert's price: the next retrain learns from it."""
    _review(feedback_id, True, note)


@feedback_app.command("reject")
def feedback_reject(
    feedback_id: Annotated[int, typer.Argument(help="from `appraiser feedback list`")],
    note: Note = None,
) -> None:
    """Reject an expert's price: kept, never used."""
    _review(feedback_id, False, note)


class Role(enum.StrEnum):
    staff = "staff"
    expert = "expert"
    admin = "admin"


@keys_app.command("create")
def keys_create(
    role: Annotated[
        Role, typer.Option(help="staff: appraise; expert: also send prices; admin: all")
    ],
    name: Annotated[str, typer.Option(help="who holds it (unique)")],
) -> None:
    """Make an API key. It is printed once, on the last line: only its hash is kept."""
    from appraiser import audit, auth

    try:
        key = auth.create_key(name, role.value, actor=audit.cli_actor())
    except auth.KeyRefused as exc:
        raise fail(str(exc)) from exc
    err.print(f"Key {name!r} ({role.value}) made; it is shown once, below:")
    print(key)


@keys_app.command("list")
def keys_list(as_json: Json = False) -> None:
    """Every key made, active or revoked (never the keys themselves)."""
    from appraiser import auth

    found = auth.list_keys()
    if as_json:
        print(json.dumps(found, default=str))
        return
    table = Table("name", "role", "starts with", "made", "by", "revoked")
    for k in found:
        table.add_row(
            k["name"],
            k["role"],
            k["prefix"],
            str(k["created_at"])[:19],
            k["created_by"],
            str(k["revoked_at"])[:19] if k["revoked_at"] else "",
        )
    console.print(table if found else "No keys yet: `appraiser keys create --role ROLE --name N`.")


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="the key's name")]) -> None:
    """Revoke a key: refused at once here, within seconds by running servers."""
    from appraiser import audit, auth

    try:
        auth.revoke_key(name, actor=audit.cli_actor())
    except auth.KeyRefused as exc:
        raise fail(str(exc)) from exc
    console.print(f"Key {name!r} revoked.")


@app.command("audit")
def audit_cmd(
    action: Annotated[str | None, typer.Option(help="only this kind of action")] = None,
    actor: Annotated[str | None, typer.Option(help="only this key's name (or cli:USER)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 50,
    as_json: Json = False,
) -> None:
    """The audit trail, newest first: who did what, when."""
    from appraiser import audit

    if action is not None and action not in audit.ACTIONS:
        raise fail(f"--action: one of {', '.join(audit.ACTIONS)}", code=2)
    found = audit.events(limit=limit, action=action, actor=actor)
    if as_json:
        print(json.dumps(found, default=str))
        return
    table = Table("at", "actor", "action", "details")
    for e in found:
        details = json.dumps(e["details"], default=str)
        table.add_row(str(e["at"])[:19], e["actor"], e["action"], details)
    console.print(table if found else "Nothing in the audit trail yet.")


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
            policy=_policy(margin, slice_tolerance),
            show_progress=not as_json,
        )
    except PipelineBusy as exc:
        if as_json:
            _print_json({"busy": True, "message": str(exc)})
        else:
            console.print(f"[yellow]Nothing done:[/] {exc}")
        return
    except (TrainingError, RegistryError, StoreOutdated) as exc:
        raise fail(str(exc)) from exc
    if as_json:
        _print_json(report.to_dict())
    else:
        _print_pass(report)


@app.command()
def watch(
    inbox: Annotated[Path, typer.Argument(help="the folder new appraisal files are dropped into")],
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between looks")] = 5.0,
    threshold: Threshold = RETRAIN_THRESHOLD,
) -> None:
    """Watch a folder: each new file is ingested and moved to processed/ or failed/."""
    from appraiser.pipeline import watch as watch_folder

    if not inbox.is_dir():
        raise fail(f"{inbox}: no such folder")
    console.print(f"Watching {inbox} (Ctrl-C to stop) ...")
    try:
        watch_folder(inbox, interval=interval, on_pass=_print_pass, threshold=threshold)
    except KeyboardInterrupt:
        console.print("Stopped.")


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, as_json: Json = False) -> None:
    """List the model versions with their metrics; the champion is starred."""
    if ctx.invoked_subcommand is not None:
        return
    from appraiser import registry

    try:
        infos = registry.versions()
    except registry.RegistryError as exc:
        raise fail(str(exc)) from exc
    if as_json:
        _print_json(
            [
                {
                    "version": v.version,
                    "champion": v.champion,
                    "created": v.created.isoformat(),
                    "model": v.model,
                    "run_id": v.run_id,
                    "metrics": v.metrics,
                    "gate": v.gate,
                    "sealed": v.sealed,
                    "description": v.description,
                }
                for v in infos
            ]
        )
        return
    if not infos:
        console.print("No model yet: run `appraiser train`.")
        return
    table = Table(title="Registered models (holdout: each run's own; sealed: never decided on)")
    columns = (
        "version",
        "champion",
        "created",
        "model",
        "holdout MAPE %",
        "in range %",
        "sealed MAPE %",
        "gate",
    )
    for col in columns:
        table.add_column(col)
    for v in infos:
        m = v.metrics
        gate = v.gate or {}
        table.add_row(
            v.version,
            "*" if v.champion else "",
            f"{v.created:%Y-%m-%d %H:%M}",
            v.model,
            f"{m.get('mape', float('nan')):.2f}",
            f"{m.get('coverage', float('nan')):.1f}",
            f"{v.sealed['mape']:.2f}" if v.sealed else "",
            (
                f"{gate['improvement']:+.2f} ({gate['low']:+.2f}..{gate['high']:+.2f}) "
                f"n={int(gate['stones']):,}"
                if "improvement" in gate
                else ""
            ),
        )
    console.print(table)


@app.command(name="explain")
def explain_cmd(
    carat: Annotated[float, typer.Option(help=schema.DESCRIPTIONS["carat"])],
    cut: Annotated[str, typer.Option(help=schema.DESCRIPTIONS["cut"])],
    color: Annotated[str, typer.Option(help=schema.DESCRIPTIONS["color"])],
    clarity: Annotated[str, typer.Option(help=schema.DESCRIPTIONS["clarity"])],
    depth: Annotated[float, typer.Option(help=schema.DESCRIPTIONS["depth"])],
    table: Annotated[float, typer.Option(help=schema.DESCRIPTIONS["table"])],
    x: Annotated[float, typer.Option(help=schema.DESCRIPTIONS["x"])],
    y: Annotated[float, typer.Option(help=schema.DESCRIPTIONS["y"])],
    z: Annotated[float, typer.Option(help=schema.DESCRIPTIONS["z"])],
    comparables: Annotated[int, typer.Option(min=0, max=50, help="how many comparable stones")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
) -> None:
    """Price one stone and say why: range, dollar contributions, comparable stones."""
    from appraiser.predict import Appraiser
    from appraiser.registry import RegistryError

    try:
        stone = schema.Diamond(
            carat=carat,
            cut=cut,
            color=color,
            clarity=clarity,
            depth=depth,
            table=table,
            x=x,
            y=y,
            z=z,
        )
    except ValidationError as exc:
        raise fail(validation_message(exc), code=2) from exc
    try:
        appraiser = Appraiser.champion()
    except RegistryError as exc:
        raise fail(str(exc)) from exc
    result = appraiser.explain(stone, comparables)
    from appraiser import store

    appraisal_id = store.record_appraisal(
        stone.model_dump(),
        result.price,
        price_low=result.price_low,
        price_high=result.price_high,
        model_version=appraiser.version,
    )
    if as_json:
        payload = {**result.as_dict(), "model_version": appraiser.version, "id": appraisal_id}
        console.print_json(json.dumps(payload, default=str))
        return
    console.print(
        f"[bold]${result.price:,.0f}[/]  (90% range ${result.price_low:,.0f} to "
        f"${result.price_high:,.0f}; model v{appraiser.version})"
    )
    console.print(
        f"Appraisal {appraisal_id}: an expert's price for it can be given with "
        f"`appraiser feedback send {appraisal_id} PRICE`."
    )
    stone_dict = result.stone
    shown = {
        "size": f"{stone_dict['carat']:g} ct, {stone_dict['x']:g} x {stone_dict['y']:g} x "
        f"{stone_dict['z']:g} mm",
        "proportions": f"depth {stone_dict['depth']:g}%, table {stone_dict['table']:g}%",
        **{g: str(stone_dict[g]) for g in schema.GRADE_COLUMNS},
    }
    why = Table(title="Why: dollars each reason adds to the average stone's price")
    why.add_column("")
    why.add_column("value")
    why.add_column("$", justify="right")
    why.add_column("one grade better / worse")
    why.add_row("average stone", "", f"{result.baseline:,.0f}", "")
    for name, dollars in sorted(result.contributions.items(), key=lambda kv: -abs(kv[1])):
        other = result.what_if.get(name, {})
        neighbours = " / ".join(
            f"{o['grade']} ${o['price']:,.0f}" if o else "-"
            for o in (other.get("better"), other.get("worse"))
        )
        why.add_row(name, shown[name], f"{dollars:+,.0f}", neighbours if other else "")
    why.add_row("[bold]price[/]", "", f"[bold]{result.price:,.0f}[/]", "")
    console.print(why)
    if not result.comparables.empty:
        comp = Table(title="Comparable stones from the collection")
        cols = [*schema.COLUMNS]
        for col in cols:
            comp.add_column(col, justify="right")
        for row in result.comparables[cols].itertuples(index=False):
            comp.add_row(*[f"{v:g}" if isinstance(v, float) else str(v) for v in row])
        console.print(comp)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on (0.0.0.0: all)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="server processes")] = 1,
    access_log: Annotated[bool, typer.Option(help="log every request")] = True,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="addresses of the gateway in front, whose X-Forwarded-For names the client "
            "(rate limits count per client); default: uvicorn's (127.0.0.1)"
        ),
    ] = None,
) -> None:
    """Serve the REST API (/docs) and the web page (/) with the champion model.

    Each process follows the registry: a newly promoted champion is served within
    APPRAISER_RELOAD_SECONDS, without a restart. Admin endpoints need APPRAISER_API_KEY.
    With several workers, /metrics sums all of them (Prometheus multiprocess mode, in a fresh
    temporary folder removed at exit). APPRAISER_LOG_FORMAT=json logs JSON lines, one per request.
    """
    import os
    import shutil
    import tempfile

    metrics_dir = None
    if workers > 1:  # before anything imports prometheus_client, here or in a worker
        metrics_dir = tempfile.mkdtemp(prefix="appraiser-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        _serve(host, port, workers, access_log, forwarded_allow_ips)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


WORKER_START_SECONDS = 60  # `serve --workers N`: how long a worker may take to answer at first


def _serve(
    host: str, port: int, workers: int, access_log: bool, forwarded_allow_ips: str | None
) -> None:
    import logging.config

    import uvicorn
    from rich.text import Text

    from appraiser import registry, store
    from appraiser.config import settings

    log_config: dict[str, object] | None = None
    say: Callable[[str], None] = console.print
    if settings().log_format == "json":
        from appraiser.api.request_log import json_log_config

        log_config = json_log_config(access_log)
        logging.config.dictConfig(log_config)
        log = logging.getLogger("appraiser.serve")

        def say(text: str) -> None:
            log.info(Text.from_markup(text).plain)

    # No format we log shows the caller's file or line, so skip the stack walk logging makes for
    # every record (the logging HOWTO's "Optimization"): a tenth of a lone request's server time
    # went there with the access log on. (Workers of `--workers N` are fresh processes.)
    logging._srcfile = None
    try:
        store.ready()  # migrate once here (or check), not in every worker at the same moment
    except store.StoreOutdated as exc:
        raise fail(str(exc)) from exc
    champion = registry.champion_version()
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    say(
        f"Serving model v{champion} on http://{shown}:{port}/ (API docs: /docs)"
        if champion
        else "[yellow]No champion yet[/]: appraisals answer 503 until one is trained "
        "(`appraiser train`); the server picks it up by itself."
    )
    if settings().api_key is None:
        say("Admin endpoints are disabled: set APPRAISER_API_KEY to enable them.")
    uvicorn.run(
        "appraiser.api:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # JSON: the request lines come from the app (TimeRequests), which knows route and model
        access_log=access_log and log_config is None,
        forwarded_allow_ips=forwarded_allow_ips,
        log_level="info",
        log_config=log_config or uvicorn.config.LOGGING_CONFIG,
        # a worker answers the supervisor's pings only once its imports are done, which takes
        # over uvicorn's 5 s on a busy machine: it would be killed and replaced again and again
        timeout_worker_healthcheck=WORKER_START_SECONDS,
    )


@app.command()
def monitor(
    as_json: Json = False,
    hours: Annotated[
        int, typer.Option(min=1, max=24 * 90, help="the window for appraisals and rejected rows")
    ] = 24,
) -> None:
    """The running system in figures: appraisals per hour, the champion's history, its accuracy
    from expert prices and labelled batches, drift, rejected rows, held batches (as GET
    /v1/monitoring, without the server's request latency)."""
    from appraiser import monitoring

    figures = monitoring.overview(hours)
    if as_json:
        _print_json(figures)
        return
    for line in monitoring.summary(figures):
        typer.echo(line)


@app.command("export")
def export_cmd(
    day: Annotated[
        str | None, typer.Option(help="the UTC day, YYYY-MM-DD (default: yesterday)")
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            help=(
                "a folder or fsspec URL (gs://bucket/prefix); default APPRAISER_EXPORT_TO, "
                "else APPRAISER_HOME/exports"
            )
        ),
    ] = None,
) -> None:
    """Write a day's appraisals and the expert prices reviewed that day as Parquet (partitioned
    by day, with each labelled stone whole): for the warehouse, and before `retention`."""
    import datetime as dt

    from appraiser import archive
    from appraiser.config import settings
    from appraiser.store import StoreOutdated

    try:
        when = (
            dt.date.fromisoformat(day) if day else dt.datetime.now(dt.UTC).date() - dt.timedelta(1)
        )
    except ValueError as exc:
        raise fail(f"--day: a date as YYYY-MM-DD, not {day!r}", code=2) from exc
    cfg = settings()
    target = to or cfg.export_to or str(cfg.home.resolve() / "exports")
    try:
        done = archive.export_day(when, target, bigquery=cfg.bigquery_dataset)
    except StoreOutdated as exc:
        raise fail(str(exc)) from exc
    except (ImportError, ValueError, OSError) as exc:  # a bad URL, a disk, BigQuery without gs://
        raise fail(f"--to {target}: {exc}") from exc
    console.print(
        f"{when}: {done.appraisals:,} appraisals, {done.feedback:,} reviewed expert prices -> "
        + ", ".join(done.files)
    )
    if done.loaded:
        console.print("Loaded into BigQuery: " + ", ".join(done.loaded))


@app.command("retention")
def retention_cmd(
    days: Annotated[int, typer.Option(min=1, help="keep appraisals served in the last DAYS days")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count, delete nothing")] = False,
) -> None:
    """Delete served appraisals older than DAYS days (export them first), never one an expert
    priced: the label needs its stone."""
    from appraiser import archive
    from appraiser.store import StoreOutdated

    try:
        pruned = archive.prune_appraisals(days, dry_run=dry_run)
    except StoreOutdated as exc:
        raise fail(str(exc)) from exc
    verb = "would delete" if dry_run else "deleted"
    console.print(
        f"Before {pruned.cutoff:%Y-%m-%d %H:%M} UTC: {verb} {pruned.deleted:,} appraisals; "
        f"kept {pruned.kept_labelled:,} that experts priced."
    )


@db_app.command("upgrade")
def db_upgrade(
    check: Annotated[
        bool, typer.Option("--check", help="only say whether the schema is current (exit 1: not)")
    ] = False,
) -> None:
    """Bring the store's schema up to date (APPRAISER_DATABASE_URL, or SQLite under
    APPRAISER_HOME): the deploy step before new servers and jobs start, which then only check it
    (APPRAISER_MIGRATE=check). Safe to run again, and from several processes at once."""
    from appraiser import store

    shown = store.engine().url.render_as_string(hide_password=True)
    if check:
        try:
            store.check_schema()
        except store.StoreOutdated as exc:
            raise fail(str(exc)) from exc
        console.print(f"The store's schema is current ({store.revisions()[0]}): {shown}")
        return
    before, head = store.revisions()
    store.upgrade()
    console.print(
        f"The store's schema is at {head}"
        + ("" if before == head else f" (was {before or 'empty'})")
        + f": {shown}"
    )


if __name__ == "__main__":
    app()
