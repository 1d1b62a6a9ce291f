"""What every command group prints with: the two consoles (results on stdout, messages on
stderr), errors that exit, JSON for scripts, and the Rich tables several commands share.

Rich reads a printed string as markup (`[white on white]`) and emoji codes (`:warning:`), so a
file name, key name, note or reason could restyle or hide what an admin reads: every stored or
user-supplied value is printed through `literal` (alone, or after a styled label: `labelled`)."""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING

import pandas as pd
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from appraiser import data, evaluate, schema

if TYPE_CHECKING:
    from appraiser.train import TrainResult

console = Console()
err = Console(stderr=True)


# What a terminal acts on instead of showing: control characters but the line feed and tab
# (escape sequences can hide, recolour or rewrite a line) and the bidirectional and zero-width
# marks (text shown in another order, or not at all).
_UNSHOWN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def literal(value: object, style: str = "") -> Text:
    """The value exactly as stored, for a table cell or a line: no markup or emoji codes read in
    it, and a character the terminal would act on shown as its escape (\\x1b, \\u202e)."""
    text = _UNSHOWN.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))
    return Text(text, style=style)


def labelled(label: str, style: str, message: object) -> Text:
    """`label:` in a style, then the message as `literal` shows it ("error: ...")."""
    return Text.assemble((f"{label}:", style), " ", literal(message))


def fail(message: str, code: int = 1) -> typer.Exit:
    """Say what went wrong on stderr; the caller raises the returned Exit (code 2: usage)."""
    err.print(labelled("error", "bold red", message), soft_wrap=True)  # commands stay whole
    return typer.Exit(code)


def validation_message(exc: ValidationError) -> str:
    """One line per problem, each naming the field and the rule it breaks."""
    return schema.error_message(list(exc.errors()))


def print_json(value: object) -> None:
    """JSON on stdout, nothing else (progress and warnings go to stderr); NaN becomes null."""
    typer.echo(json.dumps(_finite(value), indent=2, default=str, allow_nan=False))


def _finite(value: object) -> object:
    """NaN and infinities as None, through dicts and lists: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def metrics_table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    """One column per set of metrics (holdout, challenger, ...), one row per metric."""
    table = Table(title=literal(title))  # titles name the data file
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


def report_table(validation: data.ValidationResult) -> Table:
    """Rows refused by validation, by reason (train and evaluate show it first)."""
    table = Table(title=f"Data quality: {validation.summary()}")
    table.add_column("reason rows were rejected")
    table.add_column("rows", justify="right")
    for row in validation.report.itertuples():
        table.add_row(literal(row.reason), f"{row.rows:,}")
    if validation.report.empty:
        table.add_row("(none: every row is valid)", "0")
    return table


def slices_table(slices: pd.DataFrame) -> Table:
    """The champion's error per slice (cut, color, ..., carat band) of a labelled file."""
    table = Table(title="By slice (holdout)")
    for col in ("slice", "value", "stones", "MAPE %", "within ±10% %", "in range %"):
        table.add_column(col, justify="left" if col in ("slice", "value") else "right")
    for row in slices.itertuples():
        table.add_row(
            literal(row.slice),
            literal(row.value),
            f"{row.stones:,}",
            f"{row.mape:.2f}",
            f"{row.within_10:.1f}",
            f"{getattr(row, 'coverage', float('nan')):.1f}",
        )
    return table


def print_decision(result: TrainResult) -> None:
    """The gate's checks and whether the challenger was promoted (retrain and pipeline passes)."""
    decision = result.gate
    if decision is not None and decision.checks:
        table = Table(
            title=f"The gate: {decision.judged_on.get('stones', 0):,} stones neither "
            "model trained on"
        )
        for col in ("check", "passed", "detail"):
            table.add_column(col)
        for check in decision.checks:
            passed = Text("yes") if check.passed else Text("no", style="red")
            table.add_row(literal(check.name), passed, literal(check.detail))
        console.print(table)
    verdict = (
        ("promoted to champion", "bold green") if result.champion else ("not promoted", "yellow")
    )
    console.print(
        Text.assemble(
            f"Challenger v{result.version} ", verdict, ": ", literal(result.decision), "."
        )
    )
