"""Drift that means drift: do new stones differ from the ones the champion learned from?

Each feature gets a test with a proper null, and a feature drifts only when the difference is both
significant and large enough to matter:
- numbers: two-sample Kolmogorov-Smirnov, p below alpha/9 and statistic above 0.1;
- grades: the chi-square statistic of the new grade counts against the training proportions, its
  p-value by Monte Carlo under the training mix (exact for small batches, where the chi-square
  approximation and the PSI both cry wolf: PSI's expected value with no drift is ~(levels-1)/n),
  p below alpha/9 and a total variation distance above 0.1.
alpha (5%) is the family-wise false-alarm rate per batch (Bonferroni over the nine features);
batches under MIN_STONES are not judged. The measured rates are in benchmarks/trust.py.

A pipeline pass judges the stones since the last retrain (`cycle_report`), a set that grows pass
after pass until a retrain: testing all of it at every pass at alpha would raise many alarms per
cycle. So it is tested only at checkpoints, on the first MIN_STONES x 2^j stones (in arrival order,
so a pass between two checkpoints re-reads the same verdict), at alpha / 2^(j+1): the false alarms
of a whole cycle add up to alpha at most (benchmarks/guard.py measures it).

The primary signal is not here but in screening.py: the champion's error and coverage on each newly
labelled batch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from appraiser import schema

ALPHA = 0.05  # family-wise false-alarm rate of one batch's drift report
MIN_STONES = 50  # smaller batches are too small to tell drift from chance
KS_EFFECT = 0.1  # a numeric feature must also move this much (KS statistic)
TVD_EFFECT = 0.1  # a grade mix must also move this much (total variation distance)
SIMULATIONS = 4000  # Monte Carlo draws of the grade statistic under no drift


def _grade_test(
    new: pd.Series, reference: pd.Series, order: tuple[str, ...], rng: np.random.Generator
) -> tuple[float, float, float]:
    """(chi-square statistic, Monte Carlo p-value, total variation distance) of new vs reference."""
    counts = new.value_counts().reindex(order, fill_value=0).to_numpy(dtype=float)
    ref = reference.value_counts().reindex(order, fill_value=0).to_numpy(dtype=float)
    # a grade never seen in training gets half a stone, so seeing it now is surprising, not infinite
    p = (ref + 0.5) / (ref.sum() + 0.5 * len(ref))
    n = counts.sum()
    expected = n * p
    observed_stat = float(((counts - expected) ** 2 / expected).sum())
    draws = rng.multinomial(int(n), p, size=SIMULATIONS)
    null = ((draws - expected) ** 2 / expected).sum(axis=1)
    p_value = float((1 + (null >= observed_stat - 1e-12).sum()) / (1 + SIMULATIONS))
    tvd = float(0.5 * np.abs(counts / n - ref / ref.sum()).sum())
    return observed_stat, p_value, tvd


def drift_report(
    new: pd.DataFrame, reference: pd.DataFrame, *, alpha: float = ALPHA, seed: int = 0
) -> pd.DataFrame:
    """One row per feature: test, statistic, p-value, effect size and whether it drifts."""
    rng = np.random.default_rng(seed)
    judged = len(new) >= MIN_STONES
    per_test = alpha / len(schema.FEATURES)
    rows = []
    for column in schema.NUMERIC_FEATURES:
        test = ks_2samp(new[column], reference[column])
        rows.append(
            {
                "feature": column,
                "test": "KS",
                "statistic": float(test.statistic),
                "p_value": float(test.pvalue),
                "effect": float(test.statistic),
                "drift": bool(judged and test.pvalue < per_test and test.statistic > KS_EFFECT),
            }
        )
    for column, order in schema.GRADES.items():
        stat, p_value, tvd = _grade_test(new[column], reference[column], order, rng)
        rows.append(
            {
                "feature": column,
                "test": "chi2",  # Monte Carlo p-value
                "statistic": stat,
                "p_value": p_value,
                "effect": tvd,
                "drift": bool(judged and p_value < per_test and tvd > TVD_EFFECT),
            }
        )
    return pd.DataFrame(rows)


def drifted(report: pd.DataFrame) -> list[str]:
    """The features a report flags."""
    return list(report.loc[report["drift"], "feature"])


def checkpoint(stones: int) -> int | None:
    """The newest checkpoint j a cycle of `stones` stones has reached (None: not the first)."""
    if stones < MIN_STONES:
        return None
    return int(np.floor(np.log2(stones / MIN_STONES)))


def cycle_report(
    new: pd.DataFrame, reference: pd.DataFrame, *, alpha: float = ALPHA, seed: int = 0
) -> pd.DataFrame | None:
    """The drift report of a retrain cycle's stones (`new`, oldest first) at its newest
    checkpoint: its first MIN_STONES x 2^j stones at alpha / 2^(j+1); None before the first."""
    j = checkpoint(len(new))
    if j is None:
        return None
    return drift_report(
        new.iloc[: MIN_STONES * 2**j], reference, alpha=alpha / 2 ** (j + 1), seed=seed
    )
