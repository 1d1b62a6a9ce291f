"""Which stones each model saw: stone keys, the fixed roles of stored stones, and lineage records.

A stone's key is a 64-bit hash of its nine features (never its price: a re-priced stone is the same
stone and keeps its role). The key decides, once and for all, the role a stored stone plays:

- `sealed` (1 in 20): no model trains on it and no decision reads it; it only reports, over time,
  how good the champion really is (decisions made on a set wear it out, see Cawley & Talbot 2010);
- `train` (the rest): what retrains learn from, and what judges a challenger: each such stone is
  priced by the champion's recipe and the challenger's, both refitted without it (double
  cross-fitting, challenge.py), so no stone has to be kept from training to judge.

Every registered version records the keys of the stones it trained on (`model_versions` in the
store, and an artifact of its MLflow run), so a comparison can keep only stones that neither model
trained on, whatever trained them (`appraiser train` on a file, a retrain, feedback).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from appraiser import schema, store

BUCKETS = 20
SEALED_BUCKETS = frozenset({0})
ROLES = ("train", "sealed")


def stone_keys(stones: pd.DataFrame) -> np.ndarray:
    """The 64-bit key of each stone: BLAKE2b of its nine features in a canonical text (numbers as
    Python's shortest round-trip repr, grades as written), as uint64.

    Our own definition, not a library's internal hash: keys are stored for good and fix each
    stone's role, so they must not change with a pandas upgrade (a test pins known values).
    """
    numbers = [stones[c].to_numpy(dtype=float) for c in schema.NUMERIC_FEATURES]
    grades = [stones[c].astype(str).to_numpy(dtype=object) for c in schema.GRADE_COLUMNS]
    out = np.empty(len(stones), dtype=np.uint64)
    for i, row in enumerate(zip(*numbers, *grades, strict=True)):
        text = "|".join(repr(float(v) + 0.0) for v in row[: len(numbers)])  # -0.0 is 0.0
        text += "|" + "|".join(row[len(numbers) :])
        out[i] = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return out


def roles(stones: pd.DataFrame | np.ndarray) -> np.ndarray:
    """'train' or 'sealed' for each stone (or key), fixed by the stone's features."""
    keys = stones if isinstance(stones, np.ndarray) else stone_keys(stones)
    bucket = keys % np.uint64(BUCKETS)
    out = np.full(len(keys), "train", dtype=object)
    out[np.isin(bucket, list(SEALED_BUCKETS))] = "sealed"
    return out


def pack(keys: np.ndarray) -> bytes:
    """Keys as compact bytes (sorted, unique, zlib): 53,940 stones take ~400 kB."""
    return zlib.compress(np.unique(np.asarray(keys, dtype=np.uint64)).tobytes(), 6)


def unpack(blob: bytes | None) -> np.ndarray:
    if not blob:
        return np.empty(0, dtype=np.uint64)
    return np.frombuffer(zlib.decompress(blob), dtype=np.uint64)


@dataclass
class Lineage:
    """What one model version trained on."""

    version: str
    keys: np.ndarray  # sorted unique stone keys
    source: str
    batches: list[int]
    max_batch_id: int | None  # the newest store batch a retrain saw (None: not from the store)
    max_feedback_id: int | None

    def trained_on(self, keys: np.ndarray) -> np.ndarray:
        """True where a key is one of this version's training stones."""
        return np.isin(keys, self.keys, assume_unique=False)


def record(
    version: str,
    stones: pd.DataFrame,
    *,
    run_id: str,
    source: str,
    kind: str,
    max_batch_id: int | None = None,
    max_feedback_id: int | None = None,
    decision: dict[str, Any] | None = None,
    batches: list[int] | None = None,
    url: str | None = None,
) -> None:
    """Keep, for a new version, the keys of the stones it trained on, the store batches it saw
    (default: those of its stones) and the decision made about it."""
    if batches is None:
        batches = (
            sorted(int(b) for b in stones["batch_id"].dropna().unique())
            if "batch_id" in stones
            else []
        )
    store.ready(url)
    with store.session(url) as s, s.begin():
        s.merge(
            store.ModelVersionRecord(
                version=str(version),
                run_id=run_id,
                kind=kind,
                source=source[:2000],
                stones=len(stones),
                batches=json.dumps(batches),
                max_batch_id=max_batch_id,
                max_feedback_id=max_feedback_id,
                training_keys=pack(stone_keys(stones)),
                decision=json.dumps(decision, default=str) if decision is not None else None,
            )
        )


def record_outcome(version: str, promoted: bool, said: str, url: str | None = None) -> None:
    """Add what finally happened to a version's stored decision (a compare-and-set may refuse)."""
    store.ready(url)
    with store.session(url) as s, s.begin():
        row = s.get(store.ModelVersionRecord, str(version))
        if row is None:
            return
        decision = json.loads(row.decision or "{}")
        decision.update(promoted=promoted, outcome=said)
        row.decision = json.dumps(decision, default=str)


def load(version: str, url: str | None = None) -> Lineage | None:
    """The lineage of a version, or None when it was registered before lineage was recorded."""
    store.ready(url)
    with store.session(url) as s:
        row = s.get(store.ModelVersionRecord, str(version))
        if row is None:
            return None
        return Lineage(
            version=row.version,
            keys=unpack(row.training_keys),
            source=row.source,
            batches=json.loads(row.batches or "[]"),
            max_batch_id=row.max_batch_id,
            max_feedback_id=row.max_feedback_id,
        )


@dataclass
class Attempt:
    """What the last retrain (promoted or not) had seen: a pass retrains only for what is new."""

    version: str
    batches: set[int]  # every store batch in use then (a batch released later is new)
    max_feedback_id: int


def last_attempt(url: str | None = None) -> Attempt | None:
    """The newest retrain's view of the store, or None when nothing was retrained yet."""
    store.ready(url)
    table = store.ModelVersionRecord
    with store.session(url) as s:
        row = s.scalars(
            select(table).where(table.kind == "retrain").order_by(table.created_at.desc()).limit(1)
        ).first()
        if row is None:
            return None
        return Attempt(row.version, set(json.loads(row.batches or "[]")), row.max_feedback_id or 0)


def decisions(url: str | None = None) -> dict[str, dict[str, Any]]:
    """The stored decision of every version that has one, by version."""
    store.ready(url)
    with store.session(url) as s:
        rows = s.execute(
            select(store.ModelVersionRecord.version, store.ModelVersionRecord.decision)
        ).all()
    return {v: json.loads(d) for v, d in rows if d}
