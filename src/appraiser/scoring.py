"""Pricing a raw table: validation, then the model, a reason for each row it could not price.

Its own module so that the registry's pyfunc and the Appraiser both use it without importing each
other (predict imports registry; registry imports this).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from appraiser import data
from appraiser.models import PriceModel


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
