"""How good are the prices: headline metrics, the same by slice, and plots people can look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from appraiser import schema

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
