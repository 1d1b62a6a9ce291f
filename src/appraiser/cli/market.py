"""`appraiser market`: the market level month by month (prices over the champion's on the base
level) and the level on a day, today by default; `--refresh` estimates it again first."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer
from rich.table import Table

from appraiser.cli.options import Json
from appraiser.cli.render import console, fail, literal, print_json


def market_cmd(
    as_json: Json = False,
    as_of: Annotated[
        datetime | None,
        typer.Option(
            "--as-of", formats=["%Y-%m-%d"], help="the level on this day (YYYY-MM-DD); today"
        ),
    ] = None,
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh", help="estimate it again from the store's stones and the champion first"
        ),
    ] = False,
) -> None:
    """The market level: per month, with its 90% interval and the stones behind it."""
    from appraiser import champion, clock, market_loop
    from appraiser.store import market as stored

    day = as_of.date() if as_of else clock.today()
    if day > clock.today():
        raise fail(f"--as-of must not be after today ({clock.today().isoformat()}, UTC)", 2)
    if refresh and market_loop.refresh(champion.loaded) is None:
        raise fail("no champion to price the stones with yet: run `appraiser train`")
    series = stored.load()
    if as_json:
        print_json(series.to_dict(day))
        return
    if series.months:
        table = Table(title="Market level (1.0 = the prices the champion learned)")
        for col in ("month", "level", "90% interval", "own median", "stones", "left out"):
            table.add_column(col, justify="left" if col == "month" else "right")
        for m in series.months:
            table.add_row(
                f"{m.month:%Y-%m}" if m.month else "",
                f"{m.level:.3f}",
                f"{m.low:.3f}-{m.high:.3f}",
                f"{m.observed:.3f}" if m.observed is not None else "",
                f"{m.stones:,}",
                f"{m.excluded:,}" if m.excluded else "",
            )
        console.print(table)
    for gone in series.excluded:  # a source is a name a sender chose: shown literally
        console.print(
            literal(
                f"{gone.month:%Y-%m}: left out {gone.source!r} ({gone.stones:,} stones at level "
                f"{gone.level:.3f}; the others {gone.market:.3f})"
            )
        )
    level = series.level_at(day)
    if level.month is None:
        console.print(f"On {day.isoformat()}: level 1.000, the base (no dated stones before).")
    else:
        console.print(
            f"On {day.isoformat()}: level {level.level:.3f} ({level.low:.3f}-{level.high:.3f}), "
            f"the estimate of {level.month:%Y-%m} from {level.stones:,} stones"
            + (f"; priced by v{series.model_version}" if series.model_version else "")
        )
