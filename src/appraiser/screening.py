"""The label-shift guard: the champion prices every newly labelled batch before anything learns
from it.

A batch whose prices disagree with everything known (a 30% markup, another currency, cents) would
teach the next model wrong prices, and the features alone cannot show it: its stones look normal.
So the champion prices the batch and its errors are compared with the errors it is expected to
make: its out-of-fold log residuals from training (`info["residuals"]`, a sample kept with the
model), resampled into many batches of the same size. That gives, for this batch size, the range of
the median log error (bias: log of price over the champion's price) and of the median absolute log
error (spread) that chance alone produces.

- held: bias outside that range's 99.9% band *and* more than 10% (log) from the expected median,
  or spread above both its 99.9% point and twice the expected spread. The batch is kept, marked
  `held`, excluded from training until an admin releases or drops it (`appraiser batches`);
- worse: outside the 99% band and 2% from the expected median (or spread 25% above expected), but
  not held, or range coverage significantly below nominal (exact binomial, 1%): the champion got
  worse on fresh stones, a reason to retrain (pipeline.py).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from appraiser import schema
from appraiser.models import PriceModel

logger = logging.getLogger(__name__)

HOLD_SHIFT = 0.10  # log points of systematic shift a market may move without review (~10%)
HOLD_SPREAD = 2.0  # times the expected median absolute log error
# "worse" must also matter: a large batch's medians are so precise that any real-world difference
# between training and fresh stones (0.4% on 2,000 public stones) would otherwise call for a retrain
WORSE_SHIFT = 0.02  # log points of median shift
WORSE_SPREAD = 1.25  # times the expected median absolute log error
HOLD_QUANTILE = 0.999
WORSE_QUANTILE = 0.99
COVERAGE_ALPHA = 0.01
SIMULATIONS = 2000
MAX_SIMULATED = 1000  # larger batches are simulated at this size and the spread scaled by sqrt(n)
RESIDUAL_SAMPLE = 2000  # out-of-fold residuals kept with a model for this


def residual_sample(residuals: np.ndarray, seed: int = 0) -> list[float]:
    """What a model keeps of its out-of-fold log residuals (a random sample, 5 decimals)."""
    rng = np.random.default_rng(seed)
    r = np.asarray(residuals, dtype=float)
    if len(r) > RESIDUAL_SAMPLE:
        r = rng.choice(r, RESIDUAL_SAMPLE, replace=False)
    return [round(float(v), 5) for v in r]


def _residuals(model: PriceModel) -> np.ndarray:
    kept = model.info.get("residuals")
    if kept:
        return np.asarray(kept, dtype=float)
    # a model from before residuals were kept: normal residuals of the width its range implies
    sigma = float(np.mean(model.intervals)) / stats.norm.ppf(0.5 + model.coverage / 2)
    return np.random.default_rng(0).normal(0.0, sigma, RESIDUAL_SAMPLE)


@dataclass
class Screening:
    """The champion's errors on one labelled batch, against what it expects."""

    version: str
    stones: int
    mape: float
    coverage: float
    bias: float  # median of log(price / champion's price)
    spread: float  # median of |log(price / champion's price)|
    expected: dict[str, float] = field(default_factory=dict)
    held: list[str] = field(default_factory=list)  # why the batch is held (empty: it is not)
    worse: list[str] = field(default_factory=list)  # why the champion looks worse on it
    # per feature, the batch against the stones the champion learned from (drift.drift_report
    # rows), kept with the screening so drift can be followed batch by batch (monitoring.py)
    drift: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_held(self) -> bool:
        return bool(self.held)

    def summary(self) -> str:
        said = (
            f"champion v{self.version} on {self.stones:,} stones: MAPE {self.mape:.2f}%, "
            f"prices {100 * np.expm1(self.bias):+.1f}% (median) from its own, "
            f"{self.coverage:.1f}% in its 90% range"
        )
        if self.held:
            return f"{said}; held for review: " + "; ".join(self.held)
        if self.worse:
            return f"{said}; worse than expected: " + "; ".join(self.worse)
        return f"{said}; as expected"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "is_held": self.is_held, "summary": self.summary()}


def screen(model: PriceModel, version: str, stones: pd.DataFrame, *, seed: int = 0) -> Screening:
    """Price a labelled batch with `model` and judge its errors against the expected ones."""
    actual = stones[schema.TARGET].to_numpy(dtype=float)
    priced = model.predict(stones)
    log_error = np.log(actual) - np.log(priced["price"].to_numpy())
    n = len(actual)
    inside = (actual >= priced["price_low"].to_numpy()) & (
        actual <= priced["price_high"].to_numpy()
    )
    result = Screening(
        version=version,
        stones=n,
        mape=float(100 * np.mean(np.abs(np.expm1(-log_error)))),
        coverage=float(100 * inside.mean()),
        bias=float(np.median(log_error)),
        spread=float(np.median(np.abs(log_error))),
    )
    if n == 0:
        return result
    residuals = _residuals(model)
    rng = np.random.default_rng(seed)
    size = min(n, MAX_SIMULATED)
    draws = residuals[rng.integers(len(residuals), size=(SIMULATIONS, size))]
    centre = float(np.median(residuals))
    typical = float(np.median(np.abs(residuals)))
    scale = np.sqrt(size / n)  # a larger batch's medians vary less, as 1/sqrt(n)
    bias_sim = centre + (np.median(draws, axis=1) - centre) * scale
    spread_sim = typical + (np.median(np.abs(draws), axis=1) - typical) * scale

    def band(values: np.ndarray, q: float) -> tuple[float, float]:
        return float(np.quantile(values, 1 - q)), float(np.quantile(values, q))

    hold_lo, hold_hi = band(bias_sim, HOLD_QUANTILE)
    hold_lo, hold_hi = min(hold_lo, centre - HOLD_SHIFT), max(hold_hi, centre + HOLD_SHIFT)
    worse_lo, worse_hi = band(bias_sim, WORSE_QUANTILE)
    spread_hold = max(float(np.quantile(spread_sim, HOLD_QUANTILE)), HOLD_SPREAD * typical)
    spread_worse = float(np.quantile(spread_sim, WORSE_QUANTILE))
    result.expected = {
        "bias": centre,
        "bias_hold_low": hold_lo,
        "bias_hold_high": hold_hi,
        "bias_worse_low": worse_lo,
        "bias_worse_high": worse_hi,
        "spread": typical,
        "spread_hold": spread_hold,
        "spread_worse": spread_worse,
    }
    if not hold_lo <= result.bias <= hold_hi:
        result.held.append(
            f"its prices run {100 * np.expm1(result.bias):+.1f}% (median) from the champion's, "
            f"expected {100 * np.expm1(hold_lo):+.1f}% to {100 * np.expm1(hold_hi):+.1f}% "
            "(a markup, another currency or unit?)"
        )
    elif not worse_lo <= result.bias <= worse_hi and abs(result.bias - centre) > WORSE_SHIFT:
        result.worse.append(
            f"prices {100 * np.expm1(result.bias):+.1f}% (median) from the champion's, beyond "
            f"chance for {n:,} stones"
        )
    if result.spread > spread_hold:
        result.held.append(
            f"its prices disagree with the champion's by {100 * result.spread:.1f}% (median "
            f"absolute log error), more than {100 * spread_hold:.1f}%"
        )
    elif result.spread > max(spread_worse, WORSE_SPREAD * typical):
        result.worse.append(
            f"median absolute error {100 * result.spread:.1f}% against an expected "
            f"{100 * typical:.1f}%"
        )
    covered = int(inside.sum())
    if stats.binom.cdf(covered, n, model.coverage) < COVERAGE_ALPHA:
        result.worse.append(
            f"its {100 * model.coverage:.0f}% range covers only {result.coverage:.1f}% of "
            f"{n:,} stones"
        )
    return result


def screen_with_champion(stones: pd.DataFrame) -> Screening | None:
    """The champion's screening of a labelled batch (None when there is no champion yet)."""
    from appraiser.config import settings

    cfg = settings()
    if not cfg.mlflow_tracking_uri and not (cfg.home / "mlflow.db").exists():
        return None  # no local registry yet, so no champion (importing MLflow alone takes 3 s)
    from appraiser import champion, registry

    version = champion.current()
    if version is None or stones.empty:
        return None
    version, model = registry.load_version(version)
    result = screen(model, version, stones)
    result.drift = batch_drift(model, stones)
    return result


def batch_drift(model: PriceModel, stones: pd.DataFrame) -> list[dict[str, Any]]:
    """The batch's drift per feature against the model's training stones (drift.py), as plain
    rows; empty when it cannot be measured (a drift failure never holds a batch)."""
    from appraiser import drift

    try:
        report = drift.drift_report(stones, model.reference)
    except Exception as exc:  # an old model without reference stones, an odd column
        logger.warning("drift of the batch not measured: %s", exc)
        return []
    return [
        {
            "feature": str(r["feature"]),
            "test": str(r["test"]),
            "statistic": round(float(r["statistic"]), 6),
            "p_value": float(r["p_value"]),
            "effect": round(float(r["effect"]), 6),
            "drift": bool(r["drift"]),
        }
        for r in report.to_dict("records")
    ]
