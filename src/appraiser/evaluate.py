"""How good are the prices: headline metrics, the same by slice, and plots people can look at."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from appraiser import features, schema

if TYPE_CHECKING:
    from appraiser.models import PriceModel

HEADLINE = "mape"  # lower is better; the metric champions are compared on

METRIC_LABELS = {
    "mae": "MAE ($)",
    "rmse": "RMSE ($)",
    "mape": "MAPE (%)",
    "median_ape": "median APE (%)",
    "r2": "R²",
    "within_10": "within ±10% (%)",
    "within_20": "within ±20% (%)",
    "coverage": "in 90% range (%)",
}


def metrics(
    actual: np.ndarray | pd.Series,
    predicted: np.ndarray | pd.Series,
    low: np.ndarray | pd.Series | None = None,
    high: np.ndarray | pd.Series | None = None,
) -> dict[str, float]:
    """MAE, RMSE, MAPE, median APE, R², share within ±10%/±20% and, given a range, its coverage.

    Percentages are in percent (6.6 means 6.6%).
    """
    y = np.asarray(actual, dtype=float)
    p = np.asarray(predicted, dtype=float)
    error = p - y
    ape = np.abs(error) / y
    total = float(np.sum((y - y.mean()) ** 2))
    out = {
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mape": float(100 * np.mean(ape)),
        "median_ape": float(100 * np.median(ape)),
        "r2": float(1 - np.sum(error**2) / total) if total > 0 else float("nan"),
        "within_10": float(100 * np.mean(ape <= 0.10)),
        "within_20": float(100 * np.mean(ape <= 0.20)),
    }
    if low is not None and high is not None:
        inside = (y >= np.asarray(low, dtype=float)) & (y <= np.asarray(high, dtype=float))
        out["coverage"] = float(100 * np.mean(inside))
    return out


def carat_band(carat: pd.Series) -> pd.Series:
    labels = np.asarray(schema.CARAT_LABELS, dtype=object)[schema.carat_band_index(carat)]
    return pd.Series(pd.Categorical(labels, categories=schema.CARAT_LABELS), index=carat.index)


def slice_metrics(stones: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """The metrics per carat band, cut, color and clarity: where the model is weak.

    `stones` holds the features and the actual price, `predictions` price/price_low/price_high.
    """
    frame = stones.assign(
        carat_band=carat_band(stones["carat"]),
        _pred=predictions["price"].to_numpy(),
        _low=predictions["price_low"].to_numpy(),
        _high=predictions["price_high"].to_numpy(),
    )
    rows = []
    slices = {"carat_band": list(schema.CARAT_LABELS), **schema.GRADES}
    for column, order in slices.items():
        for value in order:
            part = frame[frame[column] == value]
            if part.empty:
                continue
            m = metrics(part[schema.TARGET], part["_pred"], part["_low"], part["_high"])
            rows.append({"slice": column, "value": value, "stones": len(part), **m})
    return pd.DataFrame(rows)


def plot_predictions(
    actual: np.ndarray | pd.Series, predicted: np.ndarray | pd.Series, path: Path, title: str = ""
) -> Path:
    """Predicted against actual (log-log) beside relative residuals against actual price."""
    y = np.asarray(actual, dtype=float)
    p = np.asarray(predicted, dtype=float)
    # Figure objects, not pyplot: no GUI backend is touched, so servers and notebooks both work
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5))
    left, right = fig.subplots(1, 2)
    left.scatter(y, p, s=4, alpha=0.35)
    lims = [min(y.min(), p.min()), max(y.max(), p.max())]
    left.plot(lims, lims, color="black", lw=1, label="perfect")
    left.set(
        xscale="log",
        yscale="log",
        xlabel="actual price ($)",
        ylabel="predicted price ($)",
        title="Predicted vs actual",
    )
    left.legend(loc="upper left")
    rel = 100 * (p - y) / y
    right.scatter(y, rel, s=4, alpha=0.35)
    right.axhline(0, color="black", lw=1)
    for band in (-10, 10):
        right.axhline(band, color="grey", lw=0.8, ls="--")
    right.set(
        xscale="log",
        xlabel="actual price ($)",
        ylabel="error (%)",
        ylim=(-60, 60),
        title="Relative error (dashed: ±10%)",
    )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_slices(slices: pd.DataFrame, path: Path, metric: str = HEADLINE) -> Path:
    """A bar chart of one metric per slice value, a panel per slice column."""
    groups = list(dict.fromkeys(slices["slice"]))
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * len(groups), 3.6))
    axes = fig.subplots(1, len(groups), sharey=True)
    for ax, group in zip(np.atleast_1d(axes), groups, strict=True):
        part = slices[slices["slice"] == group]
        ax.bar(part["value"].astype(str), part[metric])
        ax.set_title(group)
        ax.tick_params(axis="x", rotation=60)
    np.atleast_1d(axes)[0].set_ylabel(METRIC_LABELS.get(metric, metric))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# --- what a jeweller checks: ranges per grade, prices along real paths, the deal check -----------


def wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson 95% interval of a share k/n, in percent."""
    from scipy.stats import binomtest

    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return 100 * ci.low, 100 * ci.high


def grade_coverage(test: pd.DataFrame, predicted: pd.DataFrame) -> list[dict[str, Any]]:
    """Coverage of the 90% range per cut, color, clarity level and carat band, with intervals."""
    inside = (
        (test[schema.TARGET] >= predicted["price_low"])
        & (test[schema.TARGET] <= predicted["price_high"])
    ).to_numpy()
    groups = {c: test[c].astype(str).to_numpy() for c in schema.GRADE_COLUMNS}
    groups["carat band"] = np.asarray(
        [schema.CARAT_LABELS[i] for i in schema.carat_band_index(test["carat"].to_numpy())]
    )
    rows = []
    for name, values in groups.items():
        order = schema.GRADES.get(name, schema.CARAT_LABELS)
        for level in order:
            mask = values == level
            n = int(mask.sum())
            if not n:
                continue
            k = int(inside[mask].sum())
            low, high = wilson(k, n)
            rows.append(
                {
                    "slice": name,
                    "level": level,
                    "stones": n,
                    "coverage": 100 * k / n,
                    "low": low,
                    "high": high,
                }
            )
    return rows


def path_drops(model: PriceModel, stones: pd.DataFrame) -> dict[str, int]:
    """Price drops on 3,000 stones: 2% heavier with proportionally larger measurements, and one
    grade better on cut, color or clarity."""
    sample = stones.sample(min(3000, len(stones)), random_state=7)
    base = model.predict(sample)["price"].to_numpy()
    grown = model.predict(features.heavier(sample, 1.02))["price"].to_numpy()
    out = {"heavier_2pct": int((grown < base * (1 - 1e-9)).sum())}
    better = 0
    for grade, order in schema.GRADES.items():
        codes = sample[grade].astype(str).map({g: i for i, g in enumerate(order)})
        up = sample.assign(**{grade: [order[min(c + 1, len(order) - 1)] for c in codes]})
        better += int((model.predict(up)["price"].to_numpy() < base * (1 - 1e-9)).sum())
    out["one_grade_better"] = better
    return out


def deal_calibration(model: PriceModel, test: pd.DataFrame) -> list[dict[str, Any]]:
    """Asking prices drawn around each model price (x exp(N(0, 0.15))): the predicted probability
    that the market price is above the asking price, against how often it was, in 10 bins."""
    rng = np.random.default_rng(11)
    matrix = features.encode(test).to_numpy()
    # around the model's price, not the true one: an asking price drawn from the truth would
    # carry information about it, and a perfectly calibrated model would then show a gap
    asking = model.predict_matrix(matrix)[0] * np.exp(rng.normal(0, 0.15, len(test)))
    prob = model.prob_above_matrix(matrix, asking)
    above = test[schema.TARGET].to_numpy() > asking
    bins = np.minimum((prob * 10).astype(int), 9)
    rows = []
    for b in range(10):
        mask = bins == b
        n = int(mask.sum())
        if n:
            rows.append(
                {
                    "bin": f"{b / 10:.1f}-{(b + 1) / 10:.1f}",
                    "stones": n,
                    "predicted": float(prob[mask].mean()),
                    "observed": float(above[mask].mean()),
                }
            )
    return rows
