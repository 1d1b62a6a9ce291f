"""`appraiser predict` (a file of stones) and `explain` (one stone, and why). `predict`'s
start-up is benchmarked: the scoring modules are imported inside the commands."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from appraiser import data, schema
from appraiser.cli.render import console, err, fail, labelled, literal, validation_message

AsOfOption = Annotated[
    datetime | None,
    typer.Option(
        "--as-of",
        formats=["%Y-%m-%d"],
        help="the day the prices are for (YYYY-MM-DD), on that day's market level; today (UTC)",
    ),
]


def predict(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="CSV or Parquet of stones")],
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV to write")],
    as_of: AsOfOption = None,
) -> None:
    """Price every stone of a file as of a day (today by default: the model's prices times the
    market level of that day, named in the `market_level` and `as_of` columns); bad rows get a
    message in an `error` column."""
    from appraiser.market_day import stored_on
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
        market = stored_on(as_of.date() if as_of else None)
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
                    input_path, output, lambda n: progress.advance(task, n), market=market
                )
            except data.DataError as exc:
                raise fail(str(exc)) from exc
    console.print(
        literal(
            f"{summary.rows:,} rows: {summary.priced:,} priced, {summary.errors:,} with an "
            f"error (see the `error` column) -> {output} (model v{appraiser.version}; "
            f"{market.describe()})"
        )
    )


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
    as_of: AsOfOption = None,
) -> None:
    """Price one stone as of a day (today by default) and say why: range, dollar contributions
    (the market level's among them), comparable stones."""
    from appraiser.market_day import MARKET_TERM, stored_on
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
    market = stored_on(as_of.date() if as_of else None)
    result = appraiser.explain(stone, comparables, market=market)
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
    console.print(market.describe().capitalize() + ".")
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
        MARKET_TERM: f"level {market.factor:.3f} on {market.day.isoformat()}",
    }
    why = Table(title="Why: dollars each reason adds to the average stone's price")
    why.add_column("", no_wrap=True)  # the reasons' names whole, the values may wrap
    why.add_column("value")
    why.add_column("$", justify="right", no_wrap=True)
    why.add_column("one grade better / worse")
    why.add_row("average stone", "", f"{result.baseline:,.0f}", "")
    # the stone's reasons by size, then the market since the collection: the same last step
    # whatever the stone
    reasons = sorted(
        result.contributions.items(), key=lambda kv: (kv[0] == MARKET_TERM, -abs(kv[1]))
    )
    for name, dollars in reasons:
        other = result.what_if.get(name, {})
        neighbours = " / ".join(
            f"{o['grade']} ${o['price']:,.0f}" if o else "-"
            for o in (other.get("better"), other.get("worse"))
        )
        label = "market since the collection" if name == MARKET_TERM else name
        why.add_row(label, shown[name], f"{dollars:+,.0f}", neighbours if other else "")
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
        console.print(labelled("warning", "yellow", warning))
