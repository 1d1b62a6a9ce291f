"""The pipeline lock: one retrain, pass or champion move at a time, across processes.

With a PostgreSQL store it is an advisory lock in the database, which holds across machines (and
is released if the holder dies); with SQLite, a lock file under APPRAISER_HOME, which holds on one
machine. It is re-entrant within a thread: a retrain holding it may promote without deadlocking.
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from appraiser.config import settings

BUSY = "another pipeline pass, retrain or champion move is running; try again when it ends"
# the key of the PostgreSQL advisory lock (any 64-bit number, the same for every process)
ADVISORY_LOCK_KEY = 0x41505052414953  # "APPRAIS"

_held = threading.local()


class PipelineBusy(RuntimeError):
    """Another process (or thread) holds the pipeline lock."""


def _lock_path() -> Path:
    home = settings().home
    home.mkdir(parents=True, exist_ok=True)
    return home / "pipeline.lock"


def held() -> bool:
    """True when this thread holds the lock."""
    return getattr(_held, "depth", 0) > 0


@contextmanager
def exclusive() -> Iterator[None]:
    """Hold the pipeline's lock or raise PipelineBusy at once (re-entrant in this thread)."""
    if held():
        _held.depth += 1
        try:
            yield
        finally:
            _held.depth -= 1
        return
    with _acquire():
        _held.depth = 1
        try:
            yield
        finally:
            _held.depth = 0


@contextmanager
def _acquire() -> Iterator[None]:
    from sqlalchemy import text

    from appraiser import store

    engine = store.ready()
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            key = {"key": ADVISORY_LOCK_KEY}
            got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), key).scalar()
            # a session lock outlives the transaction: end it, so the connection does not sit
            # idle in a transaction for the whole retrain (servers may kill such sessions)
            conn.commit()
            if not got:
                raise PipelineBusy(BUSY)
            try:
                yield
            finally:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), key)
                    conn.commit()
                except Exception:  # the session is gone (so is its lock), or it is broken:
                    conn.invalidate()  # never hand a connection that may hold it back to the pool
        return
    with _lock_path().open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise PipelineBusy(BUSY) from exc
        yield
