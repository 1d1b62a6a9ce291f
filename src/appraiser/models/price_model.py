"""The saved price model: a weighted blend of members, its price range and the stones it saw.

Saved as JSON beside each member's own file and the reference stones as Parquet: no pickles, and
a file this version cannot read fails loudly (ModelFormatError) instead of pricing wrongly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from appraiser import features, schema
from appraiser.models.candidates import MEMBER_TYPES
from appraiser.models.members import (
    CARAT,
    CONTRIBUTION_COLUMNS,
    Member,
    _matrix,
    contribution_frame,
)
from appraiser.models.ranges import AdaptiveRange


class ModelFormatError(RuntimeError):
    """A saved model this version of the code cannot read."""


@dataclass
class PriceModel:
    """A weighted blend of members in log space, a conformal price range, and the stones it saw.

    `intervals` holds, per carat band (schema.CARAT_EDGES), the half-width in log price of the range
    that covered `coverage` of out-of-fold stones of that band in training (Mondrian split
    conformal): a stone's range is price x exp(+-its band's width).
    `reference` is the training collection, used for comparable stones and out-of-range warnings.
    """

    members: list[Member]
    weights: list[float]
    intervals: list[float]
    coverage: float
    reference: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)
    ranges: AdaptiveRange | None = None  # when set, the range adapts to each stone (and grade)

    FILE: ClassVar[str] = "price_model.json"
    # bump when the saved layout or the feature encoding changes: old files then fail loudly
    FORMAT: ClassVar[int] = 2  # 2: shape features instead of x, y, z; reasons
    REFERENCE: ClassVar[str] = "reference.parquet"

    @property
    def name(self) -> str:
        return "+".join(m.kind for m in self.members)

    def predict_log_matrix(self, matrix: np.ndarray) -> np.ndarray:
        total = np.zeros(len(matrix))
        for member, weight in zip(self.members, self.weights, strict=True):
            total += weight * member.predict_log_matrix(matrix)
        return total

    def predict_matrix(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(price, price_low, price_high) in dollars for encoded stones (features.ENCODED)."""
        log_price = self.predict_log_matrix(matrix)
        if self.ranges is not None:
            low, high = self.ranges.bounds(matrix, log_price)
            return np.exp(log_price), np.exp(low), np.exp(high)
        width = np.asarray(self.intervals)[schema.carat_band_index(matrix[:, CARAT])]
        return np.exp(log_price), np.exp(log_price - width), np.exp(log_price + width)

    def prob_above_matrix(self, matrix: np.ndarray, price: np.ndarray) -> np.ndarray:
        """P(the stone's market price > `price`) for encoded stones: the deal check."""
        log_price = self.predict_log_matrix(matrix)
        if self.ranges is None:  # the band widths as a normal's 90% interval
            from scipy import stats

            width = np.asarray(self.intervals)[schema.carat_band_index(matrix[:, CARAT])]
            sigma = width / stats.norm.ppf(0.5 + self.coverage / 2)
            price = np.asarray(price, dtype=float)
            usable = np.isfinite(price) & (price > 0)
            z = (np.log(np.where(usable, price, 1.0)) - log_price) / sigma
            return np.where(usable, stats.norm.sf(z), np.nan)
        return self.ranges.prob_above(matrix, log_price, price)

    def contributions_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Log-price contributions (CONTRIBUTION_COLUMNS); rows sum to predict_log_matrix."""
        total = np.zeros((len(matrix), len(CONTRIBUTION_COLUMNS)))
        for member, weight in zip(self.members, self.weights, strict=True):
            total += weight * member.contributions_matrix(matrix)
        return total

    def predict_log(self, stones: pd.DataFrame) -> np.ndarray:
        return self.predict_log_matrix(_matrix(stones))

    def predict(self, stones: pd.DataFrame) -> pd.DataFrame:
        """price, price_low and price_high in dollars for validated stones."""
        price, low, high = self.predict_matrix(_matrix(stones))
        return pd.DataFrame(
            {"price": price, "price_low": low, "price_high": high}, index=stones.index
        )

    def contributions(self, stones: pd.DataFrame) -> pd.DataFrame:
        """Log-price contributions per feature plus BASELINE (rows sum to predict_log)."""
        return contribution_frame(self.contributions_matrix(_matrix(stones)), stones.index)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        members = [
            {
                "kind": m.kind,
                "weight": w,
                "params": m.params,
                "state": m.state(),
                "file": m.save(folder),
            }
            for m, w in zip(self.members, self.weights, strict=True)
        ]
        state = {
            "format": self.FORMAT,
            "members": members,
            "intervals": self.intervals,
            "carat_edges": list(schema.CARAT_EDGES),
            "coverage": self.coverage,
            "features": list(schema.FEATURES),
            "encoded": list(features.ENCODED),
            "info": self.info,
            "ranges": self.ranges.save(folder) if self.ranges is not None else None,
        }
        (folder / self.FILE).write_text(json.dumps(state, indent=2, default=str))
        self.reference.to_parquet(folder / self.REFERENCE, index=False)
        return folder

    @classmethod
    def load(cls, folder: Path) -> PriceModel:
        state = json.loads((folder / cls.FILE).read_text())
        if state.get("format") != cls.FORMAT or state.get("encoded") != list(features.ENCODED):
            raise ModelFormatError(
                f"{folder} holds a model saved in another format (format {state.get('format')}, "
                f"this version reads {cls.FORMAT}): retrain with `appraiser train`"
            )
        members = [
            MEMBER_TYPES[m["kind"]].load(folder / m["file"], m["params"], m.get("state"))
            for m in state["members"]
        ]
        return cls(
            members=members,
            weights=[m["weight"] for m in state["members"]],
            intervals=state["intervals"],
            coverage=state["coverage"],
            reference=pd.read_parquet(folder / cls.REFERENCE),
            info=state.get("info", {}),
            ranges=AdaptiveRange.load(folder, state["ranges"]) if state.get("ranges") else None,
        )
