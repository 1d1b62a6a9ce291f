"""The market level in the store: the dated stones it is estimated from, the series kept in
`market_levels`, and a refresh that prices those stones with the champion (appraiser.market
estimates; this module reads and writes)."""

from __future__ import annotations

import json

import pandas as pd
from sqlalchemy import Engine, delete, insert, select

from appraiser import clock, market, schema
from appraiser.store.migrate import ready
from appraiser.store.tables import Base, MarketLevel


def dated_stones(
    engine: Engine | None = None, statuses: tuple[str, ...] = ("accepted",)
) -> pd.DataFrame:
    """The stones of batches with one of `statuses`: the 10 columns, `appraised_at` (the day
    the file gave, else the UTC day its batch arrived), `source` and `batch_id`, by id."""
    engine = engine or ready()
    stones, batches = Base.metadata.tables["diamonds"], Base.metadata.tables["batches"]
    query = (
        select(
            *(stones.c[c] for c in schema.COLUMNS),
            stones.c.appraised_at,
            stones.c.batch_id,
            batches.c.source,
            batches.c.received_at,
        )
        .join(batches, stones.c.batch_id == batches.c.id)
        .where(batches.c.status.in_(statuses))
        .order_by(stones.c.id)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    names = [*schema.COLUMNS, schema.APPRAISED_AT, "batch_id", "source", "received_at"]
    # column-wise, and each batch's day once: a retrain and every refresh read all the stones
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    frame = pd.DataFrame(
        {n: pd.Series(list(c), dtype=object) for n, c in zip(names, columns, strict=True)}
    )
    arrivals = dict(zip(frame["batch_id"], frame["received_at"], strict=True))
    days = {b: clock.utc(at).date() for b, at in arrivals.items()}
    arrived = frame["batch_id"].map(days)
    given = frame[schema.APPRAISED_AT]
    frame[schema.APPRAISED_AT] = given.where(given.notna(), arrived).astype(object)
    frame["batch_id"] = frame["batch_id"].astype("int64")
    for name in schema.NUMERIC_COLUMNS:
        frame[name] = frame[name].astype(float)
    return frame.drop(columns="received_at")


def save(series: market.Series, engine: Engine | None = None) -> None:
    """Replace the stored series with `series`, in one transaction (readers see the old one or
    the new one, never half of each)."""
    engine = engine or ready()
    by_month: dict[str, list[dict[str, object]]] = {}
    for gone in series.excluded:
        by_month.setdefault(gone.month.isoformat(), []).append(gone.to_dict())
    computed = series.computed_at or clock.now()
    rows = [
        {
            "month": level.month,
            "level": level.level,
            "low": level.low,
            "high": level.high,
            "observed": level.observed,
            "stones": level.stones,
            "excluded": level.excluded,
            "model_version": series.model_version,
            "computed_at": computed,
            "details": json.dumps(by_month[key]) if (key := str(level.month)) in by_month else None,
        }
        for level in series.months
    ]
    with engine.begin() as conn:
        conn.execute(delete(MarketLevel))
        if rows:
            conn.execute(insert(MarketLevel), rows)


def load(engine: Engine | None = None) -> market.Series:
    """The stored series (empty before the first refresh: the base level, 1.0, on every day)."""
    engine = engine or ready()
    with engine.connect() as conn:
        rows = conn.execute(select(MarketLevel).order_by(MarketLevel.month)).all()
    months = tuple(
        market.Level(
            month=r.month,
            level=r.level,
            low=r.low,
            high=r.high,
            stones=r.stones,
            observed=r.observed,
            excluded=r.excluded,
        )
        for r in rows
    )
    excluded = tuple(
        market.Exclusion(
            month=r.month,
            source=str(e["source"]),
            stones=int(e["stones"]),
            level=float(e["level"]),
            market=float(e["market"]),
        )
        for r in rows
        for e in json.loads(r.details or "[]")
    )
    return market.Series(
        months,
        excluded,
        model_version=rows[-1].model_version if rows else None,
        computed_at=clock.utc(rows[-1].computed_at) if rows else None,
    )


def refresh(
    price: market.Pricer, version: str | None, engine: Engine | None = None
) -> market.Series:
    """Estimate the level from the accepted stones priced by `price` (the champion's prices on
    the base level, by model `version`), store it and return it."""
    engine = engine or ready()
    stones = dated_stones(engine)
    if len(stones):
        stones["predicted"] = price(stones[list(schema.FEATURES)])
    series = market.estimate(stones, model_version=version)
    save(series, engine)
    return series
