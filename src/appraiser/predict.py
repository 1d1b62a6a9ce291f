"""The Appraiser: the champion loaded once, used by the CLI, the API and batch jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from appraiser import data, explain, registry, schema
from appraiser.models import PriceModel

CHUNK_ROWS = 100_000


def score_frame(model: PriceModel, raw: pd.DataFrame, first_line: int = 2) -> pd.DataFrame:
    """Price every row of a raw table: the input columns plus price, price_low, price_high, error.

    A row that fails validation gets NaN prices and its reasons in `error`; the others are priced.
    Raises DataError only when a required column is missing (nothing could be priced).
    """
    checked = data.validate(raw, labelled=False, dedupe=False, first_line=first_line)
    out = raw.reset_index(drop=True).copy()
    good = np.ones(len(out), dtype=bool)
    good[checked.rejected["line"].to_numpy() - first_line] = False
    prices = model.predict(checked.clean) if len(checked.clean) else None
    for column in ("price", "price_low", "price_high"):
        values = np.full(len(out), np.nan)
        if prices is not None:
            values[good] = prices[column].to_numpy().round(2)
        out[column] = values
    errors = np.full(len(out), "", dtype=object)
    errors[~good] = checked.rejected["reasons"].to_numpy()
    out["error"] = errors
    return out


@dataclass
class BatchSummary:
    rows: int
    priced: int
    errors: int


def _chunks(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    if path.suffix.lower() == ".csv":
        try:
            # numbers parsed by the CSV reader (a column with a bad value stays text and is
            # coerced, row by row, in validation): twice as fast as parsing text afterwards
            yield from pd.read_csv(path, keep_default_na=False, na_values=[""], chunksize=rows)
        except (UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise data.DataError(f"{path}: not a readable CSV file ({exc})") from exc
        except pd.errors.EmptyDataError as exc:
            raise data.DataError(f"{path}: the file is empty") from exc
    else:
        frame = data.read_table(path)
        for start in range(0, len(frame), rows):
            yield frame.iloc[start : start + rows]


def score_file(
    model: PriceModel,
    source: Path,
    target: Path,
    chunk_rows: int = CHUNK_ROWS,
    progress: Callable[[int], None] | None = None,
) -> BatchSummary:
    """Score a CSV/Parquet file into a CSV, chunk by chunk so memory stays flat on large files."""
    source = data.usable_file(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    rows = priced = 0
    partial = target.with_name(target.name + ".partial")
    # One writer thread: chunk n is written while chunk n+1 is scored (pyarrow's CSV writer and
    # the boosters release the GIL), and it writes about 5x faster than pandas.
    pending: Future[None] | None = None
    with partial.open("wb") as out, ThreadPoolExecutor(max_workers=1) as writer:
        for chunk in _chunks(source, chunk_rows):
            scored = score_frame(model, chunk, first_line=rows + 2)
            table = pa.Table.from_pandas(scored, preserve_index=False)
            options = pa_csv.WriteOptions(include_header=rows == 0, quoting_style="needed")
            if pending is not None:
                pending.result()
            pending = writer.submit(pa_csv.write_csv, table, out, options)
            rows += len(scored)
            priced += int(scored["error"].eq("").sum())
            if progress:
                progress(len(scored))
        if pending is not None:
            pending.result()
    if rows == 0:
        partial.unlink()
        raise data.DataError(f"{source}: the file has no rows")
    partial.replace(target)  # a half-written output never carries the final name
    return BatchSummary(rows=rows, priced=priced, errors=rows - priced)


class Appraiser:
    """The champion model, loaded once, with everything a caller needs to price stones."""

    def __init__(self, model: PriceModel, version: str) -> None:
        self.model = model
        self.version = version

    @classmethod
    def champion(cls) -> Appraiser:
        version, model = registry.load_version()
        return cls(model, version)

    def price(self, stones: pd.DataFrame) -> pd.DataFrame:
        """Validated stones -> price, price_low, price_high."""
        return self.model.predict(stones)

    def explain(self, stone: schema.Diamond, n_comparables: int = 5) -> explain.Explanation:
        frame = pd.DataFrame([stone.model_dump()])
        return explain.explain(self.model, frame, n_comparables)[0]

    def score_file(
        self, source: Path, target: Path, progress: Callable[[int], None] | None = None
    ) -> BatchSummary:
        return score_file(self.model, source, target, progress=progress)
