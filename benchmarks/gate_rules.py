"""Other gate rules on the draws of one gate_oc.py run, offline: how the fit-luck ratio was chosen.

    python benchmarks/gate_rules.py run.json

`run.json`: `gate_oc.py --json` (its draws keep the noise-only lower bound); a run of it as it was
at commit f5ed675 also kept the ten fold pairs' gains (`fold_gains`, `fold_vars`, `fold_sizes`),
and then the rules built on them are compared too. Each rule
adds a luck term to that bound's half-width in quadrature, symmetrically, with the normal SE (the
gate scales each side of the bootstrap's interval instead: nearly the same at thousands of
stones). For choosing a rule; the rates of the rule adopted are gate_oc.py's on fresh draws.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _bench import wilson
from scipy import stats


def between_pairs(
    gains: list[float], variances: list[float], sizes: list[int]
) -> tuple[float, int]:
    """DerSimonian-Laird's fit luck (SD, points) from the fold pairs' gains, and the pairs used."""
    g, v, n = np.asarray(gains), np.asarray(variances), np.asarray(sizes, dtype=float)
    keep = (n >= 30) & (v > 0)
    g, v, n = g[keep], v[keep], n[keep]
    if len(g) < 3:
        return 0.0, 0
    w = n / v
    pooled = (w * g).sum() / w.sum()
    q = (w * (g - pooled) ** 2).sum()
    tau2 = max(0.0, (q - (len(g) - 1)) / (w.sum() - (w**2).sum() / w.sum()))
    shares = n / n.sum()
    return float(np.sqrt(tau2 * (1 + (shares**2).sum()))), len(g)


def main() -> None:
    rows = pd.DataFrame(json.loads(Path(sys.argv[1]).read_text())["draws"])
    others = rows.blocked_by.apply(lambda b: set(b) <= {"improvement"})
    est, half, se = rows.estimate, rows.estimate - rows.noise_low, rows.estimate_se
    rules: dict[str, Any] = {"the stones' noise only (before)": 0 * est}
    for c in (0.75, 1.0, 1.25, 1.5):
        rules[f"+ {c} x the stones' SE"] = 1.96 * c * se
    if "fold_gains" in rows:  # a run of f5ed675's gate_oc.py: the fold pairs' own luck too
        folds = zip(rows.fold_gains, rows.fold_vars, rows.fold_sizes, strict=True)
        luck = [between_pairs(*x) for x in folds]
        dl = pd.Series([sd for sd, _ in luck])
        t = stats.t.ppf(0.975, np.clip([k - 2 for _, k in luck], 1, None))
        print(f"fold-pair luck 0 in {np.mean(dl == 0):.0%} of the draws")
        rules["+ fold-pair luck, normal quantile"] = 1.96 * dl
        rules["+ fold-pair luck, t with pairs - 2 df"] = t * dl
        for c in (1.0, 1.25, 1.5):
            rules[f"+ the larger of {c} x SE and the fold-pair luck"] = np.maximum(
                t * dl, 1.96 * c * se
            )
    groups = {
        "(A)": rows.true_gain <= 0,
        "(C)": rows.true_gain.abs() <= 0.02,
        "(B)": rows.true_gain >= 0.10,
    }
    miss = est - rows.true_gain
    print(f"{len(rows)} draws")
    for name, extra in rules.items():
        promote = (est - np.hypot(half, extra) > 0) & (est >= 0.02) & others
        z = miss / np.sqrt(se**2 + (extra / 1.96) ** 2 + rows.true_se**2)
        cells = []
        for label, mask in groups.items():
            p, low, high = wilson(int(promote[mask].sum()), int(mask.sum()))
            cells.append(f"{label} {p:.1f}% ({low:.1f}-{high:.1f}, n {int(mask.sum())})")
        print(f"{name}: " + "; ".join(cells) + f"; (D) mean {z.mean():+.2f}, SD {z.std():.2f}")


if __name__ == "__main__":
    main()
