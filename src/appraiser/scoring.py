"""Pricing a raw table: validation, then the model, a reason for each row it could not price.

Its own module so that the registry's pyfunc and the Appraiser both use it without importing each
other (predict imports registry; registry imports this).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from appraiser import data, features, schema
from appraiser.models import PriceModel


def score_frame(
    model: PriceModel, raw: pd.DataFrame, first_line: int = 2, level: float = 1.0
) -> pd.DataFrame:
    """Price every row of a raw table: the input columns plus price, price_low, price_high, error
    (and bargain_probability when the table has an asking_price column). The prices are the
    model's times `level`, the market level of the day they are for (1.0: the base level).

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
            values[good] = (prices[column].to_numpy() * level).round(2)
        out[column] = values
    if ASKING in out.columns:  # the deal check for rows with an asking price
        from appraiser.explain import verdict

        asking = pd.to_numeric(out[ASKING], errors="coerce").to_numpy(dtype=float)
        given = out[ASKING].notna().to_numpy() & (out[ASKING].astype(str).str.strip() != "")
        chance = np.full(len(out), np.nan)
        verdicts = np.full(len(out), "", dtype=object)
        deal_errors = np.full(len(out), "", dtype=object)
        valid = np.isfinite(asking) & (asking > 0) & (asking <= ASKING_HIGH)
        deal_errors[given & ~valid] = ASKING_RULE
        rows = np.flatnonzero(good)
        usable = valid[rows]
        if usable.any():
            matrix = features.encode(checked.clean).to_numpy()[usable]
            # P(level x price on the base level > asking) = P(base price > asking / level)
            found = model.prob_above_matrix(matrix, asking[rows[usable]] / level)
            chance[rows[usable]] = np.clip(found, 0.001, 0.999).round(3)
            # from the unrounded probability, as the single-stone answer does
            verdicts[rows[usable]] = [verdict(p) for p in found.tolist()]
        out["bargain_probability"] = chance
        out["verdict"] = verdicts
        out["deal_error"] = deal_errors
    errors = np.full(len(out), "", dtype=object)
    errors[~good] = checked.rejected["reasons"].to_numpy()
    out["error"] = errors
    return out


ASKING = "asking_price"  # an optional column: adds bargain_probability, P(market > asking)
ASKING_HIGH = schema.ASKING_PRICE_HIGH
ASKING_RULE = f"asking_price: must be a number > 0 and <= {ASKING_HIGH:,.0f} (no deal check)"
