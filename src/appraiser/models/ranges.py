"""Ranges that hold per grade: a normalized conformal predictive system around the model's price."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from appraiser.models.boosters import Accelerated, LazyBooster
from appraiser.models.members import THREADS

MIN_SPREAD_STONES = 400  # below this many out-of-fold errors, one width for all stones
SPREAD_FOLDS = 10  # cross-fitted calibration scores (AdaptiveRange.fit)
MIN_CALIBRATION = 20  # scores a 90% two-sided range needs (each 5% tail one score at least)


@dataclass
class AdaptiveRange:
    """Where the true price of a stone lies, as a distribution around the model's price.

    A normalized split-conformal predictive system (Vovk et al.; what `crepes` calls a normalized
    CPS): a small LightGBM model learns each stone's difficulty sigma(x) from the out-of-fold
    errors of the training stones (it sees carat, shape and the grades, so an I1 or Fair stone
    gets a wider range than an Ideal VS1). The calibration scores
    s_i = (log true price - log predicted) / sigma(x_i) are cross-fitted: stone i is scaled by a
    spread model of SPREAD_FOLDS that never saw it (nor its twins), so every stone calibrates and
    every stone teaches difficulty; the saved spread model is refitted on all of them. A single
    half/half split left a rare grade's coverage at the mercy of the split
    (tests/test_jeweller.py::test_a_rare_hard_grade_keeps_its_coverage_whatever_the_seed).
    This is cross-validation conformal, not split conformal: the errors are out-of-fold errors of
    the tuned recipe, whose hyperparameters were chosen on the same stones, so there is no
    finite-sample guarantee; coverage is measured instead (benchmarks/accuracy.py, per grade).
    Then for a new stone, log true = log predicted + sigma(x) s with s distributed like the s_i:
    the 90% range takes the 5th and 95th percentile of s, and P(true price > a) is the share of
    scores above (log a - log predicted) / sigma(x). Written in numpy rather than with crepes
    because one stone must be priced in microseconds from a saved model that holds no pickle.
    """

    booster: Any  # lgb.Booster of log |residual|, or None: one width for every stone
    scores: np.ndarray  # sorted calibration scores
    coverage: float
    # attached by appraiser.fast.accelerate (only `compiled`: a range is not explained)
    accelerated: Accelerated | None = field(default=None, repr=False, compare=False)
    FILE: ClassVar[str] = "spread.txt"

    @classmethod
    def fit(
        cls, matrix: np.ndarray, log_residuals: np.ndarray, coverage: float, seed: int
    ) -> AdaptiveRange:
        finite = np.isfinite(np.asarray(log_residuals, dtype=float))
        matrix, residuals = matrix[finite], np.asarray(log_residuals, dtype=float)[finite]
        if len(residuals) < MIN_CALIBRATION:
            raise ValueError(
                f"{len(residuals)} out-of-fold errors: a 90% range needs at least "
                f"{MIN_CALIBRATION} to be calibrated"
            )
        if len(residuals) < MIN_SPREAD_STONES:  # too few to learn difficulty: one width for all
            return cls(None, np.sort(residuals), coverage)
        target = np.log(np.abs(residuals) + 1e-3)
        scores = np.empty(len(residuals))
        # identical stones share a fold: a stone's twin must not teach the model its difficulty
        _, twin = np.unique(matrix, axis=0, return_inverse=True)
        fold = np.random.default_rng(seed).permutation(int(twin.max()) + 1)[twin] % SPREAD_FOLDS
        for k in range(SPREAD_FOLDS):
            learn, calibrate = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            spread = cls._spread_model(matrix[learn], target[learn], seed)
            scores[calibrate] = residuals[calibrate] / np.exp(
                spread.predict(matrix[calibrate], num_threads=1)
            )
        return cls(cls._spread_model(matrix, target, seed), np.sort(scores), coverage)

    @staticmethod
    def _spread_model(matrix: np.ndarray, log_abs_residuals: np.ndarray, seed: int) -> Any:
        import lightgbm as lgb

        model = lgb.LGBMRegressor(
            n_estimators=150,
            learning_rate=0.05,
            num_leaves=8,
            min_child_samples=40,
            subsample=0.8,
            subsample_freq=1,
            n_jobs=THREADS,
            verbose=-1,
            random_state=seed,
        )
        return model.fit(matrix, log_abs_residuals).booster_

    def sigma(self, matrix: np.ndarray) -> np.ndarray:
        if self.booster is None:
            return np.ones(len(matrix))
        fast = self.accelerated  # compiled for this machine, when ready
        if fast is not None and fast.compiled is not None:
            return np.exp(np.asarray(fast.compiled.predict(np.ascontiguousarray(matrix), n_jobs=1)))
        return np.exp(np.asarray(self.booster.predict(matrix, num_threads=1), dtype=float))

    def _quantile(self, level: float) -> float:
        """The conformal order statistic: for an upper end the ceil((n+1) level)-th score, for a
        lower end the floor((n+1) level)-th (clipped to the ends when n is small)."""
        n = len(self.scores)
        position = (n + 1) * level
        rank = np.ceil(position) if level >= 0.5 else np.floor(position)
        return float(self.scores[int(np.clip(rank, 1, n)) - 1])

    def bounds(self, matrix: np.ndarray, log_price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The range's ends in log price: each tail holds (1 - coverage) / 2."""
        tail = (1 - self.coverage) / 2
        sigma = self.sigma(matrix)
        low, high = self._quantile(tail), self._quantile(1 - tail)
        return log_price + sigma * low, log_price + sigma * high

    def prob_above(
        self, matrix: np.ndarray, log_price: np.ndarray, price: np.ndarray
    ) -> np.ndarray:
        """P(true price > `price`) for each stone, from the calibration scores (smoothed:
        (count above + 1/2) / (n + 1), never exactly 0 or 1)."""
        price = np.asarray(price, dtype=float)
        usable = np.isfinite(price) & (price > 0)  # no probability for a price that is not one
        safe = np.where(usable, price, 1.0)
        threshold = (np.log(safe) - log_price) / self.sigma(matrix)
        above = len(self.scores) - np.searchsorted(self.scores, threshold, side="right")
        return np.where(usable, (above + 0.5) / (len(self.scores) + 1), np.nan)

    def save(self, folder: Path) -> dict[str, Any]:
        if self.booster is not None:
            self.booster.save_model(str(folder / self.FILE))
        return {
            "file": self.FILE if self.booster is not None else None,
            "scores": [round(float(v), 6) for v in self.scores],
            "coverage": self.coverage,
        }

    @classmethod
    def load(cls, folder: Path, state: dict[str, Any]) -> AdaptiveRange:
        booster = LazyBooster(folder / state["file"]) if state.get("file") else None
        return cls(booster, np.asarray(state["scores"], dtype=float), float(state["coverage"]))
