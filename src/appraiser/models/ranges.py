"""Ranges that hold per grade: a normalized conformal predictive system around the model's price."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from appraiser import schema
from appraiser.models.boosters import Accelerated, LazyBooster
from appraiser.models.members import CARAT, THREADS

MIN_SPREAD_STONES = 400  # below this many out-of-fold errors, one width for all stones
SPREAD_FOLDS = 10  # cross-fitted calibration scores (AdaptiveRange.cross_fitted_scores)
MIN_CALIBRATION = 20  # scores a 90% two-sided range needs (each 5% tail one score at least)
# scores a carat band needs of its own: each 5% tail then rests on 10 stones at least
MIN_BAND_SCORES = 200
SQUARED, LOG_ABS = "squared", "log_abs"  # what a spread model predicts (AdaptiveRange.spread)
FLOOR = 1e-3  # log points: an error of exactly 0 (a stone's twin) still has a positive square


def carat_bands(carat: np.ndarray, minimum: int = MIN_BAND_SCORES) -> list[float]:
    """The carat edges of the Mondrian bands: schema.CARAT_EDGES, a band short of `minimum`
    stones merged into its smaller neighbour until none is short (no edge: one band)."""
    edges = list(schema.CARAT_EDGES)
    while edges:
        counts = np.bincount(np.searchsorted(edges, carat, side="right"), minlength=len(edges) + 1)
        short = int(np.argmin(counts))
        if counts[short] >= minimum:
            break
        if short == 0 or (short < len(edges) and counts[short + 1] < counts[short - 1]):
            edges.pop(short)  # the band above takes it
        else:
            edges.pop(short - 1)  # the band below takes it
    return edges


@dataclass
class AdaptiveRange:
    """Where the true price of a stone lies, as a distribution around the model's price.

    A normalized split-conformal predictive system (Vovk et al.; what `crepes` calls a normalized
    CPS): a small LightGBM model learns each stone's difficulty sigma(x) from the out-of-fold
    errors of the training stones (it sees carat, shape and the grades, so an I1 or Fair stone
    gets a wider range than an Ideal VS1). sigma(x)^2 is the expected squared error, E[r^2 | x]
    (gamma deviance, log link): a 90% range is about the tails, and the mean of log |r|, which a
    grade's many small errors dominate, left grades whose tails are heavier than their typical
    error under-covered (Ideal, VVS1) and lighter ones over-covered (Premium, Fair;
    benchmarks/range_coverage.py, tests/test_jeweller.py). The calibration scores
    s_i = (log true price - log predicted) / sigma(x_i) are cross-fitted: stone i is scaled by a
    spread model of SPREAD_FOLDS that never saw it (nor its twins), so every stone calibrates and
    every stone teaches difficulty; the saved spread model is refitted on all of them. A single
    half/half split left a rare grade's coverage at the mercy of the split
    (tests/test_jeweller.py::test_a_rare_hard_grade_keeps_its_coverage_whatever_the_seed).
    This is cross-validation conformal, not split conformal: the errors are out-of-fold errors of
    the tuned recipe, whose hyperparameters were chosen on the same stones, so there is no
    finite-sample guarantee; coverage is measured instead (benchmarks/range_coverage.py, per grade).
    Mondrian by carat band: sigma(x) evens out the scale of the errors but not the shape of
    their tails, and one distribution of s for all stones covered 97% of stones of 2 ct and more
    on public stones (docs/measurements.md); so each carat band (carat_bands: at least
    MIN_BAND_SCORES stones each) keeps its own scores. For a new stone, log true = log predicted +
    sigma(x) s with s distributed like the scores of its band: the 90% range takes their 5th and
    95th percentile, and P(true price > a) is the share of them above (log a - log predicted) /
    sigma(x). Written in numpy rather than with crepes because one stone must be priced in
    microseconds from a saved model that holds no pickle.
    """

    booster: Any  # lgb.Booster of the spread (see `spread`), or None: one width for every stone
    scores: np.ndarray  # every calibration score, sorted (the label-shift guard reads them)
    coverage: float
    edges: list[float] = field(default_factory=list)  # carat edges between the bands
    band_scores: list[np.ndarray] = field(default_factory=list)  # sorted, per band; [] = `scores`
    # what the booster predicts: SQUARED, E[r^2 | x]; LOG_ABS, E[log |r| | x] (models saved before)
    spread: str = SQUARED
    # attached by appraiser.fast.accelerate (only `compiled`: a range is not explained)
    accelerated: Accelerated | None = field(default=None, repr=False, compare=False)
    FILE: ClassVar[str] = "spread.txt"

    def __post_init__(self) -> None:
        if not self.band_scores:  # one band (a model saved before the bands, or built so)
            self.edges, self.band_scores = [], [np.asarray(self.scores, dtype=float)]
        if len(self.band_scores) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} carat edges need {len(self.edges) + 1} bands")
        if not all(len(b) for b in self.band_scores):
            raise ValueError("every carat band needs calibration scores")
        if self.spread not in (SQUARED, LOG_ABS):
            raise ValueError(f"unknown spread model {self.spread!r}")
        tail = (1 - self.coverage) / 2
        # each band's ends, once: pricing a stone is then a searchsorted and two look-ups
        self._low = np.array([_quantile(b, tail) for b in self.band_scores])
        self._high = np.array([_quantile(b, 1 - tail) for b in self.band_scores])
        self._edges = np.asarray(self.edges, dtype=float)
        # the bands laid end to end, each shifted clear of the others, so that one searchsorted
        # counts the scores above a threshold within any stone's band
        lowest = min(float(b[0]) for b in self.band_scores)
        highest = max(float(b[-1]) for b in self.band_scores)
        self._clip = (lowest - 1.0, highest + 1.0)
        self._shift = (highest - lowest + 3.0) * np.arange(len(self.band_scores))
        self._flat = np.concatenate(
            [b + d for b, d in zip(self.band_scores, self._shift, strict=True)]
        )
        self._ends = np.cumsum([len(b) for b in self.band_scores])
        self._sizes = np.diff(self._ends, prepend=0)

    @classmethod
    def calibrated(
        cls, booster: Any, scores: np.ndarray, carat: np.ndarray, coverage: float
    ) -> AdaptiveRange:
        """The range from calibration scores and the carats of their stones, banded."""
        edges = carat_bands(carat)
        band = np.searchsorted(edges, carat, side="right")
        per_band = [np.sort(scores[band == b]) for b in range(len(edges) + 1)]
        return cls(booster, np.sort(scores), coverage, edges, per_band)

    def band(self, matrix: np.ndarray) -> np.ndarray:
        """Each encoded stone's carat band (an index into band_scores)."""
        return np.searchsorted(self._edges, matrix[:, CARAT], side="right")

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
            return cls.calibrated(None, residuals, matrix[:, CARAT], coverage)
        scores = cls.cross_fitted_scores(matrix, residuals, seed)
        spread = cls._spread_model(matrix, _squared(residuals), seed)
        return cls.calibrated(spread, scores, matrix[:, CARAT], coverage)

    @classmethod
    def cross_fitted_scores(
        cls, matrix: np.ndarray, log_residuals: np.ndarray, seed: int
    ) -> np.ndarray:
        """Each stone's score r / sigma(x) (finite residuals), sigma from a spread model that never
        saw the stone: SPREAD_FOLDS of them."""
        target = _squared(log_residuals)
        scores = np.empty(len(log_residuals))
        # identical stones share a fold: a stone's twin must not teach the model its difficulty
        _, twin = np.unique(matrix, axis=0, return_inverse=True)
        fold = np.random.default_rng(seed).permutation(int(twin.max()) + 1)[twin] % SPREAD_FOLDS
        for k in range(SPREAD_FOLDS):
            learn, calibrate = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            spread = cls._spread_model(matrix[learn], target[learn], seed)
            scores[calibrate] = log_residuals[calibrate] / np.sqrt(
                spread.predict(matrix[calibrate], num_threads=1)
            )
        return scores

    @staticmethod
    def _spread_model(matrix: np.ndarray, squared_residuals: np.ndarray, seed: int) -> Any:
        """E[r^2 | x]: gamma deviance with a log link, so the prediction is always positive."""
        import lightgbm as lgb

        model = lgb.LGBMRegressor(
            objective="gamma",
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
        return model.fit(matrix, squared_residuals).booster_

    def sigma(self, matrix: np.ndarray) -> np.ndarray:
        if self.booster is None:
            return np.ones(len(matrix))
        fast = self.accelerated  # compiled for this machine, when ready
        if fast is not None and fast.compiled is not None:
            raw = np.asarray(fast.compiled.predict(np.ascontiguousarray(matrix), n_jobs=1))
        else:
            raw = np.asarray(self.booster.predict(matrix, num_threads=1), dtype=float)
        return np.sqrt(raw) if self.spread == SQUARED else np.exp(raw)

    def bounds(self, matrix: np.ndarray, log_price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The range's ends in log price: each tail of the stone's band holds (1 - coverage) / 2."""
        sigma, band = self.sigma(matrix), self.band(matrix)
        return log_price + sigma * self._low[band], log_price + sigma * self._high[band]

    def prob_above(
        self, matrix: np.ndarray, log_price: np.ndarray, price: np.ndarray
    ) -> np.ndarray:
        """P(true price > `price`) for each stone, from its band's calibration scores (smoothed:
        (count above + 1/2) / (n + 1), never exactly 0 or 1)."""
        price = np.asarray(price, dtype=float)
        usable = np.isfinite(price) & (price > 0)  # no probability for a price that is not one
        safe = np.where(usable, price, 1.0)
        low, high = self._clip  # (np.clip costs more than the rest for one stone)
        threshold = np.minimum(
            np.maximum((np.log(safe) - log_price) / self.sigma(matrix), low), high
        )
        band = self.band(matrix)
        at_most = np.searchsorted(self._flat, threshold + self._shift[band], side="right")
        above = self._ends[band] - at_most
        return np.where(usable, (above + 0.5) / (self._sizes[band] + 1), np.nan)

    def save(self, folder: Path) -> dict[str, Any]:
        if self.booster is not None:
            self.booster.save_model(str(folder / self.FILE))
        # the bands' scores only (the pooled ones are their union), under "bands": a reader from
        # before the squared spread model looks for "band_scores" or "scores" and fails loudly
        # rather than reading E[r^2] as E[log |r|]
        return {
            "file": self.FILE if self.booster is not None else None,
            "spread": self.spread,
            "carat_edges": [float(e) for e in self.edges],
            "bands": [[round(float(v), 6) for v in b] for b in self.band_scores],
            "coverage": self.coverage,
        }

    @classmethod
    def load(cls, folder: Path, state: dict[str, Any]) -> AdaptiveRange:
        """A saved range. Older ones predict log |r| (LOG_ABS): saved with "band_scores", or
        before the bands with a single `scores` list (one band)."""
        booster = LazyBooster(folder / state["file"]) if state.get("file") else None
        coverage = float(state["coverage"])
        if "bands" not in state and "band_scores" not in state:
            return cls(booster, np.asarray(state["scores"], dtype=float), coverage, spread=LOG_ABS)
        saved = state["bands"] if "bands" in state else state["band_scores"]
        spread = str(state.get("spread", SQUARED)) if "bands" in state else LOG_ABS
        bands = [np.asarray(b, dtype=float) for b in saved]
        pooled = np.sort(np.concatenate(bands))
        return cls(booster, pooled, coverage, list(state["carat_edges"]), bands, spread=spread)


def _squared(log_residuals: np.ndarray) -> np.ndarray:
    """What a spread model learns: r^2, kept above 0 (a twin's error of exactly 0)."""
    return log_residuals**2 + FLOOR**2


def _quantile(scores: np.ndarray, level: float) -> float:
    """The conformal order statistic of sorted `scores`: for an upper end the ceil((n+1) level)-th
    score, for a lower end the floor((n+1) level)-th (clipped to the ends when n is small)."""
    n = len(scores)
    position = (n + 1) * level
    rank = np.ceil(position) if level >= 0.5 else np.floor(position)
    return float(scores[int(np.clip(rank, 1, n)) - 1])
