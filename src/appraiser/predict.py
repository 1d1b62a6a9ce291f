"""The Appraiser: the champion loaded once, used by the CLI, the API and batch jobs."""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from appraiser import champion, clock, data, explain, fast, features, model_cache, schema
from appraiser import explain as explain_module
from appraiser.explain import dollars_from_log, grade_what_ifs
from appraiser.market_day import MARKET_TERM, MarketDay, MarketLevels
from appraiser.models import PriceModel
from appraiser.scoring import score_frame

logger = logging.getLogger(__name__)

CHUNK_ROWS = 100_000


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
    market: MarketDay | None = None,
) -> BatchSummary:
    """Score a CSV/Parquet file into a CSV, chunk by chunk so memory stays flat on large files:
    prices as of `market`'s day (today's base level by default), which every row names in its
    `market_level` and `as_of` columns."""
    source = data.usable_file(source)
    market = market or MarketDay(clock.today())
    target.parent.mkdir(parents=True, exist_ok=True)
    rows = priced = 0
    partial = target.with_name(target.name + ".partial")
    # One writer thread: chunk n is written while chunk n+1 is scored (pyarrow's CSV writer and
    # the boosters release the GIL), and it writes about 5x faster than pandas.
    pending: Future[None] | None = None
    with partial.open("wb") as out, ThreadPoolExecutor(max_workers=1) as writer:
        for chunk in _chunks(source, chunk_rows):
            scored = score_frame(model, chunk, first_line=rows + 2, level=market.factor)
            after = scored.columns.get_loc("price_high") + 1  # beside the prices they qualify
            scored.insert(after, "market_level", market.factor)
            scored.insert(after + 1, "as_of", market.day.isoformat())
            # the input's text passes through: kept from running as a spreadsheet formula
            table = pa.Table.from_pandas(data.formula_safe_frame(scored), preserve_index=False)
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


@contextmanager
def boosters_without_estimators() -> Iterator[None]:
    """LightGBM and XGBoost import scikit-learn when it is installed, only for their estimator
    classes (LGBMRegressor...): most of their import time. Scoring uses their boosters alone, so a
    process that has not imported scikit-learn yet (`appraiser predict`) loads them as if it were
    absent. Not for a process that will train afterwards: its estimator classes would lack their
    scikit-learn base, so nothing changes once scikit-learn or a booster library is imported."""
    if any(name in sys.modules for name in ("sklearn", "lightgbm", "xgboost")):
        yield
        return
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # import sklearn -> ImportError
    try:
        yield
    finally:
        if sys.modules.get("sklearn", 0) is None:
            del sys.modules["sklearn"]


class Appraiser:
    """The champion model, loaded once, with everything a caller needs to price stones."""

    def __init__(self, model: PriceModel, version: str) -> None:
        self.model = model
        self.version = version
        self._index: explain.ReferenceIndex | None = None
        self.loaded_at = time.time()

    @property
    def index(self) -> explain.ReferenceIndex:
        """The collection's k-d tree (comparables, sparse-region warnings), built on first use:
        scoring a file needs neither."""
        if self._index is None:
            self._index = explain.ReferenceIndex(self.model.reference)
        return self._index

    @classmethod
    def champion(cls) -> Appraiser:
        from appraiser import registry  # MLflow: seconds to import, so only when needed

        version = champion.current()
        if version is None:
            raise registry.RegistryError("no champion model yet: train one with `appraiser train`")
        version, model = registry.load_version(version)
        return cls(model, version)

    @classmethod
    def for_scoring(cls) -> Appraiser:
        """The champion for scoring a file: the version the store's promotion history names,
        loaded from this machine's cache without MLflow when it is there (start-up in a fraction
        of a second); otherwise the registry's, as `champion()`."""
        version = champion.current(registry=False)
        if version is not None and model_cache.is_complete(version):
            appraiser = cls(PriceModel.load(model_cache.pricer_folder(version)), version)
        else:
            appraiser = cls.champion()
        # compiled once per version on this machine: a file is scored several times faster
        fast.accelerate(appraiser.model, build="now", explain=False)
        return appraiser

    def price(self, stones: pd.DataFrame) -> pd.DataFrame:
        """Validated stones -> price, price_low, price_high."""
        return self.model.predict(stones)

    def appraise(
        self,
        stones: Sequence[Mapping[str, Any]],
        *,
        explain: bool = False,
        comparables: int = 0,
        asking_prices: Sequence[float | None] | None = None,
        market: MarketDay | None = None,
    ) -> list[dict[str, Any]]:
        """Validated stones (mappings of schema.FEATURES) -> one answer each, in order.

        Every answer has price, price_low, price_high (USD, to the cent: the model's price on the
        base level times the `market` level, today's base level by default), `market_level` and
        warnings; with `explain`, the baseline and the dollars each reason adds (size, each grade,
        proportions, and `market`, the level's share, when it is not 1.0: baseline +
        contributions = price, to the cent) and `what_if`, the price one grade better and one
        worse; with `comparables`, that many similar stones of the collection (their recorded
        prices); with an asking price, the deal check (`deal`: the probability the market pays
        more, a verdict).
        """
        market = market or MarketDay(clock.today())
        factor = market.factor
        matrix = features.encode_stones(stones)
        base_price, base_low, base_high = self.model.predict_matrix(matrix)
        # at the base level the prices are the model's, untouched
        exact = (base_price, base_low, base_high)
        if factor != 1.0:
            exact = (base_price * factor, base_low * factor, base_high * factor)
        price, low, high = (np.round(v, 2).tolist() for v in exact)
        dollars = (
            np.round(
                dollars_from_log(self.model.contributions_matrix(matrix), np.log(base_price)), 2
            ).tolist()
            if explain
            else None
        )
        moved = (
            np.round(base_price * (factor - 1), 2).tolist()
            if explain and not market.is_base
            else None
        )
        warnings = self.index.warnings_all(matrix, stones)
        what_if = grade_what_ifs(self.model, matrix, factor) if explain else None
        level = market.field
        deals: list[dict[str, Any] | None] = [None] * len(stones)
        asked = [i for i, a in enumerate(asking_prices or []) if a is not None]
        if asked:
            assert asking_prices is not None
            wanted = np.asarray([float(asking_prices[i]) for i in asked])  # type: ignore[arg-type]
            # P(level x price on the base level > asking) = P(base price > asking / level)
            chances = self.model.prob_above_matrix(matrix[asked], wanted / factor)
            for i, asking, chance in zip(asked, wanted.tolist(), chances.tolist(), strict=True):
                deals[i] = explain_module.deal(asking, chance)
        out = []
        for i, stone in enumerate(stones):
            answer: dict[str, Any] = {
                "price": price[i],
                "price_low": low[i],
                "price_high": high[i],
                "market_level": level,
                "warnings": warnings[i],
            }
            if dollars is not None:
                parts = dict(zip(features.REASONS, dollars[i][:-1], strict=True))
                if moved is not None:
                    parts[MARKET_TERM] = moved[i]
                # the baseline takes the cents lost to rounding, so the parts add up exactly
                answer["baseline"] = round(price[i] - sum(parts.values()), 2)
                answer["contributions"] = parts
            if what_if is not None:
                answer["what_if"] = what_if[i]
            if deals[i] is not None:
                answer["deal"] = deals[i]
            if comparables > 0:
                answer["comparables"] = self.index.comparable_records(stone, comparables)
            out.append(answer)
        return out

    def explain(
        self, stone: schema.Diamond, n_comparables: int = 5, market: MarketDay | None = None
    ) -> explain.Explanation:
        return explain.explain_stones(
            self.model,
            [stone.model_dump()],
            n_comparables,
            index=self.index,
            market=market or MarketDay(clock.today()),
        )[0]

    def score_file(
        self,
        source: Path,
        target: Path,
        progress: Callable[[int], None] | None = None,
        market: MarketDay | None = None,
    ) -> BatchSummary:
        return score_file(self.model, source, target, progress=progress, market=market)


YOUNG_GENERATION = 20_000  # objects allocated between collections of the youngest generation


def settle_heap_after(threads: Sequence[threading.Thread | None]) -> None:
    """Settle the heap for serving now (a model was just loaded), and again once `threads` (the
    load's background work: compiled trees, TreeSHAP tables) end.

    A loaded server holds ~400,000 objects the garbage collector tracks (the collection's
    values, the libraries); a full collection walks them all (~0.3 s here) and came every few
    seconds under batch load, pausing every request. gc.freeze() moves them to a generation no
    collection visits; the young generation is enlarged so a request's objects mostly die before
    a collection promotes them. What the previous champion left in reference cycles is collected
    first (unfreeze, collect): a pause or two per model load instead of one every few seconds.
    """
    _settle_heap()
    pending = [thread for thread in threads if thread is not None]
    for thread in pending:
        thread.join()
    if pending:
        _settle_heap()


def _settle_heap() -> None:
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION, *gc.get_threshold()[1:])


class ChampionWatcher:
    """The champion, kept current: a thread polls the registry's `champion` alias every
    `interval` seconds and swaps in a newly promoted model once it is fully loaded.

    Requests read `current` once and use that Appraiser to the end, so a swap never fails or
    mixes a request; the old model is dropped when its last request ends. A version that fails
    to load is logged and tried again at the next poll, while the old champion keeps serving.
    The same poll follows the market level's series (`market`, market_day.MarketLevels).
    """

    def __init__(self, interval: float = 2.0, settle_heap: bool = False) -> None:
        self.interval = interval
        self.settle_heap = settle_heap  # see settle_heap(): for a server process
        self.current: Appraiser | None = None
        self.reloads = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.tables_thread: threading.Thread | None = None  # the last model's TreeSHAP tables
        self.settling: threading.Thread | None = None
        self.market = MarketLevels()  # the market level's series, followed by the same poll

    def check(self) -> bool:
        """Poll once: load the champion if it changed. True when a new model was swapped in."""
        with self._lock:  # one load at a time (the poller and a promotion through the API)
            try:
                from appraiser import registry

                version = champion.current()
                if version is None or (self.current and self.current.version == version):
                    return False
                loaded_version, model = registry.load_version(version)
                fresh = Appraiser(model, loaded_version)
                # warm every path (thread settings, treelite trees) before the first request
                example = [schema.example_stone()]
                fresh.appraise(example)
                fresh.appraise(example * 8, explain=True, comparables=1)
            except Exception as exc:  # keep serving the old champion; say why in /health
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("could not load the champion: %s", exc)
                return False
            self.current = fresh
            self.reloads += 1
            self.last_error = None
            # LightGBM serves until this machine's compiled trees are ready, and explains until
            # the TreeSHAP tables are (appraiser.fast, one background thread)
            self.tables_thread = fast.accelerate(fresh.model)
            if self.settle_heap:
                self.settling = threading.Thread(
                    target=settle_heap_after,
                    args=([self.tables_thread],),
                    name="heap-settle",
                    daemon=True,
                )
                self.settling.start()
            logger.info("serving model version %s (%s)", fresh.version, fresh.model.name)
            return True

    def start(self) -> None:
        self._stop.clear()  # an app's lifespan may run more than once (tests)
        self.check()
        self.market.check()
        self._thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()
            self.market.check()
