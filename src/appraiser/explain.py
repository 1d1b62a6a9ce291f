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

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from appraiser import features, schema
from appraiser.market_day import MARKET_TERM, MarketDay
from appraiser.models import BASELINE, CONTRIBUTION_COLUMNS, PriceModel


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


def dollars_from_log(log_contribs: np.ndarray, log_price: np.ndarray | None = None) -> np.ndarray:
    """Log-price contributions (models.CONTRIBUTION_COLUMNS, baseline last) to dollars that add
    up to the price, by the logarithmic-mean scaling above; the baseline becomes exp(b).

    Given the model's own `log_price`, the parts are first scaled to sum to log_price - baseline:
    XGBoost returns contributions in single precision, whose sum misses the price by up to a
    cent or two; scaled, the dollars add up to the price the model gives."""
    baseline = log_contribs[:, -1]
    parts = log_contribs[:, :-1]
    if log_price is not None:
        total = parts.sum(axis=1)
        wanted = np.asarray(log_price, dtype=float) - baseline
        ratio = np.divide(wanted, total, out=np.ones_like(total), where=np.abs(total) > 1e-9)
        parts = parts * ratio[:, None]
    delta = parts.sum(axis=1)
    base_price = np.exp(baseline)
    # (exp(b + delta) - exp(b)) / delta, computed stably; -> exp(b) as delta -> 0
    small = np.abs(delta) < 1e-12
    scale = np.where(small, base_price, base_price * np.expm1(delta) / np.where(small, 1.0, delta))
    return np.column_stack([parts * scale[:, None], base_price])


def dollar_contributions(log_contribs: pd.DataFrame) -> pd.DataFrame:
    """Map log-price contributions (per feature + BASELINE) to dollars that add up to the price."""
    ordered = log_contribs[list(CONTRIBUTION_COLUMNS)].to_numpy(dtype=float)
    dollars = pd.DataFrame(
        dollars_from_log(ordered), columns=list(CONTRIBUTION_COLUMNS), index=log_contribs.index
    )
    return dollars[[BASELINE, *features.REASONS]]


def grade_what_ifs(
    model: PriceModel, matrix: np.ndarray, factor: float = 1.0
) -> list[dict[str, dict[str, Any]]]:
    """For each stone (encoded) and grade: the grade one step better and one worse, and the price
    the model gives the same stone with it, times `factor` (the market level; None at the end of
    a scale). One model call."""
    variants = []
    where: list[tuple[int, str, str, float]] = []  # stone, grade, "better"/"worse", code
    for grade in schema.GRADE_COLUMNS:
        j = features.ENCODED.index(grade)
        top = len(schema.GRADES[grade]) - 1
        for side, step in (("better", 1.0), ("worse", -1.0)):
            codes = matrix[:, j] + step
            for row in np.flatnonzero((codes >= 0) & (codes <= top)).tolist():
                changed = matrix[row].copy()
                changed[j] = codes[row]
                variants.append(changed)
                where.append((row, grade, side, float(codes[row])))
    out: list[dict[str, dict[str, Any]]] = [
        {g: {"better": None, "worse": None} for g in schema.GRADE_COLUMNS} for _ in matrix
    ]
    if variants:
        prices = np.exp(model.predict_log_matrix(np.vstack(variants))) * factor  # no ranges
        for (row, grade, side, code), price in zip(where, prices.tolist(), strict=True):
            out[row][grade][side] = {
                "grade": schema.GRADES[grade][int(code)],
                "price": round(float(price), 2),
            }
    return out


# The deal check's verdicts: P(market price > asking price) from the model's predictive
# distribution (models.AdaptiveRange); its calibration is measured by benchmarks/accuracy.py.
BELOW_MARKET = 0.75  # at least this likely that the market pays more: a bargain
ABOVE_MARKET = 0.25  # at most this likely: the asking price is above what the market pays


def verdict(bargain_probability: float) -> str:
    """'below market', 'fair' or 'above market', from the unrounded probability."""
    p = float(bargain_probability)
    return "below market" if p >= BELOW_MARKET else "above market" if p <= ABOVE_MARKET else "fair"


def deal(asking_price: float, bargain_probability: float) -> dict[str, Any]:
    """The deal check for one stone: the probability, a plain verdict and a sentence."""
    p = float(bargain_probability)
    said = {
        "below market": "likely a bargain",
        "above market": "likely more than the market pays",
        "fair": "within what the market pays",
    }[verdict(p)]
    shown = min(max(p, 0.001), 0.999)  # a probability from data is never exactly 0 or 1
    return {
        "asking_price": float(asking_price),
        "bargain_probability": round(shown, 3),
        "verdict": verdict(p),
        "message": f"${asking_price:,.0f} is {said}: the market price is above it with "
        f"probability {shown:.0%}",
    }


GradeKey = tuple[str, str, str]
_NUMERIC = operator.itemgetter(*schema.NUMERIC_FEATURES)
_GRADE_AT = [features.ENCODED.index(c) for c in schema.GRADE_COLUMNS]
_FEW = 16  # up to this many stones, warnings_all checks each one in Python
_SIZES = [len(order) for order in schema.GRADES.values()]
_TRIO_PLACES = np.array([_SIZES[1] * _SIZES[2], _SIZES[2], 1], dtype=np.int64)  # mixed radix
_TRIOS = int(np.prod(_SIZES))
SPARSE_K = 10  # neighbours that describe a stone's surroundings
SPARSE_QUANTILE = 0.99  # farther than this share of the collection's own stones: sparse


class ReferenceIndex:
    """The training collection indexed once per loaded model, for per-request lookups.

    Comparable stones and out-of-range warnings are asked for on every explained appraisal;
    filtering a 50,000-row DataFrame three times per request would cost more than the model.
    """

    def __init__(self, reference: pd.DataFrame) -> None:
        self.frame = reference.reset_index(drop=True)
        self.low = {c: float(self.frame[c].min()) for c in schema.NUMERIC_FEATURES}
        self.high = {c: float(self.frame[c].max()) for c in schema.NUMERIC_FEATURES}
        self.carat = self.frame["carat"].to_numpy(dtype=float)
        self.size = self.frame[["x", "y", "z"]].to_numpy(dtype=float)
        # plain Python values per column, so answering a request never touches pandas
        self.values = {
            c: self.frame[c].astype(str if c in schema.GRADES else float).tolist()
            for c in schema.COLUMNS
        }
        self._density_index()
        keys = self.frame[list(schema.GRADE_COLUMNS)].astype(str)
        self.groups: dict[GradeKey, np.ndarray] = {
            (str(key[0]), str(key[1]), str(key[2])): np.asarray(rows, dtype=np.int64)
            for key, rows in keys.groupby(list(schema.GRADE_COLUMNS), sort=False).indices.items()
        }
        # the same, as arrays for warnings_all: bounds in NUMERIC_FEATURES order; each
        # (cut, color, clarity) numbered by its grade codes, and whether the collection has it
        self._low = np.array([self.low[c] for c in schema.NUMERIC_FEATURES])
        self._high = np.array([self.high[c] for c in schema.NUMERIC_FEATURES])
        codes = {c: {g: i for i, g in enumerate(order)} for c, order in schema.GRADES.items()}
        self._known_trio = np.zeros(_TRIOS, dtype=bool)
        for key in self.groups:
            if all(g in codes[c] for c, g in zip(schema.GRADE_COLUMNS, key, strict=True)):
                trio = [codes[c][g] for c, g in zip(schema.GRADE_COLUMNS, key, strict=True)]
                self._known_trio[int(np.dot(trio, _TRIO_PLACES))] = True

    def _density_index(self) -> None:
        """A k-d tree of the collection in the model's terms (log carat, shape, grade codes, each
        scaled by its spread), and how far the SPARSE_K-th nearest stone usually is: a stone whose
        neighbours are farther than for 99% of the collection's own stones is in a sparse region,
        where the model has little to go on even inside the min-max range."""
        from scipy.spatial import cKDTree

        self._scale: np.ndarray | None = None
        if len(self.frame) <= SPARSE_K + 1:
            return
        points = self._points(features.encode(self.frame).to_numpy())
        self._scale = points.std(axis=0) + 1e-9
        self._tree = cKDTree(points / self._scale)
        distances, _ = self._tree.query(points / self._scale, k=SPARSE_K + 1)  # itself first
        self.sparse_distance = float(np.quantile(distances[:, -1], SPARSE_QUANTILE))
        # each stone's distance to its (SPARSE_K - 1)-th nearest other stone: with the stone
        # itself, SPARSE_K stones lie that close to it (the shortcut in `sparse`)
        self._own_reach = distances[:, SPARSE_K - 1]

    @staticmethod
    def _points(matrix: np.ndarray) -> np.ndarray:
        points = matrix.copy()
        points[:, features.ENCODED.index("carat")] = np.log(points[:, 0])
        return points

    def sparse(self, matrix: np.ndarray) -> np.ndarray:
        """True for encoded stones with few training stones like them."""
        if self._scale is None:
            return np.zeros(len(matrix), dtype=bool)
        points = self._points(matrix) / self._scale
        # Most stones are settled by their nearest stone alone (a k=1 query costs a tenth of
        # k=SPARSE_K): if the nearest stone is d away and SPARSE_K stones lie within r of it,
        # those lie within d + r of this one (triangle inequality), so d + r under the limit
        # means not sparse; the nearest already past the limit means sparse. The rest, near the
        # limit, get the full query; the answers are those of the full query for every stone.
        nearest, which = self._tree.query(points, k=1)
        reach = nearest + self._own_reach[which]
        sure_dense = reach < self.sparse_distance * (1 - 1e-9)  # margin for rounding
        sparse = nearest > self.sparse_distance
        unsure = np.flatnonzero(~sure_dense & ~sparse)
        if len(unsure):
            distances, _ = self._tree.query(points[unsure], k=SPARSE_K)
            sparse[unsure] = distances[:, -1] > self.sparse_distance
        return np.asarray(sparse)

    def _key(self, stone: Mapping[str, Any]) -> GradeKey:
        return (str(stone["cut"]), str(stone["color"]), str(stone["clarity"]))

    def _nearest(self, stone: Mapping[str, Any], n: int) -> np.ndarray:
        rows = self.groups.get(self._key(stone), np.empty(0, dtype=np.int64))
        if n <= 0 or len(rows) == 0:
            return rows[:0]
        carat = float(stone["carat"])
        carat_gap = np.abs(self.carat[rows] - carat).round(4)
        if all(stone.get(c) is not None for c in ("x", "y", "z")):
            target = np.array([float(stone["x"]), float(stone["y"]), float(stone["z"])])
            size_gap = np.sqrt(((self.size[rows] - target) ** 2).sum(axis=1))
        else:  # asked by carat and grades only
            size_gap = np.zeros(len(rows))
        return rows[np.lexsort((size_gap, carat_gap))[:n]]

    def comparables(self, stone: Mapping[str, Any], n: int = 5) -> pd.DataFrame:
        """The n stones of the collection most like this one.

        Same cut, color and clarity; the nearest carat first, ties broken by the nearest
        measurements (when x, y and z are given). Fewer than n come back when the collection
        has fewer stones of those grades.
        """
        chosen = self.frame.iloc[self._nearest(stone, n)]
        difference = (chosen["carat"] - float(stone["carat"])).round(4)
        return chosen.assign(carat_difference=difference)

    def comparable_records(self, stone: Mapping[str, Any], n: int = 5) -> list[dict[str, Any]]:
        """`comparables` as a list of dicts (schema.COLUMNS and carat_difference), fast."""
        carat = float(stone["carat"])
        out = []
        for row in self._nearest(stone, n).tolist():
            record = {c: self.values[c][row] for c in schema.COLUMNS}
            record["carat_difference"] = round(record["carat"] - carat, 4)
            out.append(record)
        return out

    def warnings_all(
        self, matrix: np.ndarray, stones: Sequence[Mapping[str, Any]]
    ) -> list[list[str]]:
        """`warnings` for many stones, given their encoded matrix too: the range, grade and
        density checks vectorised; the sentences are written only for the stones that need them
        (a fresh empty list for the others)."""
        lonely = self.sparse(matrix)
        if len(stones) <= _FEW:  # numpy's per-call cost outweighs a few stones' Python checks
            alone = lonely.tolist()
            return [self.warnings(s, sparse=a) for s, a in zip(stones, alone, strict=True)]
        values = np.array([_NUMERIC(stone) for stone in stones], dtype=float).reshape(-1, 6)
        outside = ((values < self._low) | (values > self._high)).any(axis=1)
        unknown = ~self._known_trio[matrix[:, _GRADE_AT].astype(np.int64) @ _TRIO_PLACES]
        unusual = np.flatnonzero(outside | unknown | lonely).tolist()
        out: list[list[str]] = [[] for _ in range(len(stones))]
        for i in unusual:
            out[i] = self.warnings(stones[i], sparse=bool(lonely[i]))
        return out

    def warnings(self, stone: Mapping[str, Any], sparse: bool | None = None) -> list[str]:
        """Plain-language warnings when a stone lies outside what the model has seen."""
        out = []
        if sparse is None:
            sparse = bool(self.sparse(features.encode_stones([stone]))[0])
        if sparse:
            out.append(
                f"few stones of the training collection resemble this one (its {SPARSE_K} "
                f"nearest are farther than for {SPARSE_QUANTILE:.0%} of the collection's stones): "
                "the price rests on little evidence, treat it with care"
            )
        for column in schema.NUMERIC_FEATURES:
            low, high = self.low[column], self.high[column]
            value = float(stone[column])
            if value < low or value > high:
                out.append(
                    f"{column} {value:g} is outside the training collection's range "
                    f"({low:g} to {high:g}): the price is an extrapolation, treat it with care"
                )
        if self._key(stone) not in self.groups:
            out.append(
                "no stone of the training collection has this cut, color and clarity together"
            )
        return out


def comparables(reference: pd.DataFrame, stone: Mapping[str, Any], n: int = 5) -> pd.DataFrame:
    """The n stones of `reference` most like `stone` (see ReferenceIndex.comparables)."""
    return ReferenceIndex(reference).comparables(stone, n)


def warnings_for(reference: pd.DataFrame, stone: Mapping[str, Any]) -> list[str]:
    """Warnings when `stone` lies outside `reference` (see ReferenceIndex.warnings)."""
    return ReferenceIndex(reference).warnings(stone)


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
    what_if: dict[str, dict[str, Any]]
    market_level: dict[str, Any] | None = None  # MarketDay.field: the level the price is at

    def as_dict(self) -> dict:
        return {
            "market_level": self.market_level,
            "stone": self.stone,
            "price": self.price,
            "price_low": self.price_low,
            "price_high": self.price_high,
            "coverage": self.coverage,
            "baseline": self.baseline,
            "contributions": self.contributions,
            "comparables": self.comparables.to_dict(orient="records"),
            "warnings": self.warnings,
            "what_if": self.what_if,
        }


def explain_stones(
    model: PriceModel,
    stones: Sequence[Mapping[str, Any]],
    n_comparables: int = 5,
    index: ReferenceIndex | None = None,
    market: MarketDay | None = None,
) -> list[Explanation]:
    """Explain validated stones (mappings of schema.FEATURES): price, range, dollars, comparables,
    warnings. Pass the model's `index` when explaining often (building it scans the collection).
    With a `market` level other than 1.0, the prices are the model's times the level and the
    contributions gain `market`, price on the base level x (level - 1), so they still add up."""
    index = index or ReferenceIndex(model.reference)
    matrix = features.encode_stones(stones)
    factor = market.factor if market is not None else 1.0
    base, low, high = model.predict_matrix(matrix)
    dollars = dollars_from_log(model.contributions_matrix(matrix), np.log(base))
    what_ifs = grade_what_ifs(model, matrix, factor)
    price, low, high = base * factor, low * factor, high * factor
    out = []
    for i, stone in enumerate(stones):
        reasons = {k: float(dollars[i, j]) for j, k in enumerate(features.REASONS)}
        if factor != 1.0:
            reasons[MARKET_TERM] = float(base[i] * (factor - 1))
        out.append(
            Explanation(
                stone={k: stone[k] for k in schema.FEATURES},
                price=float(price[i]),
                price_low=float(low[i]),
                price_high=float(high[i]),
                coverage=model.coverage,
                baseline=float(dollars[i, -1]),
                contributions=reasons,
                comparables=index.comparables(stone, n_comparables),
                warnings=index.warnings(stone),
                what_if=what_ifs[i],
                market_level=market.field if market is not None else None,
            )
        )
    return out


def explain(model: PriceModel, stones: pd.DataFrame, n_comparables: int = 5) -> list[Explanation]:
    """Explain each validated stone of a frame (see explain_stones)."""
    records = stones[list(schema.FEATURES)].to_dict(orient="records")
    return explain_stones(model, records, n_comparables)


def global_importance(model: PriceModel, stones: pd.DataFrame) -> pd.Series:
    """Mean absolute dollar contribution per reason over a set of stones, largest first."""
    dollars = dollar_contributions(model.contributions(stones)).drop(columns=[BASELINE])
    return dollars.abs().mean().sort_values(ascending=False)
