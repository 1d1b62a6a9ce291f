"""Helpers shared by the benchmark scripts: paths, an isolated APPRAISER_HOME, goals, tables, JSON.

Not a benchmark itself; `accuracy.py` and `predict_throughput.py` import it from this folder.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "diamonds.csv"


def default_data_path() -> Path:
    """Francesco's collection next to the repository: ../shared/data/diamonds.csv."""
    return DEFAULT_DATA.resolve()


def resolve_data(given: Path | None, *, required: bool) -> Path | None:
    """--data, else $APPRAISER_DATA, else ../shared/data/diamonds.csv (relative to the repo).

    When the file is absent: exit with a message if `required`, else return None.
    """
    if given is not None:
        candidate, origin = given, "--data"
    elif os.environ.get("APPRAISER_DATA"):
        candidate, origin = Path(os.environ["APPRAISER_DATA"]), "$APPRAISER_DATA"
    else:
        candidate, origin = default_data_path(), "the default location"
    candidate = candidate.expanduser().resolve()
    if candidate.is_file():
        return candidate
    if required:
        sys.exit(
            f"error: Francesco's collection not found at {candidate} (from {origin}).\n"
            "Pass --data PATH or set APPRAISER_DATA to the CSV of his stones."
        )
    return None


def others_shuffled(public: Any, collection: Any, seed: int) -> Any:
    """The public stones not in the collection (all ten columns compared), shuffled with `seed`:
    the pipeline benchmarks draw fresh, extra and unseen stones from it in this order."""
    from appraiser import schema

    key = list(schema.COLUMNS)
    others = public.merge(collection.drop_duplicates(), on=key, how="left", indicator=True)
    others = others[others["_merge"] == "left_only"].drop(columns="_merge")
    return others.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def unseen_stones(others: Any, fresh: int) -> Any:
    """What pipeline.py's stones leave of `others` (the fresh and "more" sets first, 1,000 spare
    stones last): the stones no model of a run sees, to score its versions on."""
    return others.iloc[2 * fresh : len(others) - 1000]


def use_home(home: Path) -> None:
    """Point this process (and the children it starts) at `home` as APPRAISER_HOME.

    A tracking server from MLFLOW_TRACKING_URI is dropped so a benchmark never writes to it.
    """
    from appraiser.config import settings

    home.mkdir(parents=True, exist_ok=True)
    os.environ["APPRAISER_HOME"] = str(home.resolve())
    if os.environ.pop("MLFLOW_TRACKING_URI", None):
        print("note: MLFLOW_TRACKING_URI ignored; the benchmark uses a local store in its home")
    settings.cache_clear()


@dataclass(frozen=True)
class Goal:
    """A figure and the range it should fall in: low <= value <= high (or < high when strict)."""

    name: str
    value: float
    unit: str = ""
    low: float | None = None
    high: float | None = None
    strict_high: bool = False
    digits: int = 2

    def met(self) -> bool:
        if math.isnan(self.value):
            return False
        if self.low is not None and self.value < self.low:
            return False
        if self.high is not None:
            return self.value < self.high if self.strict_high else self.value <= self.high
        return True

    def _fmt(self, number: float) -> str:
        return (
            f"{number:,.{self.digits}f}".rstrip("0").rstrip(".")
            if self.digits
            else f"{number:,.0f}"
        )

    def target(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.low is not None and self.high is not None:
            return f"{self._fmt(self.low)} to {self._fmt(self.high)}{unit}"
        if self.low is not None:
            return f">= {self._fmt(self.low)}{unit}"
        if self.high is not None:
            return f"{'<' if self.strict_high else '<='} {self._fmt(self.high)}{unit}"
        return "(none)"

    def shown(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.value:,.{self.digits}f}{unit}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "goal": self.target(),
            "low": self.low,
            "high": self.high,
            "strict_high": self.strict_high,
            "met": self.met(),
        }


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> str:
    """A plain-text table; the first column is left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        parts = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [title, "=" * len(title)] if title else []
    out += [line(cells[0]), rule, *(line(r) for r in cells[1:])]
    return "\n".join(out)


def goals_table(goals: Sequence[Goal], title: str = "Goals") -> str:
    rows = [(g.name, g.shown(), g.target(), "yes" if g.met() else "NO") for g in goals]
    return format_table(("figure", "value", "goal", "met"), rows, title)


def environment() -> dict[str, Any]:
    """Where the figures were measured (they depend on the machine and on its load)."""
    versions: dict[str, str | None] = {}
    for name in (
        "appraiser",
        "numpy",
        "pandas",
        "pandera",
        "lightgbm",
        "xgboost",
        "mlflow",
        "optuna",
    ):
        try:
            versions[name] = package_version(name)
        except PackageNotFoundError:
            versions[name] = None
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": load,
        "packages": versions,
    }


def jsonable(value: Any) -> Any:
    """Plain JSON: NaN/inf become null, numpy scalars and paths become Python values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n")
    print(f"\nFigures written to {path}")


def wilson(k: int, n: int) -> tuple[float, float, float]:
    """Rate and Wilson 95% interval, in percent (nan for no draws)."""
    from scipy.stats import binomtest

    if n == 0:
        return float("nan"), float("nan"), float("nan")
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return 100 * k / n, 100 * ci.low, 100 * ci.high


def rate(k: int, n: int) -> str:
    """`12.5% (8.1-18.7), 25/200`: a rate, its Wilson 95% interval and its counts."""
    r, low, high = wilson(k, n)
    return f"{r:.1f}% ({low:.1f}-{high:.1f}), {k}/{n}"


def quick_model(stones: Any, timeout: float = 30) -> Any:
    """A cheap champion for a benchmark: one LightGBM trial fitted on `stones`."""
    from appraiser.tuning import fit

    fitted = fit(
        stones,
        stones.head(50),
        final_stones=None,
        source="bench",
        trials=1,
        timeout=timeout,
        candidates=["lightgbm"],
        show_progress=False,
    )
    return fitted.final
