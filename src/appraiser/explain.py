"""Why a price: contributions in dollars, comparable stones, the price range and its warnings.

Contributions in dollars. The tree models explain log price exactly (TreeSHAP, the boosters' own
`pred_contribs`): log p = b + sum_i phi_i. In dollars the price is p = exp(b) x prod_i exp(phi_i),
which is not a sum. We scale each phi_i by the logarithmic mean of the baseline price B = exp(b)
and the price p:

    d_i = phi_i x (p - B) / (log p - b)

so that B + sum_i d_i = p exactly, each d_i keeps the sign of phi_i, and features that move log
price equally get equal dollars. When p = B the factor is B itself (the limit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from appraiser import schema
from appraiser.models import BASELINE, PriceModel


def conformal_halfwidth(log_residuals: np.ndarray, coverage: float = 0.9) -> float:
    """Split-conformal half-width in log price: the ceil((n+1) coverage)-th smallest |residual|.

    Residuals must come from stones the model did not see (out-of-fold). Then a new stone's true
    price falls in price x exp(+-halfwidth) with probability >= coverage (exchangeability).
    """
    scores = np.sort(np.abs(np.asarray(log_residuals, dtype=float)))
    n = len(scores)
    rank = int(np.ceil((n + 1) * coverage))
    return float(scores[min(rank, n) - 1])


MIN_BAND_STONES = 30


def banded_halfwidths(
    log_residuals: np.ndarray, carats: np.ndarray, coverage: float
) -> list[float]:
    """Mondrian split conformal: one half-width per carat band (schema.CARAT_EDGES).

    A single width over-covers the common small stones and under-covers the rare heavy ones;
    calibrating within each band gives every band its own coverage guarantee. A band with fewer
    than MIN_BAND_STONES residuals takes the width of all stones together.
    """
    residuals = np.asarray(log_residuals, dtype=float)
    bands = schema.carat_band_index(np.asarray(carats, dtype=float))
    overall = conformal_halfwidth(residuals, coverage)
    widths = []
    for band in range(len(schema.CARAT_LABELS)):
        mine = residuals[bands == band]
        widths.append(
            conformal_halfwidth(mine, coverage) if len(mine) >= MIN_BAND_STONES else overall
        )
    return widths


def dollar_contributions(log_contribs: pd.DataFrame) -> pd.DataFrame:
    """Map log-price contributions (per feature + BASELINE) to dollars that add up to the price."""
    baseline = log_contribs[BASELINE].to_numpy()
    parts = log_contribs.drop(columns=[BASELINE])
    delta = parts.sum(axis=1).to_numpy()
    base_price = np.exp(baseline)
    # (exp(b + delta) - exp(b)) / delta, computed stably; -> exp(b) as delta -> 0
    safe = np.where(np.abs(delta) < 1e-12, 1.0, delta)
    scale = np.where(np.abs(delta) < 1e-12, base_price, base_price * np.expm1(delta) / safe)
    dollars = parts.mul(scale, axis=0)
    dollars.insert(0, BASELINE, base_price)
    return dollars


def comparables(reference: pd.DataFrame, stone: pd.Series | dict, n: int = 5) -> pd.DataFrame:
    """The n stones of the collection most like this one.

    Same cut, color and clarity; the nearest carat first, ties broken by the nearest measurements.
    Fewer than n come back when the collection has fewer stones of those grades.
    """
    stone = pd.Series(stone)
    same = reference
    for grade in schema.GRADE_COLUMNS:
        same = same[same[grade] == stone[grade]]
    if same.empty or n <= 0:
        return same.iloc[:0].assign(carat_difference=[])
    carat_gap = (same["carat"] - float(stone["carat"])).abs()
    size_gap = np.sqrt(sum((same[c] - float(stone[c])) ** 2 for c in ("x", "y", "z")))
    order = np.lexsort((size_gap.to_numpy(), carat_gap.round(4).to_numpy()))[:n]
    chosen = same.iloc[order]
    return chosen.assign(carat_difference=(chosen["carat"] - float(stone["carat"])).round(4))


def warnings_for(reference: pd.DataFrame, stone: pd.Series | dict) -> list[str]:
    """Plain-language warnings when a stone lies outside what the model has seen."""
    stone = pd.Series(stone)
    out = []
    for column in schema.NUMERIC_FEATURES:
        low, high = reference[column].min(), reference[column].max()
        value = float(stone[column])
        if value < low or value > high:
            out.append(
                f"{column} {value:g} is outside the training collection's range "
                f"({low:g} to {high:g}): the price is an extrapolation, treat it with care"
            )
    grades = reference
    for grade in schema.GRADE_COLUMNS:
        grades = grades[grades[grade] == stone[grade]]
    if grades.empty:
        out.append("no stone of the training collection has this cut, color and clarity together")
    return out


@dataclass
class Explanation:
    """One stone's price, its range, the dollars each characteristic adds, and similar stones."""

    stone: dict
    price: float
    price_low: float
    price_high: float
    coverage: float
    baseline: float
    contributions: dict[str, float]
    comparables: pd.DataFrame
    warnings: list[str]

    def as_dict(self) -> dict:
        return {
            "stone": self.stone,
            "price": self.price,
            "price_low": self.price_low,
            "price_high": self.price_high,
            "coverage": self.coverage,
            "baseline": self.baseline,
            "contributions": self.contributions,
            "comparables": self.comparables.to_dict(orient="records"),
            "warnings": self.warnings,
        }


def explain(model: PriceModel, stones: pd.DataFrame, n_comparables: int = 5) -> list[Explanation]:
    """Explain each validated stone: price, range, dollar contributions, comparables, warnings."""
    prices = model.predict(stones)
    dollars = dollar_contributions(model.contributions(stones))
    out = []
    for i, (_, stone) in enumerate(stones.iterrows()):
        row = dollars.iloc[i]
        out.append(
            Explanation(
                stone={k: stone[k] for k in schema.FEATURES},
                price=float(prices["price"].iloc[i]),
                price_low=float(prices["price_low"].iloc[i]),
                price_high=float(prices["price_high"].iloc[i]),
                coverage=model.coverage,
                baseline=float(row[BASELINE]),
                contributions={k: float(row[k]) for k in schema.FEATURES},
                comparables=comparables(model.reference, stone, n_comparables),
                warnings=warnings_for(model.reference, stone),
            )
        )
    return out


def global_importance(model: PriceModel, stones: pd.DataFrame) -> pd.Series:
    """Mean absolute dollar contribution per feature over a set of stones, largest first."""
    dollars = dollar_contributions(model.contributions(stones)).drop(columns=[BASELINE])
    return dollars.abs().mean().sort_values(ascending=False)
