"""`appraiser models`: the registered versions with their metrics, and the champion: promote,
roll back, its sealed-set record and every move it made."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from appraiser.cli.options import Json
from appraiser.cli.render import console, fail, literal, print_json

models_app = typer.Typer(help="Model versions, their metrics, and which one is champion.")


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, as_json: Json = False) -> None:
    """List the model versions with their metrics; the champion is starred."""
    if ctx.invoked_subcommand is not None:
        return
    from appraiser import champion, registry

    try:
        infos = champion.versions()
    except registry.RegistryError as exc:
        raise fail(str(exc)) from exc
    if as_json:
        print_json(
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
            literal(v.model),
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
    console.print(
        literal(f"v{version} is now champion (was {'v' + before if before else 'none'}).")
    )


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
        print_json(history.to_dict(orient="records"))
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
        print_json(moves)
        return
    table = Table(title="Champion history")
    for col in ("when", "version", "was", "kind", "by", "why"):
        table.add_column(col)
    for m in moves:
        table.add_row(
            f"{m['at']:%Y-%m-%d %H:%M}",
            f"v{m['version']}",
            f"v{m['previous']}" if m["previous"] else "",
            literal(m["kind"]),
            literal(m["actor"]),
            literal(m["reason"][:200]),
        )
    console.print(table)
