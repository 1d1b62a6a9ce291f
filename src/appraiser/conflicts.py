"""Conflicting prices: a stone already known, sent again at a materially different price.

Duplicates compare all ten columns, so the same stone (same nine features, lineage.stone_keys's
identity) at another price is not one, and without this both prices would train. A stone whose
price differs by more than CONFLICT_LOG from the price the store knows for it, or that a file
sends several times at prices that far apart, is a conflict: its rows are kept in a batch of their
own, `held` with the reason, so an admin reviews them like a held batch (`appraiser batches`,
release or drop) and nothing trains on them meanwhile.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import insert
from sqlalchemy.orm import Session

from appraiser import schema, store

# The same stone appraised twice honestly differs by a few percent (a market move, an appraiser's
# judgement); 10% in log terms is beyond the champion's typical error on a plain stone (about 5%),
# so a larger gap says one of the two prices is wrong, not that the market moved.
CONFLICT_LOG = 0.10
STORE_CONFLICT = (
    "conflicting price: the store knows this stone at ${known:,.0f} (batch {batch}), {gap:+.0%}"
)
FILE_CONFLICT = (
    "conflicting price: this file sends the stone {count} times, ${low:,.0f} to ${high:,.0f}"
)


def find(clean: pd.DataFrame, stored: pd.DataFrame) -> pd.Series:
    """For each row of `clean`, why its price conflicts with the store's or the file's own for
    the same stone, else None (indexed like `clean`)."""
    why = pd.Series([None] * len(clean), index=clean.index, dtype=object)
    if clean.empty:
        return why
    keys = list(schema.FEATURES)
    log_price = np.log(clean[schema.TARGET].to_numpy(dtype=float))
    if not stored.empty:
        known = (
            stored.assign(log_price=np.log(stored[schema.TARGET].to_numpy(dtype=float)))
            .groupby(keys, sort=False, observed=True)
            .agg(known=("log_price", "median"), batch=("batch_id", "min"))
            .reset_index()
        )
        merged = clean[keys].merge(known, on=keys, how="left", validate="many_to_one")
        gap = log_price - merged["known"].to_numpy(dtype=float)
        far = np.abs(gap) > CONFLICT_LOG  # NaN (an unknown stone) is never far
        for i in np.flatnonzero(far):
            why.iloc[i] = STORE_CONFLICT.format(
                known=float(np.exp(merged["known"].iloc[i])),
                batch=int(merged["batch"].iloc[i]),
                gap=float(np.expm1(gap[i])),
            )
    spread = clean.assign(log_price=log_price).groupby(keys, sort=False, observed=True)["log_price"]
    low, high, count = spread.transform("min"), spread.transform("max"), spread.transform("size")
    within = ((high - low) > CONFLICT_LOG).to_numpy() & why.isna().to_numpy()
    for i in np.flatnonzero(within):
        why.iloc[i] = FILE_CONFLICT.format(
            count=int(count.iloc[i]),
            low=float(np.exp(low.iloc[i])),
            high=float(np.exp(high.iloc[i])),
        )
    return why


def hold(
    session: Session,
    rows: pd.DataFrame,
    reasons: pd.Series,
    *,
    of: store.Batch,
) -> int | None:
    """Keep conflicting `rows` (line plus the ten columns) as a held batch beside batch `of`, in
    the caller's transaction; returns its id (None when there are none)."""
    if rows.empty:
        return None
    counted = reasons.value_counts()
    said = (
        f"{len(rows):,} stones of batch {of.id} at conflicting prices, held for review: "
        + "; ".join(f"{r} ({n})" if n > 1 else r for r, n in counted.head(5).items())
    )
    batch = store.Batch(
        source=of.source,
        file_name=f"{of.file_name} (conflicting prices)"[:2000],
        # its own identity, derived from the file's: the file is still ingested once
        file_hash=hashlib.sha256(f"{of.file_hash}:conflicts".encode()).hexdigest(),
        rows_read=len(rows),
        rows_accepted=len(rows),
        rows_rejected=0,
        status="held",
        status_reason=said[:5000],
    )
    session.add(batch)
    session.flush()
    records: list[dict[str, Any]] = [
        {"batch_id": batch.id, "line": int(r["line"]), **{c: r[c] for c in schema.COLUMNS}}
        for r in rows[["line", *schema.COLUMNS]].to_dict("records")
    ]
    session.connection().execute(insert(store.Base.metadata.tables["diamonds"]), records)
    return batch.id
