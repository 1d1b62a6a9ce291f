"""`appraiser ingest`, `rejected` and `batches`: priced stones into the store, the rows it
refused, and the batches held for review (release or drop)."""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from appraiser import data
from appraiser.cli.options import Json
from appraiser.cli.render import console, err, fail, labelled, literal, print_json

batches_app = typer.Typer(help="Ingested batches; release or drop the ones held for review.")


def ingest(
    files: Annotated[
        list[str] | None,
        typer.Argument(metavar="FILE...", help="CSV/Parquet paths or URLs (gs://, s3://, ...)"),
    ] = None,
    source: Annotated[
        str,
        typer.Option(
            help="who appraised these stones (kept with each batch; the guard compares sources)"
        ),
    ] = "file",
    sql: Annotated[
        str | None, typer.Option(help="a SQL query whose rows are priced stones")
    ] = None,
    database: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL the --sql query runs on")
    ] = None,
) -> None:
    """Validate priced stones and keep them in the store (each file once, atomically)."""
    from appraiser import audit
    from appraiser.ingest import IngestReport, ingest_query
    from appraiser.ingest import ingest as ingest_location

    if not files and not sql:
        raise fail("name at least one FILE, or a --sql query with its --database", code=2)
    if sql and not database:
        raise fail("--sql needs --database (a SQLAlchemy URL)", code=2)
    actor = audit.cli_actor()
    jobs: list[tuple[str, Callable[[], IngestReport]]] = [
        (f, functools.partial(ingest_location, f, source=source, actor=actor)) for f in files or []
    ]
    if sql and database:
        jobs.append(
            (sql, functools.partial(ingest_query, sql, database, source=source, actor=actor))
        )
    failed = 0
    for name, job in jobs:
        try:
            report = job()
        except data.DataError as exc:
            err.print(labelled("refused", "bold red", f"{exc} (nothing stored from {name})"))
            failed += 1
            continue
        console.print(literal(report.summary()))
        for reason, rows in sorted(report.reasons.items(), key=lambda kv: -kv[1]):
            console.print(literal(f"  {rows:>7,}  {reason}"))
        if report.screening is not None:
            style = "bold yellow" if report.held else "dim"
            console.print(literal(f"  {report.screening.summary()}", style=style))
    if failed:
        raise typer.Exit(1)


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
        data.formula_safe_frame(rows).to_csv(output, index=False)
        console.print(literal(f"{len(rows):,} rejected rows -> {output}"))
        return
    table = Table(title=f"{len(rows):,} rejected rows" + (f" of batch {batch}" if batch else ""))
    for col in ("batch_id", "line", "reasons"):
        table.add_column(col)
    for row in rows.head(200).itertuples():
        table.add_row(str(row.batch_id), str(row.line), literal(row.reasons))
    console.print(table)
    if len(rows) > 200:
        console.print("(first 200 shown; use --output FILE for all of them)")


class BatchStatus(enum.StrEnum):
    accepted = "accepted"
    held = "held"
    dropped = "dropped"


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
    from appraiser.batches import listed as list_batches

    found = list_batches(status=status.value if status else None)
    if as_json:
        print_json(found)
        return
    table = Table(title="Batches")
    for col in ("batch", "received", "file", "accepted", "status", "champion's errors"):
        table.add_column(col)
    for b in found:
        screened = b["screening"]
        table.add_row(
            str(b["id"]),
            f"{b['received_at']:%Y-%m-%d %H:%M}",
            literal(str(b["file_name"])[-40:]),
            f"{b['rows_accepted']:,}",
            literal(b["status"]),
            literal(screened["summary"]) if screened else "(not screened: no champion then)",
        )
    console.print(table)


def _set_status(batch_id: int, status: str) -> None:
    """Release or drop a batch as the shell's user, recorded in the audit trail."""
    from appraiser import audit
    from appraiser.ingest import set_batch_status

    try:
        before = set_batch_status(batch_id, status, actor=audit.cli_actor())
    except (KeyError, ValueError) as exc:
        raise fail(str(exc.args[0])) from exc
    console.print(literal(f"Batch {batch_id}: {before} -> {status}."))


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
