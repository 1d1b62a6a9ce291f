"""The statistics the gate decides with: the paired improvement in MAPE and its interval, the
registered fits' luck, Holm's procedure and the range-coverage test. No policy here:
gate.decision says what the numbers must show.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import stats


@dataclass
class Comparison:
    """Champion against challenger on the same stones: MAPEs and the paired improvement."""

    stones: int
    champion_mape: float
    challenger_mape: float
    improvement: float  # champion MAPE minus challenger MAPE, points
    low: float  # the improvement's confidence interval
    high: float
    fit_luck: float = 0.0  # SD, points, of the registered fits' luck the interval carries too

    def describe(self) -> str:
        luck = f", fit luck {self.fit_luck:.2f} included" if self.fit_luck > 0 else ""
        return (
            f"MAPE {self.challenger_mape:.2f}% vs {self.champion_mape:.2f}% on {self.stones:,} "
            f"stones: improvement {self.improvement:+.2f} points "
            f"(95% CI {self.low:+.2f} to {self.high:+.2f}{luck})"
        )


def ape(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Absolute percentage error per stone, in points."""
    actual = np.asarray(actual, dtype=float)
    return 100 * np.abs(np.asarray(predicted, dtype=float) - actual) / actual


BCA_STONES = 5000


def paired_improvement(
    actual: np.ndarray,
    champion: np.ndarray,
    challenger: np.ndarray,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Comparison:
    """The challenger's paired improvement in MAPE over the champion, with a BCa interval."""
    a, b = ape(actual, champion), ape(actual, challenger)
    diff = a - b
    n = len(diff)
    low = high = float("nan")
    if n >= 2 and np.ptp(diff) > 0:
        ci = stats.bootstrap(
            (diff,),
            np.mean,
            confidence_level=confidence,
            n_resamples=resamples,
            # BCa corrects for the skew of per-stone errors; its jackknife costs n^2, and past
            # 5,000 stones the skew correction is negligible, so the percentile interval serves
            method="BCa" if n <= BCA_STONES else "percentile",
            batch=200,  # bounds memory: BCa's jackknife is n x n without it
            rng=np.random.default_rng(seed),
        ).confidence_interval
        low, high = float(ci.low), float(ci.high)
    elif n >= 1:
        low = high = float(diff.mean())
    return Comparison(
        stones=n,
        champion_mape=float(a.mean()) if n else float("nan"),
        challenger_mape=float(b.mean()) if n else float("nan"),
        improvement=float(diff.mean()) if n else float("nan"),
        low=low,
        high=high,
    )


def with_fit_luck(comparison: Comparison, ratio: float, confidence: float) -> Comparison:
    """The comparison's interval widened for fit luck of SD `ratio` times the interval's SE: each
    side's half-width times sqrt(1 + ratio^2), so the bootstrap's asymmetry is kept (it is slight
    at the thousands of stones that judge)."""
    if not ratio > 0 or not np.isfinite(comparison.low):
        return comparison
    grow = float(np.sqrt(1 + ratio**2))
    mid = comparison.improvement
    se = (comparison.high - comparison.low) / (2 * float(stats.norm.ppf(0.5 + confidence / 2)))
    return replace(
        comparison,
        low=mid - max(mid - comparison.low, 0.0) * grow,
        high=mid + max(comparison.high - mid, 0.0) * grow,
        fit_luck=ratio * se,
    )


def holm(p_values: list[float], alpha: float) -> list[bool]:
    """Which hypotheses Holm's step-down procedure rejects at family-wise level alpha."""
    order = np.argsort(p_values)
    rejected = [False] * len(p_values)
    for rank, index in enumerate(order):
        if p_values[index] <= alpha / (len(p_values) - rank):
            rejected[index] = True
        else:
            break
    return rejected


def coverage_p_value(inside: int, n: int, band: tuple[float, float]) -> float:
    """p-value of 'the true coverage lies in the band' (percent) given `inside` of `n` covered."""
    low, high = band[0] / 100, band[1] / 100
    below = stats.binom.cdf(inside, n, low)  # this few inside is unlikely if coverage >= low
    above = stats.binom.sf(inside - 1, n, high)  # this many is unlikely if coverage <= high
    return float(min(1.0, 2 * min(below, above)))
