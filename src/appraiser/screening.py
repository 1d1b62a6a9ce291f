"""The label-shift guard: the champion prices every newly labelled batch before anything learns
from it.

A batch whose prices disagree with everything known (a 30% markup, another currency, cents, a
quarter of its prices inflated) would teach the next model wrong prices, and the features alone
cannot show it: its stones look normal. So the champion prices the batch and each stone's log
error is standardised by the champion's own spread for that stone, z = (log price - log champion's
price) / sigma(x) (its range model, models/ranges.py): an I1 or a 3-carat stone is expected to be
priced less precisely than an Ideal VS1, and standardising puts every stone on one footing. Under
"nothing wrong" z is distributed like the range's calibration scores, so those scores, resampled
into many batches of this batch's size (`null_scores`), give the range of the median z (shift) and
of the median |z| (spread) that chance alone produces, whatever the batch's mix of stones.

- held: the median z outside that range's 99.9% band *and* the median log error more than 10%
  (HOLD_SHIFT) from what the champion's own errors would give on these stones (so a market move of a
  few percent is not held); or the median |z| above its 99.9% point and twice the expected; or
  significantly many far-off prices (|z| beyond the scores' 99.5% quantile; exact binomial test,
  0.1%, and 2 points above the expected share); or the 90% range covering significantly less than
  promised (exact binomial, 0.1%) and 10 points less. The batch is kept, marked `held`, excluded
  from training until an admin releases or drops it (`appraiser batches`);
- worse: outside the 99% band and 2% from the expected median (or spread 25% above expected), but
  not held, or range coverage significantly below nominal (exact binomial, 1%): the champion got
  worse on fresh stones, a reason to retrain (pipeline.py).

Stones the champion trained on (its lineage) are left out of the figures (their errors are
in-sample, smaller than fresh stones'); only the far-off count reads them too, so a training stone
sent again at five times its price is still seen. The measured rates: benchmarks/guard.py.

The guard knows the market (market_view.py): a batch's prices, month by month of `appraised_at`,
are compared with what other sources show for the same months; where they agree the batch's errors
are judged around that level (`level`), so a market move beyond HOLD_SHIFT is learned from once a
second source shows it, and a source that departs from the others is held.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sqlalchemy import Engine

from appraiser import features, schema
from appraiser.models import PriceModel

logger = logging.getLogger(__name__)

HOLD_SHIFT = 0.10  # log points of systematic shift a market may move without review (~10%)
HOLD_SPREAD = 2.0  # times the expected median absolute standardised error
# "worse" must also matter: a large batch's medians are so precise that any real-world difference
# between training and fresh stones (0.4% on 2,000 public stones) would otherwise call for a retrain
WORSE_SHIFT = 0.02  # log points of median shift
WORSE_SPREAD = 1.25  # times the expected median absolute standardised error
HOLD_QUANTILE = 0.999
WORSE_QUANTILE = 0.99
# a price is far off when its |z| passes the scores' 99.5% quantile: a stone at 4 or 5 times its
# price is far beyond it, an honest hard stone rarely (its z is scaled by its own spread)
FAR_QUANTILE = 0.995
FAR_ALPHA = 0.001  # exact binomial test of the far-off count against its expected share
# ...and the share must matter: 2 points above expected, so a large honest batch is not held for
# a trivial excess (fresh stones' tails are a little heavier than the calibration stones')
FAR_MARGIN = 0.02
COVERAGE_ALPHA = 0.01  # coverage below nominal at this level: the champion looks worse
COVERAGE_HOLD_ALPHA = 0.001  # ...at this level and COVERAGE_MARGIN below: the labels are in doubt
COVERAGE_MARGIN = 0.10  # a range covering 10 points less than promised is no drift of quality
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


def spread(model: PriceModel, matrix: np.ndarray) -> np.ndarray:
    """sigma(x): each encoded stone's expected scale of log error (1 for a model without an
    adaptive range, whose scores are then plain log residuals)."""
    if model.ranges is None:
        return np.ones(len(matrix))
    return np.asarray(model.ranges.sigma(matrix), dtype=float)


def scores(model: PriceModel) -> np.ndarray:
    """The standardised errors the model expects on fresh stones, pooled: its range's calibration
    scores (or its kept out-of-fold residuals, for a model without an adaptive range)."""
    if model.ranges is not None and len(model.ranges.scores):
        return np.asarray(model.ranges.scores, dtype=float)
    return _residuals(model)


def null_scores(
    model: PriceModel, matrix: np.ndarray, rng: np.random.Generator, simulations: int
) -> np.ndarray:
    """(simulations, len(matrix)) standardised errors drawn as chance would give them for these
    stones. The one place that knows the scores are pooled: scores kept per group of stones (a
    carat band) would be drawn here per stone from its own group."""
    pool = scores(model)
    return pool[rng.integers(len(pool), size=(simulations, len(matrix)))]


@dataclass
class Screening:
    """The champion's errors on one labelled batch, against what it expects."""

    version: str
    stones: int  # the stones the figures are measured on (not in the champion's training set)
    mape: float | None
    coverage: float | None
    bias: float | None  # median of log(price / champion's price)
    spread: float | None  # median of |log(price / champion's price)|
    excluded: int = 0  # stones left out of the figures: the champion trained on them
    far_off: int = 0  # prices beyond the far-off threshold (of every stone of the batch)
    expected: dict[str, float] = field(default_factory=dict)
    held: list[str] = field(default_factory=list)  # why the batch is held (empty: it is not)
    worse: list[str] = field(default_factory=list)  # why the champion looks worse on it
    # per feature, the batch against the stones the champion learned from (drift.drift_report
    # rows), kept with the screening so drift can be followed batch by batch (monitoring.py)
    drift: list[dict[str, Any]] = field(default_factory=list)
    # per month of appraised_at, the level the batch implies beside the market's (market_view.py);
    # empty: not compared. The figures above are then measured around those levels
    market: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_held(self) -> bool:
        return bool(self.held)

    def summary(self) -> str:
        if self.stones and self.mape is not None and self.bias is not None:
            said = (
                f"champion v{self.version} on {self.stones:,} stones: MAPE {self.mape:.2f}%, "
                f"prices {100 * np.expm1(self.bias):+.1f}% (median) from its own"
                + (" at the market's level" if self.expected.get("centred") else "")
                + f", {self.coverage:.1f}% in its 90% range"
            )
        else:
            said = f"champion v{self.version}: no stone it did not train on"
        if self.excluded:
            said += f" ({self.excluded:,} stones it trained on left out)"
        if self.market:
            said += "; market level " + ", ".join(
                f"{m['month'][:7]} {m['implied']:.3f} against {m['market']:.3f}"
                for m in self.market[:4]
            )
        if self.held:
            return f"{said}; held for review: " + "; ".join(self.held)
        if self.worse:
            return f"{said}; worse than expected: " + "; ".join(self.worse)
        return f"{said}; as expected"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "is_held": self.is_held, "summary": self.summary()}


def _band(values: np.ndarray, q: float) -> tuple[float, float]:
    return float(np.quantile(values, 1 - q)), float(np.quantile(values, q))


def screen(
    model: PriceModel,
    version: str,
    stones: pd.DataFrame,
    *,
    seed: int = 0,
    trained_on: np.ndarray | None = None,
    level: np.ndarray | None = None,
) -> Screening:
    """Price a labelled batch with `model` and judge its errors against the expected ones.
    `trained_on`: True for the stones the model trained on (left out of the figures). `level`:
    each stone's log market level (market_view.py): the champion's prices on the base level are
    moved to it before the errors are judged (None: the base level)."""
    actual = stones[schema.TARGET].to_numpy(dtype=float)
    matrix = features.encode(stones).to_numpy(dtype=float)
    price, low, high = model.predict_matrix(matrix)
    if level is not None:
        moved_to = np.exp(np.asarray(level, dtype=float))
        price, low, high = price * moved_to, low * moved_to, high * moved_to
    log_error = np.log(actual) - np.log(price)
    sigma = spread(model, matrix)
    fresh = np.ones(len(actual), bool) if trained_on is None else ~np.asarray(trained_on, bool)
    n = int(fresh.sum())
    result = Screening(version, n, None, None, None, None, len(actual) - n)
    if len(actual) == 0:
        return result
    # a market move up to HOLD_SHIFT is no reason to hold: the far-off, spread and coverage
    # holds judge the errors around it (the shift test judges the move itself)
    market = float(np.clip(np.median(log_error), -HOLD_SHIFT, HOLD_SHIFT))
    moved = (log_error - market) / sigma
    pool = scores(model)
    centre = float(np.median(pool))
    far_at = float(np.quantile(np.abs(pool - centre), FAR_QUANTILE))
    # far-off prices, counted on every stone: a stone the champion trained on errs less, so
    # counting it makes the test stricter on honest batches, never blind to inflated prices
    result.far_off = int((np.abs(moved - centre) > far_at).sum())
    expected_far = max(float(np.mean(np.abs(pool - centre) > far_at)), 1 - FAR_QUANTILE)
    total = len(actual)
    result.expected = {
        "far_off_at": far_at,
        "far_off_share": expected_far,
        "market": market,
        "centred": float(level is not None),  # errors measured around the market's level
    }
    if (
        stats.binom.sf(result.far_off - 1, total, expected_far) < FAR_ALPHA
        and result.far_off / total > expected_far + FAR_MARGIN
    ):
        result.held.append(
            f"{result.far_off:,} of {total:,} prices are far from the champion's (beyond "
            f"{far_at:.1f} times its spread for the stone, {100 * expected_far:.1f}% expected)"
        )
    if n == 0:
        return result
    actual, low, high, log_error, sigma = (v[fresh] for v in (actual, low, high, log_error, sigma))
    inside = (actual >= low) & (actual <= high)
    result.mape = float(100 * np.mean(np.abs(np.expm1(-log_error))))
    result.coverage = float(100 * inside.mean())
    result.bias = float(np.median(log_error))
    result.spread = float(np.median(np.abs(log_error)))
    rng = np.random.default_rng(seed)
    _judge_medians(model, result, matrix[fresh], sigma, log_error, market, rng)
    moved_price = actual * np.exp(-market)
    moved_inside = int(((moved_price >= low) & (moved_price <= high)).sum())
    covered = int(inside.sum())
    if (
        stats.binom.cdf(moved_inside, n, model.coverage) < COVERAGE_HOLD_ALPHA
        and moved_inside / n < model.coverage - COVERAGE_MARGIN
    ):
        result.held.append(
            f"its {100 * model.coverage:.0f}% range covers only {result.coverage:.1f}% of "
            f"{n:,} stones: many prices lie outside what the champion finds plausible"
        )
    elif stats.binom.cdf(covered, n, model.coverage) < COVERAGE_ALPHA:
        result.worse.append(
            f"its {100 * model.coverage:.0f}% range covers only {result.coverage:.1f}% of "
            f"{n:,} stones"
        )
    return result


def _judge_medians(
    model: PriceModel,
    result: Screening,
    matrix: np.ndarray,
    sigma: np.ndarray,
    log_error: np.ndarray,
    market: float,
    rng: np.random.Generator,
) -> None:
    """The batch's median shift and spread against chance for stones like these: standardised
    errors drawn at the batch's size (at most MAX_SIMULATED, the spread then scaled by sqrt(n)).
    The spread is held around the batch's `market` move, called worse around none."""
    assert result.bias is not None
    z = log_error / sigma
    n = len(z)
    size = min(n, MAX_SIMULATED)
    picked = np.arange(n) if size == n else rng.choice(n, size, replace=False)
    draws = null_scores(model, matrix[picked], rng, SIMULATIONS)
    pool = scores(model)
    centre = float(np.median(pool))
    typical = float(np.median(np.abs(pool)))
    scale = np.sqrt(size / n)  # a larger batch's medians vary less, as 1/sqrt(n)
    bias_sim = centre + (np.median(draws, axis=1) - centre) * scale
    spread_sim = typical + (np.median(np.abs(draws), axis=1) - typical) * scale
    # what the median log error would be by chance on these very stones (their own spreads)
    expected_log = float(np.median(np.median(draws * sigma[picked], axis=1)))
    bias_z, spread_z = float(np.median(z)), float(np.median(np.abs(z)))
    spread_moved = float(np.median(np.abs((log_error - market) / sigma)))
    hold_lo, hold_hi = _band(bias_sim, HOLD_QUANTILE)
    worse_lo, worse_hi = _band(bias_sim, WORSE_QUANTILE)
    spread_hold = max(float(np.quantile(spread_sim, HOLD_QUANTILE)), HOLD_SPREAD * typical)
    spread_worse = max(float(np.quantile(spread_sim, WORSE_QUANTILE)), WORSE_SPREAD * typical)
    result.expected.update(
        bias=expected_log,
        bias_z=bias_z,
        bias_z_hold_low=hold_lo,
        bias_z_hold_high=hold_hi,
        bias_z_worse_low=worse_lo,
        bias_z_worse_high=worse_hi,
        spread_z=spread_z,
        spread_z_expected=typical,
        spread_z_hold=spread_hold,
        spread_z_worse=spread_worse,
    )
    shift = result.bias - expected_log
    theirs = (
        "the champion's at the market's level" if result.expected["centred"] else "the champion's"
    )
    if not hold_lo <= bias_z <= hold_hi and abs(shift) > HOLD_SHIFT:
        result.held.append(
            f"its prices run {_pct(result.bias)} (median) from {theirs}, expected "
            f"{_pct(expected_log)} for these stones, beyond chance and more than "
            f"{100 * HOLD_SHIFT:.0f}% (a markup, another currency or unit?)"
        )
    elif not worse_lo <= bias_z <= worse_hi and abs(shift) > WORSE_SHIFT:
        result.worse.append(
            f"prices {_pct(result.bias)} (median) from {theirs}, beyond chance for {n:,} stones"
        )
    if spread_moved > spread_hold:
        result.held.append(
            f"its prices disagree with the champion's by {spread_moved:.2f} times its spread for "
            f"each stone (median), more than {spread_hold:.2f}"
        )
    elif spread_z > spread_worse:
        result.worse.append(
            f"median absolute error {spread_z:.2f} times the champion's spread for each stone, "
            f"against an expected {typical:.2f}"
        )


def _pct(log_value: float) -> str:
    return f"{100 * np.expm1(log_value):+.1f}%"


def screen_with_champion(
    stones: pd.DataFrame,
    *,
    champion: Callable[[], tuple[str, PriceModel] | None],
    source: str | None = None,
    engine: Engine | None = None,
) -> Screening | None:
    """The champion's screening of a labelled batch (None when there is no champion yet); with
    its `source`, against the market the other sources show (`guard`)."""
    loaded = champion() if not stones.empty else None
    if loaded is None:
        return None
    version, model = loaded
    result = guard(model, version, stones, source=source, engine=engine)
    result.drift = batch_drift(model, stones)
    return result


def guard(
    model: PriceModel,
    version: str,
    stones: pd.DataFrame,
    *,
    source: str | None,
    engine: Engine | None = None,
    batch_id: int | None = None,
) -> Screening:
    """`screen` by `version`; with a `source`, around the market the other sources show for the
    batch's months, holding a month that departs from them (market_view.py). `batch_id`: the
    stored batch being screened again (its own stones are no evidence)."""
    known = trained_on(version, stones)
    if source is None:
        return screen(model, version, stones, trained_on=known)
    from appraiser import market_view

    seen = market_view.view(model, version, stones, source, engine=engine, batch_id=batch_id)
    result = screen(
        model, version, stones, trained_on=known, level=seen.centre if seen.referenced else None
    )
    seen.judge(result)
    return result


def trained_on(version: str, stones: pd.DataFrame) -> np.ndarray | None:
    """True for the stones `version` trained on (lineage.py); None when its lineage is unknown."""
    from appraiser import lineage

    known = lineage.load(version)
    if known is None:
        return None
    return known.trained_on(lineage.stone_keys(stones))


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
