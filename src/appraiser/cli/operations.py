"""Running the system: `appraiser monitor` (its figures), `export` and `retention` (the
warehouse, then pruning), and `db upgrade` (the store's schema, once per deploy)."""

from __future__ import annotations

from typing import Annotated

import typer

from appraiser.cli.options import Json
from appraiser.cli.render import console, fail, literal, print_json

db_app = typer.Typer(help="The store's schema: migrate it once per deploy, or check it is current.")


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
        print_json(figures)
        return
    for line in monitoring.summary(figures):  # lines quote stored actors and reasons
        console.print(literal(line), soft_wrap=True)


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

    from appraiser import archive, audit, clock
    from appraiser.config import settings
    from appraiser.store import StoreOutdated

    try:
        when = dt.date.fromisoformat(day) if day else clock.now().date() - dt.timedelta(1)
    except ValueError as exc:
        raise fail(f"--day: a date as YYYY-MM-DD, not {day!r}", code=2) from exc
    cfg = settings()
    target = to or cfg.export_to or str(cfg.home.resolve() / "exports")
    try:
        done = archive.export_day(
            when, target, bigquery=cfg.bigquery_dataset, actor=audit.cli_actor()
        )
    except StoreOutdated as exc:
        raise fail(str(exc)) from exc
    except (ImportError, ValueError, OSError) as exc:  # a bad URL, a disk, BigQuery without gs://
        raise fail(f"--to {target}: {exc}") from exc
    console.print(
        literal(
            f"{when}: {done.appraisals:,} appraisals, {done.feedback:,} reviewed expert prices -> "
            + ", ".join(done.files)
        )
    )
    if done.loaded:
        console.print(literal("Loaded into BigQuery: " + ", ".join(done.loaded)))


def retention_cmd(
    days: Annotated[int, typer.Option(min=1, help="keep appraisals served in the last DAYS days")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count, delete nothing")] = False,
) -> None:
    """Delete served appraisals older than DAYS days (export them first), never one an expert
    priced: the label needs its stone."""
    from appraiser import archive, audit
    from appraiser.store import StoreOutdated

    try:
        pruned = archive.prune_appraisals(days, dry_run=dry_run, actor=audit.cli_actor())
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
        console.print(literal(f"The store's schema is current ({store.revisions()[0]}): {shown}"))
        return
    before, head = store.revisions()
    store.upgrade()
    console.print(
        literal(
            f"The store's schema is at {head}"
            + ("" if before == head else f" (was {before or 'empty'})")
            + f": {shown}"
        )
    )
