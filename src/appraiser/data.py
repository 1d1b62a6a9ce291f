"""Load diamond tables and validate them: every rejected row is kept with its reasons.

Numbers are coerced first (a value that is present but not a number is a reason of its own), then a
pandera schema built from `schema.py` checks grades, bounds, the depth identity and duplicates.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from appraiser import schema

if TYPE_CHECKING:
    import pandera.pandas as pa

PUBLIC_TABLE = "public ggplot2 diamonds table (plotnine)"
SUPPORTED_SUFFIXES = (".csv", ".parquet", ".pq")

# Reasons, as stored with rejected rows and counted in quality reports.
MISSING = "missing value"
DUPLICATE = "exact duplicate of an earlier row"


class DataError(ValueError):
    """A table that cannot be used at all (missing file, wrong format, missing columns)."""


def public_table_path() -> Path:
    """The public diamonds table shipped inside the installed plotnine package."""
    try:
        resource = importlib.resources.files("plotnine") / "data" / "diamonds.csv"
    except ModuleNotFoundError:  # the image leaves it out: it prices and trains on named files
        raise DataError(
            "no data was named and the public diamonds table is not installed: name a file "
            "(--data FILE or APPRAISER_DATA), or install it with pip install 'appraiser[public]'"
        ) from None
    return Path(str(resource))


def read_table(path: str | Path | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet table as it is on disk (all columns kept, nothing validated).

    With no path, the public diamonds table from the installed plotnine package is read.
    Raises DataError with a message naming the problem when the file cannot be used.
    """
    if path is None:
        return pd.read_csv(public_table_path(), dtype=str, keep_default_na=False, na_values=[""])
    path = usable_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        else:
            frame = pd.read_parquet(path)
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a readable {suffix[1:].upper()} file ({exc})") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: the file is empty") from exc
    except Exception as exc:  # pyarrow raises several types for a broken Parquet file
        raise DataError(f"{path}: not a readable {suffix[1:].upper()} file ({exc})") from exc
    if frame.empty:
        raise DataError(f"{path}: the file has a header but no rows")
    return frame


def usable_file(path: str | Path) -> Path:
    """The path, if it names an existing CSV or Parquet file; else DataError saying why not."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a CSV or Parquet file")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: unsupported file type '{suffix}', expected .csv or .parquet")
    return path


def check_columns(frame: pd.DataFrame, required: tuple[str, ...], source: str) -> None:
    """Raise DataError naming every required column the table lacks."""
    missing = [c for c in required if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns[:12])) or "none"
        raise DataError(
            f"{source}: missing required column(s) {', '.join(missing)} (found: {found}); "
            f"expected {', '.join(required)} with a comma as separator"
        )


def fingerprint(frame: pd.DataFrame) -> str:
    """A stable hash of a table's contents, logged with each run to tie a model to its data."""
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


@cache  # built once per kind: batch scoring validates every chunk with it
def _frame_schema(labelled: bool, dedupe: bool) -> pa.DataFrameSchema:
    """The pandera schema for a diamonds frame whose numeric columns are already floats."""
    import pandera.pandas as pa

    columns: dict[str, pa.Column] = {}
    numeric = schema.NUMERIC_COLUMNS if labelled else schema.NUMERIC_FEATURES
    for name in numeric:
        bound = schema.BOUNDS[name]
        columns[name] = pa.Column(
            float,
            pa.Check(
                lambda v, b=bound: ~b.violated(v),
                error=f"{name} {bound.describe()}",
            ),
            nullable=False,
        )
    for name in schema.GRADE_COLUMNS:
        columns[name] = pa.Column(
            checks=pa.Check(
                lambda v, g=schema.GRADES[name]: v.isin(g), error=schema.grade_rule(name)
            ),
            nullable=False,
        )
    depth_rule = pa.Check(
        lambda df: ~schema.depth_inconsistent(df["depth"], df["x"], df["y"], df["z"]),
        error=schema.DEPTH_RULE,
    )
    return pa.DataFrameSchema(
        columns,
        checks=[depth_rule],
        unique=list(schema.COLUMNS if labelled else schema.FEATURES) if dedupe else None,
        report_duplicates="exclude_first",
    )


def _schema_faults(frame: pd.DataFrame, labelled: bool, dedupe: bool) -> list[tuple[int, str]]:
    """(row, reason) for every fault pandera finds in a frame of floats and grades."""
    from pandera.errors import SchemaErrors

    try:
        _frame_schema(labelled, dedupe).validate(frame, lazy=True)
    except SchemaErrors as exc:
        cases = exc.failure_cases
        cases = cases[cases["index"].notna()]
        return [
            (int(index), _reason(str(check), column))
            for check, column, index in zip(
                cases["check"], cases["column"], cases["index"], strict=True
            )
        ]
    return []


def _breaks_no_rule(frame: pd.DataFrame, labelled: bool, dedupe: bool) -> bool:
    """True when no row breaks a rule of _frame_schema (schema.columns_break_no_rule, and no
    duplicate). Then pandera, whose import and backends cost a one-stone `appraiser predict` most
    of a second, need not run: this only skips work for a clean table; pandera still names
    every fault of any other."""
    numeric = schema.NUMERIC_COLUMNS if labelled else schema.NUMERIC_FEATURES
    if not schema.columns_break_no_rule(
        {name: frame[name].to_numpy(dtype=float) for name in numeric},
        {name: frame[name] for name in schema.GRADE_COLUMNS},  # None is in no grade list
    ):
        return False
    key = list(schema.COLUMNS if labelled else schema.FEATURES)
    return not (dedupe and frame.duplicated(subset=key).any())


def _reason(check: str, column: object) -> str:
    if check == "not_nullable":
        return f"{column}: {MISSING}"
    if check == "multiple_fields_uniqueness":
        return DUPLICATE
    return str(check)


@dataclass
class ValidationResult:
    """The outcome of validating a table: the good rows, the bad ones with reasons, the counts."""

    clean: pd.DataFrame
    rejected: pd.DataFrame
    total: int
    reasons: Counter[str] = field(default_factory=Counter)
    # each clean row's schema.APPRAISED_AT (a date, None where the row gave none); None when
    # the table has no such column or is not labelled
    dates: pd.Series | None = None

    @property
    def report(self) -> pd.DataFrame:
        """Rows rejected per reason (a row with two faults counts under both)."""
        rows = sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        return pd.DataFrame(rows, columns=["reason", "rows"])

    def summary(self) -> str:
        return (
            f"{self.total:,} rows read, {len(self.clean):,} accepted, "
            f"{len(self.rejected):,} rejected"
        )


def validate(
    raw: pd.DataFrame,
    *,
    labelled: bool = True,
    dedupe: bool = True,
    source: str = "table",
    first_line: int = 2,
) -> ValidationResult:
    """Split a raw table into accepted stones and rejected rows with their reasons.

    `labelled` tables must carry a price; `dedupe` rejects exact repeats of an earlier row.
    Rejected rows keep their raw values, a `line` (the file line, header being line 1) and
    `reasons` ("; "-separated). Raises DataError when a required column is missing.
    """
    required = schema.COLUMNS if labelled else schema.FEATURES
    check_columns(raw, required, source)
    # other columns are ignored (and could collide with the `line`, `reasons`, `batch_id` added
    # to rejected rows): the raw values kept are those of the schema's columns
    known = (*schema.COLUMNS, *schema.OPTIONAL_COLUMNS) if labelled else schema.COLUMNS
    if any(c not in known for c in raw.columns):
        raw = raw[[c for c in raw.columns if c in known]]
    raw = raw.reset_index(drop=True)
    frame = pd.DataFrame(index=raw.index)
    problems: dict[int, list[str]] = {}

    numeric = schema.NUMERIC_COLUMNS if labelled else schema.NUMERIC_FEATURES
    for name in numeric:
        values = pd.to_numeric(raw[name], errors="coerce").astype(float)
        not_a_number = values.isna() & raw[name].notna()
        for i in np.flatnonzero(not_a_number.to_numpy()):
            problems.setdefault(int(i), []).append(f"{name}: not a number ({raw[name].iat[i]!r})")
        frame[name] = values
    for name in schema.GRADE_COLUMNS:
        frame[name] = raw[name].astype(object).where(raw[name].notna(), None)
    dates = None
    if labelled and schema.APPRAISED_AT in raw.columns:
        from appraiser.clock import today

        dates, bad_dates = schema.appraisal_dates(raw[schema.APPRAISED_AT], today())
        for i in np.flatnonzero(bad_dates.to_numpy()):
            shown = raw[schema.APPRAISED_AT].iat[i]
            problems.setdefault(int(i), []).append(f"{schema.APPRAISED_AT_RULE} (not {shown!r})")

    if not _breaks_no_rule(frame, labelled, dedupe):
        for index, reason in _schema_faults(frame, labelled, dedupe):
            row = problems.setdefault(index, [])
            if reason not in row:
                row.append(reason)

    # a non-numeric value shows up again as "missing" after coercion: say it once
    for reasons in problems.values():
        stated = {r.split(":")[0] for r in reasons if "not a number" in r}
        reasons[:] = [r for r in reasons if not (r.endswith(MISSING) and r.split(":")[0] in stated)]

    bad = np.zeros(len(raw), dtype=bool)
    bad[list(problems)] = True
    columns = list(required)
    clean = frame.loc[~bad, columns].reset_index(drop=True)
    rejected = raw.loc[bad].copy()
    rejected.insert(0, "line", rejected.index + first_line)
    rejected["reasons"] = ["; ".join(problems[i]) for i in rejected.index]
    rejected = rejected.reset_index(drop=True)
    counts: Counter[str] = Counter(r for i in problems for r in problems[i])
    return ValidationResult(
        clean=clean,
        rejected=rejected,
        total=len(raw),
        reasons=counts,
        dates=None if dates is None else dates[~bad].reset_index(drop=True),
    )


def load(path: str | Path | None = None, *, labelled: bool = True) -> ValidationResult:
    """Read and validate a table (the public table when no path is given)."""
    source = str(path) if path is not None else PUBLIC_TABLE
    return validate(read_table(path), labelled=labelled, source=source)


def francesco_path() -> Path | None:
    """Francesco's collection, or None when it is absent (callers then use the public table).

    `APPRAISER_DATA` when set, else ../shared/data/diamonds.csv from the working directory or
    from the project folder (so notebooks, run from notebooks/, find it too).
    """
    from appraiser.config import settings

    candidates = [settings().data, Path(__file__).resolve().parents[3] / "shared/data/diamonds.csv"]
    return next((p for p in candidates if p is not None and p.exists()), None)


# A spreadsheet runs a cell beginning with one of these as a formula (OWASP's list for CSV
# injection: tab and carriage return too, which some spreadsheets skip before reading on).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")


def formula_safe(value: object) -> object:
    """A CSV cell as a spreadsheet must show it: text beginning with a formula character gets a
    leading quote unless it is a plain number ("-2" stays, "-2+3" does not); anything else is
    returned as it is. The web page's download applies the same rule (csvCell in web/app.js)."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return value if _PLAIN_NUMBER.fullmatch(value) else "'" + value
    return value


def formula_safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A table about to be written as CSV, its header and text cells made `formula_safe`. Number
    columns are left alone (a negative price stays a number); every CSV the CLI, the API and a
    run's artifacts write goes through here. Returns `frame` itself when nothing needs a quote."""
    out = frame
    for position in range(frame.shape[1]):
        column = frame.iloc[:, position]
        dtype = column.dtype
        if isinstance(dtype, pd.CategoricalDtype):
            column = column.astype(object)
        elif not pd.api.types.is_string_dtype(dtype):  # object or str: text, perhaps
            continue
        try:
            risky = column.str.startswith(FORMULA_START, na=False).to_numpy(dtype=bool)
        except AttributeError:  # an object column without a single string (numbers, None)
            continue
        if not risky.any():  # the usual case: one vectorised pass per text column
            continue
        values = column.to_numpy(dtype=object, copy=True)
        values[risky] = [formula_safe(v) for v in values[risky]]
        if out is frame:
            out = frame.copy()
        out.isetitem(position, values)
    header = [formula_safe(c) for c in frame.columns]
    if header != list(frame.columns):
        out = out.copy() if out is frame else out
        out.columns = header
    return out
