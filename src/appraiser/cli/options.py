"""Options several commands share (tuning budget, retrain threshold, JSON output, the gate's
policy), declared once so their names and help read the same everywhere."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from appraiser.gate import GatePolicy

Trials = Annotated[int, typer.Option(min=1, help="Optuna trials per tuned candidate")]
Timeout = Annotated[float, typer.Option(min=1, help="seconds of tuning in all")]
Threshold = Annotated[int, typer.Option(min=1, help="new stones that call for a retrain")]
Json = Annotated[bool, typer.Option("--json", help="print one JSON object for scripts")]
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


def policy(margin: float, slice_tolerance: float) -> GatePolicy:
    """The gate's policy from --margin and --slice-tolerance (gate imported only when used)."""
    from appraiser.gate import GatePolicy

    return GatePolicy(margin=margin, slice_tolerance=slice_tolerance)
