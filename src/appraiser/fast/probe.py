"""The one set of stones every fast path is checked on, and the one check against LightGBM.

Compiled trees (compiled.py) and TreeSHAP tables (tables.py) are used only once they give
LightGBM's answers, to TOLERANCE, on the same stones: reference stones of the model (what it will
be asked), then stones at and just beside every threshold of its forests (each split met on both
sides), and past each column's edges (a compiled tree or a table walks another branch there).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from appraiser import features

if TYPE_CHECKING:
    from appraiser.models import PriceModel

TOLERANCE = 1e-9  # in log price: the additions' order moves a result by about 1e-15
REFERENCE_STONES = 512  # reference stones in the probe set
MIN_REFERENCE_STONES = 50  # fewer: compiled code has nothing typical to be checked on
GRID_STONES = 256  # stones whose every value sits on, beside or past a threshold


def thresholds(text: str, columns: int) -> list[np.ndarray]:
    """Per column, the sorted thresholds of a forest given as LightGBM model text."""
    found: list[set[float]] = [set() for _ in range(columns)]
    splits = re.findall(r"^split_feature=(.*)$", text, re.MULTILINE)
    values = re.findall(r"^threshold=(.*)$", text, re.MULTILINE)
    for columns_used, cuts in zip(splits, values, strict=True):
        for feature, cut in zip(columns_used.split(), cuts.split(), strict=True):
            if int(feature) < columns:
                found[int(feature)].add(float(cut))
    return [np.asarray(sorted(cuts), dtype=float) for cuts in found]


def stones(reference: np.ndarray | None, cuts: list[np.ndarray], seed: int = 0) -> np.ndarray:
    """The probe set: up to REFERENCE_STONES of `reference` (encoded), each column's edges and
    past them around their median stone, then GRID_STONES of thresholds, values just past one,
    and values beyond all of them."""
    rng = np.random.default_rng(seed)
    columns = len(cuts)
    parts = []
    if reference is not None and len(reference):
        step = max(len(reference) // REFERENCE_STONES, 1)
        typical = np.asarray(reference[::step][:REFERENCE_STONES], dtype=float)
        low, high, middle = typical.min(axis=0), typical.max(axis=0), np.median(typical, axis=0)
        edges = []
        for j in range(columns):
            for value in (low[j], high[j], low[j] - abs(low[j]) - 1, high[j] + abs(high[j]) + 1):
                row = middle.copy()
                row[j] = value
                edges.append(row)
        parts += [typical, np.asarray(edges)]
    grid = np.zeros((GRID_STONES, columns))
    for j, column in enumerate(cuts):
        if not len(column):
            grid[:, j] = rng.normal(size=GRID_STONES)
            continue
        near = [column, np.nextafter(column, np.inf), [column[0] - 1.0, column[-1] + 1.0]]
        grid[:, j] = rng.choice(np.concatenate(near), size=GRID_STONES)
    parts.append(grid)
    return np.ascontiguousarray(np.vstack(parts))


def for_model(model: PriceModel, texts: list[str]) -> np.ndarray:
    """The probe set of `model`: its reference stones and its forests' thresholds (`texts`: its
    forests as LightGBM model text, read without loading LightGBM). ValueError when the model holds
    fewer than MIN_REFERENCE_STONES reference stones (nothing typical to check code on)."""
    reference = model.reference
    step = max(len(reference) // REFERENCE_STONES, 1)
    typical = features.encode(reference.iloc[::step].head(REFERENCE_STONES)).to_numpy()
    if len(typical) < MIN_REFERENCE_STONES:
        raise ValueError(f"{len(typical)} reference stones, fewer than {MIN_REFERENCE_STONES}")
    columns = typical.shape[1]
    cuts = [set[float]() for _ in range(columns)]
    for text in texts:
        for j, found in enumerate(thresholds(text, columns)):
            cuts[j].update(found.tolist())
    return stones(typical, [np.asarray(sorted(c), dtype=float) for c in cuts])


def gap(got: np.ndarray, expected: np.ndarray) -> float:
    """The largest difference from LightGBM's answers (inf when the shapes differ)."""
    got, expected = np.asarray(got, dtype=float), np.asarray(expected, dtype=float)
    if got.shape != expected.shape:
        return float("inf")
    return float(np.abs(got - expected).max()) if got.size else 0.0


def agrees(got: np.ndarray, expected: np.ndarray) -> bool:
    return gap(got, expected) <= TOLERANCE
