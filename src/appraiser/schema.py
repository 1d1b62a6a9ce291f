"""The diamond, defined once: columns, grade orders, physical bounds and the rules a stone obeys.

Validation (frames and single stones), encodings, API models and the web form all read this module,
so no grade list or bound is written twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, TypeAlias

import numpy as np
import pandas as pd
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

# Grade orders, worst first: the position of a grade is its ordinal code.
GRADES: dict[str, tuple[str, ...]] = {
    "cut": ("Fair", "Good", "Very Good", "Premium", "Ideal"),
    "color": ("J", "I", "H", "G", "F", "E", "D"),
    "clarity": ("I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"),
}
GRADE_COLUMNS: tuple[str, ...] = tuple(GRADES)
NUMERIC_FEATURES: tuple[str, ...] = ("carat", "depth", "table", "x", "y", "z")
FEATURES: tuple[str, ...] = ("carat", "cut", "color", "clarity", "depth", "table", "x", "y", "z")
TARGET = "price"
COLUMNS: tuple[str, ...] = (*FEATURES, TARGET)
NUMERIC_COLUMNS: tuple[str, ...] = (*NUMERIC_FEATURES, TARGET)

UNITS = {
    "carat": "ct",
    "depth": "%",
    "table": "%",
    "x": "mm",
    "y": "mm",
    "z": "mm",
    "price": "USD",
}
DESCRIPTIONS = {
    "carat": "mass in carats (1 ct = 200 mg)",
    "cut": "quality of the cut, " + " < ".join(GRADES["cut"]),
    "color": "body colour, " + " < ".join(GRADES["color"]) + " (D is colourless, the best)",
    "clarity": "inclusions, " + " < ".join(GRADES["clarity"]) + " (IF is flawless)",
    "depth": "total depth percentage = 2 z / (x + y) x 100",
    "table": "width of the top facet relative to the widest point, %",
    "x": "length in mm",
    "y": "width in mm",
    "z": "depth in mm",
    "price": "appraised price in 2008 US dollars",
    "appraised_at": "the day the price was given (YYYY-MM-DD); empty: the day the file arrived",
}


@dataclass(frozen=True)
class Bound:
    """Physically plausible range of a numeric column: low < value <= high (or low <= value)."""

    low: float
    high: float
    low_inclusive: bool = False

    def violated(self, values: Any) -> Any:
        """True where a value (scalar or array) breaks the bound; NaN never violates a bound."""
        below = values < self.low if self.low_inclusive else values <= self.low
        return below | (values > self.high)

    def describe(self) -> str:
        op = ">=" if self.low_inclusive else ">"
        return f"must be {op} {self.low:,.10g} and <= {self.high:,.10g}"


# Wide enough for any real cut diamond, narrow enough to catch typos (a 58.9 mm width, 0 mm depth).
BOUNDS: dict[str, Bound] = {
    "carat": Bound(0.0, 10.0),
    "depth": Bound(40.0, 80.0, low_inclusive=True),
    "table": Bound(40.0, 100.0, low_inclusive=True),
    "x": Bound(0.0, 20.0),
    "y": Bound(0.0, 20.0),
    "z": Bound(0.0, 15.0),
    "price": Bound(0.0, 1_000_000.0),
}

ASKING_PRICE_HIGH = BOUNDS["price"].high * 10  # a seller's asking price (the deal check), USD

# depth is defined as 2 z / (x + y) x 100; 99.8% of the public table's stones agree to within one
# point, so a larger gap means one of the four numbers is wrong.
DEPTH_TOLERANCE = 1.5


def depth_from_measurements(x: Any, y: Any, z: Any) -> Any:
    """Total depth percentage implied by the measurements (scalars or arrays)."""
    if np.ndim(x) == 0:  # one stone (x, y > 0 by then): plain floats, no numpy overhead
        return 200.0 * z / (x + y)
    with np.errstate(divide="ignore", invalid="ignore"):  # a column may hold zero widths
        return 200.0 * z / (x + y)


def depth_inconsistent(depth: Any, x: Any, y: Any, z: Any) -> Any:
    """True where the stated depth disagrees with 2 z / (x + y) beyond DEPTH_TOLERANCE."""
    return abs(depth - depth_from_measurements(x, y, z)) > DEPTH_TOLERANCE


def columns_break_no_rule(numeric: Mapping[str, Any], grades: Mapping[str, Iterable[Any]]) -> bool:
    """True when stones given column by column (arrays of floats for NUMERIC_FEATURES and maybe
    the price, the values of each grade column) break none of the rules above: every number
    finite and within its bound, every grade one of its column's, the depth consistent. The
    column-wise fast paths (a clean file, a valid API batch) ask this first and leave every
    other case to the validators that name the field and the rule."""
    for name, values in numeric.items():
        column = np.asarray(values, dtype=float)
        if not np.isfinite(column).all() or BOUNDS[name].violated(column).any():
            return False
    if any(not set(values) <= set(GRADES[name]) for name, values in grades.items()):
        return False
    inconsistent = depth_inconsistent(numeric["depth"], numeric["x"], numeric["y"], numeric["z"])
    return not np.asarray(inconsistent).any()


# Carat bands: the slices errors are reported by, and the groups price ranges are calibrated in
# (heavy stones are rarer and harder to price, so they get their own, wider range).
CARAT_EDGES: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
CARAT_LABELS: tuple[str, ...] = ("<0.5 ct", "0.5-1 ct", "1-1.5 ct", "1.5-2 ct", ">=2 ct")


def carat_band_index(carat: Any) -> Any:
    """The carat band (0 = lightest) of each carat, per CARAT_EDGES."""
    return np.searchsorted(CARAT_EDGES, carat, side="right")


DEPTH_RULE = f"depth must agree with 2 z / (x + y) x 100 to within {DEPTH_TOLERANCE:g} points"


def grade_rule(column: str) -> str:
    return f"{column} must be one of: " + ", ".join(GRADES[column])


def grade_code(column: str, values: pd.Series) -> pd.Series:
    """Ordinal codes (0 = worst) for a grade column; unknown grades become NaN."""
    order = GRADES[column]
    return values.map({g: i for i, g in enumerate(order)})


# --- when a labelled stone was priced ---------------------------------------------------------

# A labelled row may say the day its price was given: the market level (market.py) is estimated
# from dated prices. Optional: a row without it was priced the day its file arrived.
APPRAISED_AT = "appraised_at"
OPTIONAL_COLUMNS: tuple[str, ...] = (APPRAISED_AT,)
EARLIEST_APPRAISAL = date(1990, 1, 1)
APPRAISED_AT_RULE = (
    f"{APPRAISED_AT} must be a date written YYYY-MM-DD, "
    f"from {EARLIEST_APPRAISAL.isoformat()} to today (UTC)"
)
_ISO_DATE = r"^\d{4}-\d{2}-\d{2}$"


def appraisal_dates(values: pd.Series, today: date) -> tuple[pd.Series, pd.Series]:
    """(each value as a `date`, None where it is missing; True where a present value breaks
    APPRAISED_AT_RULE). Text must be an ISO date; a Parquet date or timestamp column counts by
    its day."""
    present = values.notna() & values.astype(str).str.strip().ne("")
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = pd.to_datetime(values, errors="coerce")
    else:
        text = values.astype(str).str.strip()
        iso = text.str.match(_ISO_DATE)
        parsed = pd.to_datetime(text.where(iso), format="%Y-%m-%d", errors="coerce")
    days = pd.Series(
        [d.date() if not pd.isna(d) else None for d in parsed], index=values.index, dtype=object
    )
    known = days.notna()
    in_range = known & days.map(lambda d: d is not None and EARLIEST_APPRAISAL <= d <= today)
    return days.where(present & known, None), present & ~in_range


# --- single stones (API requests, the CLI's explain) ----------------------------------------


def _check_grade(column: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in GRADES[column]:
            raise ValueError(grade_rule(column))
        return value

    return check


def _grade_schema(column: str) -> WithJsonSchema:
    return WithJsonSchema(
        {"type": "string", "enum": list(GRADES[column]), "description": DESCRIPTIONS[column]}
    )


# A grade as a type: the allowed values in the OpenAPI schema, the rule in the error message.
Cut: TypeAlias = Annotated[str, AfterValidator(_check_grade("cut")), _grade_schema("cut")]
Color: TypeAlias = Annotated[str, AfterValidator(_check_grade("color")), _grade_schema("color")]
Clarity: TypeAlias = Annotated[
    str, AfterValidator(_check_grade("clarity")), _grade_schema("clarity")
]


def _bounded_field(column: str, example: float) -> Any:
    b = BOUNDS[column]
    return Field(
        description=f"{DESCRIPTIONS[column]} ({UNITS[column]})",
        examples=[example],
        strict=True,  # a number: not "1.1" or true (JSON integers are fine)
        allow_inf_nan=False,
        le=b.high,
        ge=b.low if b.low_inclusive else None,
        gt=None if b.low_inclusive else b.low,
    )


EXAMPLE_STONE: dict[str, Any] = {
    "carat": 1.1,
    "cut": "Ideal",
    "color": "H",
    "clarity": "SI2",
    "depth": 62.0,
    "table": 55.0,
    "x": 6.61,
    "y": 6.65,
    "z": 4.11,
}


class Diamond(BaseModel):
    """One stone's characteristics: what a price is asked for."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_STONE]})

    carat: float = _bounded_field("carat", 1.1)
    cut: Cut
    color: Color
    clarity: Clarity
    depth: float = _bounded_field("depth", 62.0)
    table: float = _bounded_field("table", 55.0)
    x: float = _bounded_field("x", 6.61)
    y: float = _bounded_field("y", 6.65)
    z: float = _bounded_field("z", 4.11)

    @model_validator(mode="after")
    def _measurements_agree(self) -> Diamond:
        if depth_inconsistent(self.depth, self.x, self.y, self.z):
            implied = depth_from_measurements(self.x, self.y, self.z)
            raise ValueError(f"{DEPTH_RULE} (x, y, z imply {implied:.1f}, depth is {self.depth:g})")
        return self


_LOCATIONS = frozenset({"body", "query", "path", "header"})  # where FastAPI says a field came from


def error_message(errors: list[Any], most: int = 10) -> str:
    """One line naming each bad field and the rule it breaks, from pydantic's (or FastAPI's)
    error list: 'carat: Input should be greater than 0; cut: cut must be one of: Fair, ...'."""
    lines = []
    for error in errors[:most]:
        field = ".".join(str(p) for p in error.get("loc", ()) if p not in _LOCATIONS) or "stone"
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        lines.append(message if message.startswith(field) else f"{field}: {message}")
    more = f" (and {len(errors) - most} more)" if len(errors) > most else ""
    return "; ".join(lines) + more


def example_stone() -> dict[str, Any]:
    """A copy of the documented example stone."""
    return dict(EXAMPLE_STONE)
