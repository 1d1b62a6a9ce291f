"""The appraisal writer: served prices written in the background, many rows per statement.

A served price must never wait for the disk, and one INSERT per request would cost more than
pricing it: `AppraisalWriter` queues rows and `bulk_insert` writes each batch in one executemany.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, insert
from sqlalchemy.exc import DataError, IntegrityError

from appraiser.store.database import engine
from appraiser.store.migrate import ready
from appraiser.store.tables import APPRAISALS

logger = logging.getLogger(__name__)


class AppraisalWriter:
    """Writes appraisals in the background, in batches: a served price never waits for the disk.

    `submit` only queues rows; a thread inserts whatever has queued every `interval` seconds (or at
    `max_rows`) in one statement. When the store is unreachable the rows stay queued and are
    retried, so none are lost while the process lives; `flush` waits until everything submitted
    before it is written (a read of an appraisal just served calls it first).
    """

    def __init__(
        self,
        url: str | None = None,
        interval: float = 0.2,
        max_rows: int = 2000,
        max_queued: int = 500_000,
    ) -> None:
        self.url = url
        self.interval = interval
        self.max_rows = max_rows
        # during a long outage the queue would grow without end: past max_queued rows (about
        # 500 MB), new rows are dropped, counted and logged, and the process stays up
        self.max_queued = max_queued
        self.queued = 0
        self.dropped = 0
        self._count_lock = threading.Lock()
        self.written = 0
        self.failures = 0  # attempts that failed because the store was unreachable
        self.refused = 0  # rows the store refused (constraint violations): logged and dropped
        self.last_error: str | None = None
        # one item per submitted list of rows (a put and a get per row cost a batch 2 ms)
        self._queue: queue.SimpleQueue[list[dict[str, Any]] | threading.Event | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="appraisal-writer", daemon=True)
        self._thread.start()

    def submit(self, rows: list[dict[str, Any]]) -> None:
        with self._count_lock:
            if self.queued + len(rows) > self.max_queued:
                self.dropped += len(rows)
                logger.error(
                    "%d appraisals dropped: %d already wait for the store (%s)",
                    len(rows),
                    self.queued,
                    self.last_error,
                )
                return
            self.queued += len(rows)
        self._queue.put(list(rows))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row submitted so far is written; False if that took over `timeout`."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            try:
                self._loop()
                return
            except Exception:  # never let the writer die: log, and go on with what is queued
                logger.exception("the appraisal writer failed; restarting it")
                time.sleep(1.0)

    def _loop(self) -> None:
        pending: list[dict[str, Any]] = []
        waiters: list[threading.Event] = []
        stop = False
        while not stop:
            # gather for `interval` after the first row (one insert per interval, not per
            # request: a write per request would cost each request more than pricing it), but
            # at once when someone waits in flush() or the batch is full. Rows kept from a failed
            # write are retried after `interval` even when no more come: waiting for the next
            # row would leave them unwritten for good once traffic stops
            deadline: float | None = time.monotonic() + self.interval if pending else None
            while not stop and not waiters and len(pending) < self.max_rows:
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    break
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    waiters.append(item)
                else:
                    pending.extend(item)
                    if deadline is None:
                        deadline = time.monotonic() + self.interval
            # at most max_rows per statement: one submitted list may be a 10,000-stone batch
            while pending:
                chunk = pending[: self.max_rows]
                size = len(chunk)
                written = self._write(chunk)  # row by row, it takes what it wrote out of chunk
                del pending[: size if written else size - len(chunk)]
                if not written:
                    break
            if pending:
                # the store is down: keep the rows, retry after a pause (never a busy loop, even
                # with interval=0)
                time.sleep(min(max(self.interval * 5, 0.1), 2.0))
                continue
            for waiter in waiters:
                waiter.set()
            waiters = []

    def _write(self, rows: list[dict[str, Any]]) -> bool:
        """Insert the rows; False when the store is unreachable (keep them and retry).

        A row the store refuses for itself (say, an id already taken) must not hold back the
        others forever: the batch is then written row by row, and refused rows are logged,
        counted and dropped.
        """
        try:
            ready(self.url)
            with engine(self.url).begin() as conn:
                bulk_insert(conn, APPRAISALS, rows)
        except (IntegrityError, DataError):
            return self._write_one_by_one(rows)
        except Exception as exc:  # the store is down or unreachable: keep the rows, retry
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            logger.warning(
                "could not store %d appraisals (will retry): %s", len(rows), self.last_error
            )
            return False
        self.written += len(rows)
        self._handled(len(rows))
        return True

    def _handled(self, rows: int) -> None:
        with self._count_lock:
            self.queued -= rows

    def _write_one_by_one(self, rows: list[dict[str, Any]]) -> bool:
        """Write rows singly, dropping those the store refuses; False if the store went away
        (the rows not yet written stay in `rows` for the retry)."""
        while rows:
            try:
                with engine(self.url).begin() as conn:
                    conn.execute(insert(APPRAISALS), [rows[0]])
                self.written += 1
            except (IntegrityError, DataError) as exc:
                self.refused += 1
                self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                logger.error("appraisal %s refused by the store, dropped", rows[0].get("uid"))
            except Exception as exc:  # the store went away mid-way: retry the rest later
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                return False
            rows.pop(0)
            self._handled(1)
        return True


@functools.lru_cache(maxsize=32)
def _insert_statement(table: Table, dialect: Any, keys: tuple[str, ...]) -> Any:
    """The INSERT for these columns, compiled once per dialect (a writer flushing a few rows
    many times a second spent more compiling it than inserting)."""
    return insert(table).compile(dialect=dialect, column_keys=list(keys), for_executemany=True)


def bulk_insert(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows in one executemany of the driver's own statement.

    SQLAlchemy's executemany processes every parameter of every row in Python: for 1,000
    appraisals on SQLite that took 31 ms against 22 ms here (benchmarks/serving_parts.py), where
    each column's bind processor (SQLite keeps datetimes as text) is applied directly and nothing
    else is. Rows that do not all carry the same columns as the statement (a default to fill in)
    take SQLAlchemy's way.
    """
    if not rows:
        return
    keys = list(rows[0])
    dialect = conn.dialect
    compiled = _insert_statement(table, dialect, tuple(keys))
    order = list(compiled.positiontup or []) if compiled.positional else keys
    size = len(keys)
    same_columns = set(compiled.binds) == set(keys) and all(len(row) == size for row in rows)
    processors = [table.c[key].type.dialect_impl(dialect).bind_processor(dialect) for key in order]
    try:  # with the sizes equal, every key present means the same columns (a cheaper check)
        values = [[row[key] for row in rows] for key in order] if same_columns else None
    except KeyError:
        values = None
    if values is None:
        conn.execute(insert(table), rows)
        return
    columns = [_bound(v, p) for v, p in zip(values, processors, strict=True)]
    pick = list(zip(*columns, strict=True))
    if compiled.positional:
        params: list[Any] = pick
    else:
        params = [dict(zip(order, values, strict=True)) for values in pick]
    conn.exec_driver_sql(str(compiled), params)


def _bound(values: list[Any], processor: Callable[[Any], Any] | None) -> list[Any]:
    """One column's values through its bind processor, column-wise (a call per value cost more
    than the insert): None stays None; a value shared by every row (the time of one request) is
    processed once, as is each distinct time (equal times in two zones are stored differently,
    so they are told apart by offset)."""
    if processor is None:
        return values
    first = values[0]
    if all(value is first for value in values):
        return [None if first is None else processor(first)] * len(values)
    if isinstance(first, datetime):
        memo: dict[tuple[Any, Any], Any] = {}
        out = []
        for value in values:
            if not isinstance(value, datetime):  # None, or whatever the processor makes of it
                out.append(None if value is None else processor(value))
                continue
            key = (value, value.utcoffset())
            if key not in memo:
                memo[key] = processor(value)
            out.append(memo[key])
        return out
    if None in values:
        return [None if value is None else processor(value) for value in values]
    return list(map(processor, values))
