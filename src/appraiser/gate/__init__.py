"""The gate: a challenger replaces the champion only on evidence, never on noise.

Both models are judged on the same stones, each priced by a model that never trained on it: the
stones that may judge (every labelled stone but the sealed ones and experts' prices) are priced by
the champion's recipe and the challenger's, both refitted without the fold holding the stone
(double cross-fitting, challenge.cross_fitted_prices), so nearly every labelled stone judges and a
real gain of ~0.1 point shows.
The headline is the paired difference of per-stone absolute percentage errors (champion minus
challenger, in points of MAPE): a paired test, because both models price the same stones and most
of a stone's error is shared, so pairing removes most of the noise. Its 95% interval is a
bootstrap's (BCa up to 5,000 stones): per-stone errors are skewed, and it does not assume them
normal. It is then widened for the registered fits' own luck (which stones, which bagging draw),
which the fold models that priced the stones do not share: `fit_luck_ratio` times the stones' SE
in quadrature (benchmarks/gate_oc.py measures it; the blocking checks below are not widened).
The challenger must improve with the interval's lower bound above `margin` (default 0) and by at
least `min_gain` (0.02 point) as estimated: the first keeps challengers that are not better out (a
one-sided 2.5% test), the second near-ties that would only churn the champion.
benchmarks/gate_oc.py measures both error rates, each against the true gain on unseen stones.

Then checks that can only block:
- slices (carat band, cut, color, clarity): a slice of 200+ stones must show it is not worse than
  `slice_tolerance` points (non-inferiority: upper 95% bound of the loss below it); a slice of
  30-199 stones, too small to show that, blocks when it is *significantly* worse than the
  tolerance (one-sided paired t-test, Holm over those slices): noise alone cannot block;
- range coverage, overall and per slice: blocks when it is significantly outside 85-95% (exact
  binomial test, Holm over the slices): the band is about what people need, the test about noise;
- the newest batch (forward-looking): blocks when the challenger is significantly worse on it;
- sanity: finite prices, no price that falls when carat or a grade goes up.

In parts:
- `decision`: the policy (GatePolicy), the blocking checks and `decide`;
- `statistics`: the paired improvement and its interval, the fit luck, Holm, the coverage test.
"""

from __future__ import annotations

# what the rest of the project calls through `appraiser.gate`
from appraiser.gate.decision import (
    Decision,
    GatePolicy,
    coverage_check,
    decide,
    sanity_problems,
    slice_check,
)
from appraiser.gate.statistics import Comparison, ape, paired_improvement, with_fit_luck

__all__ = [
    "Comparison",
    "Decision",
    "GatePolicy",
    "ape",
    "coverage_check",
    "decide",
    "paired_improvement",
    "sanity_problems",
    "slice_check",
    "with_fit_luck",
]
