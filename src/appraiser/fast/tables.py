"""Exact TreeSHAP contributions of a LightGBM forest of small trees, read from tables made once.

LightGBM's `predict(pred_contrib=True)` runs path-dependent TreeSHAP (Lundberg et al. 2020) for
every stone: O(leaves x depth^2) per tree, 1.7-3.2 ms per stone for the default champion's 600
trees of 15 leaves here, most of an explained request's cost. The same values can be tabulated:

1. Per leaf (as in Fast TreeSHAP v2, Yang 2021). A leaf with value v whose path splits on the
   features U (d of them) is a game on its own: with o_j = 1 when the stone takes the leaf's side
   of every split on j, and z_j the share of training stones that took it (the product of
   child/parent counts), its value given the features S is v prod_{j in S} o_j prod_{j not in S}
   z_j, and its Shapley value for i in U is
       v (o_i - z_i) sum_{S in U-{i}} |S|!(d-|S|-1)!/d! prod_{j in S} o_j prod_{j in U-S-{i}} z_j.
   The forest's game is the sum of its leaves' (that is what path-dependent TreeSHAP computes),
   and so are its Shapley values. With 7 features a leaf has at most 2^7 patterns of o: each is
   computed once (the coalition sums through elementary symmetric polynomials of the z's).
2. Per tree. A stone's values matter to a tree only through which side of each of its thresholds
   they fall, so a tree's contributions are tabulated per cell of its threshold grid (the sum of
   its leaves' rows at one stone of the cell).
A stone is then placed once in each feature's sorted thresholds (all trees'), which gives its cell
in every tree: one table row per tree. The same numbers as LightGBM to rounding (1e-14 here),
7-12 times faster here (benchmarks/serving_parts.py); `LeafTables.build` checks them against
LightGBM on stones at and beside every threshold, and declines (LightGBM explains) a split it does
not model or a grid too large.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from appraiser.fast import probe as probes

logger = logging.getLogger(__name__)

# Bounds on what a forest's tables may hold (rows of 7 floats: 2M rows are 110 MB); past them,
# LightGBM explains. Every bound is checked from the dump, before anything is allocated.
MAX_TABLE_ROWS = 2_000_000  # threshold-grid cells of all trees, and (leaf, pattern) rows
MAX_TREE_WORK = 2_000_000  # one tree's cells x its splits or leaves (the arrays filling its cells)
CHUNK = 64  # stones per gather (a chunk's table rows fit in a few MB)


@dataclass
class _Leaf:
    value: float
    features: list[int]  # U, in the order their bits are numbered
    zero: list[float]  # z_j for each feature of U
    conditions: list[tuple[int, int, float, bool]]  # (slot in U, feature, threshold, goes left)


def _leaves(tree: dict[str, Any]) -> list[_Leaf] | None:
    """The leaves of one dumped LightGBM tree; None when a split is not `x <= t` on a number
    with no special missing value (categorical splits, zero-as-missing)."""
    out: list[_Leaf] = []
    root = tree["tree_structure"]
    stack: list[tuple[dict[str, Any], list[tuple[int, float, bool, float]]]] = [(root, [])]
    while stack:
        node, path = stack.pop()
        if "leaf_value" in node:
            features: list[int] = []
            zero: list[float] = []
            conditions = []
            for feature, threshold, left, fraction in path:
                if feature not in features:
                    features.append(feature)
                    zero.append(1.0)
                slot = features.index(feature)
                zero[slot] *= fraction
                conditions.append((slot, feature, threshold, left))
            out.append(_Leaf(float(node["leaf_value"]), features, zero, conditions))
            continue
        if node.get("decision_type") != "<=" or node.get("missing_type") not in ("None", "NaN"):
            return None
        count = float(node["internal_count"])
        if count <= 0:
            return None
        feature, threshold = int(node["split_feature"]), float(node["threshold"])
        for child, left in ((node["left_child"], True), (node["right_child"], False)):
            child_count = float(child.get("leaf_count", child.get("internal_count", 0)))
            stack.append((child, [*path, (feature, threshold, left, child_count / count)]))
    return out


def _weights(d: int) -> np.ndarray:
    """w[k] = k! (d-k-1)! / d!, the Shapley weight of a coalition of k of the other d-1."""
    return np.array(
        [math.factorial(k) * math.factorial(d - k - 1) / math.factorial(d) for k in range(d)]
    )


def _tables(values: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """phi[leaf, pattern, i] for leaves sharing d = zero.shape[1] features (formula above),
    the sums over coalitions done through elementary symmetric polynomials of the z's."""
    count, d = zero.shape
    patterns = 1 << d
    bits = (np.arange(patterns)[:, None] >> np.arange(d)[None, :]) & 1  # o, per pattern
    weights = _weights(d)
    phi = np.zeros((count, patterns, d))
    for i in range(d):
        others = np.arange(d) != i
        ones = bits * others  # A: the other features the stone agrees with
        zeros = (1 - bits) * others  # B: the other features it does not
        # e[..., m]: sum over m-subsets T of A of prod_{j in T} z_j
        e = np.zeros((count, patterns, d + 1))
        e[..., 0] = 1.0
        for j in range(d):
            if j != i:
                step = ones[None, :, j, None] * zero[:, None, j, None]
                e[..., 1:] = e[..., 1:] + step * e[..., :-1]
        # sum_{S in A} w(|S|) prod_{A-S} z  =  sum_m w(|A|-m) e_m
        size = ones.sum(axis=1)[:, None]  # |A| per pattern
        m = np.arange(d + 1)[None, :]
        picked = np.where(m <= size, weights[np.clip(size - m, 0, d - 1)], 0.0)
        coalitions = (e * picked[None]).sum(axis=-1)
        outside = np.prod(np.where(zeros[None].astype(bool), zero[:, None, :], 1.0), axis=-1)
        phi[:, :, i] = (
            values[:, None] * (bits[None, :, i] - zero[:, None, i]) * coalitions * outside
        )
    return phi


def _pattern_rows(leaves: list[_Leaf], features: int) -> tuple[np.ndarray, np.ndarray]:
    """phi for every (leaf, pattern) as rows of a (rows, features) table, and each leaf's
    first row."""
    offsets = np.zeros(len(leaves), dtype=np.int64)
    rows = 0
    for n, leaf in enumerate(leaves):
        offsets[n] = rows
        rows += 1 << len(leaf.features)
    table = np.zeros((rows, features))
    by_size: dict[int, list[int]] = {}
    for n, leaf in enumerate(leaves):
        by_size.setdefault(len(leaf.features), []).append(n)
    for d, members in by_size.items():
        if d == 0:
            continue  # a one-leaf tree: its value is all expectation
        phi = _tables(
            np.array([leaves[n].value for n in members]),
            np.array([leaves[n].zero for n in members]),
        )
        columns = np.array([leaves[n].features for n in members])  # (count, d)
        row_index = offsets[members][:, None] + np.arange(1 << d)[None, :]
        for i in range(d):
            table[row_index, columns[:, i, None]] = phi[:, :, i]
    return table, offsets


def _tree_cells(
    leaves: list[_Leaf], offsets: np.ndarray, rows: np.ndarray, features: int
) -> tuple[np.ndarray, dict[int, np.ndarray], list[int]]:
    """One tree's contributions per cell of its threshold grid (a stone's values matter to the
    tree only through which side of each threshold they fall): (cells, features) phi from the
    tree's (leaf, pattern) `rows` (its leaves' first rows: `offsets`), the tree's sorted
    thresholds per feature it splits on, and the features' strides in the cell index."""
    found: dict[int, set[float]] = {}
    for leaf in leaves:
        for _, feature, threshold, _ in leaf.conditions:
            found.setdefault(feature, set()).add(threshold)
    cuts = {f: np.array(sorted(found[f])) for f in sorted(found)}
    used = list(cuts)
    sizes = [len(cuts[f]) + 1 for f in used]
    strides = [math.prod(sizes[k + 1 :]) for k in range(len(used))]
    cells = math.prod(sizes)
    # a stone in each cell: bin b of feature f is (cut[b-1], cut[b]]; its top end stands for it
    points = np.zeros((cells, features))
    index = np.arange(cells)
    for f, size, stride in zip(used, sizes, strides, strict=True):
        tops = np.append(cuts[f], np.nextafter(cuts[f][-1], np.inf))
        points[:, f] = tops[(index // stride) % size]
    phi = np.zeros((cells, features))
    if not used:
        return phi, cuts, strides
    # every split on every leaf's path, grouped by (leaf, feature slot), evaluated at once
    split_feature: list[int] = []
    split_threshold: list[float] = []
    split_left: list[bool] = []
    pair_starts: list[int] = []  # first split of each (leaf, slot)
    bits: list[int] = []  # 2^slot of each (leaf, slot)
    leaf_starts: list[int] = []  # first (leaf, slot) of each leaf
    first_rows: list[int] = []  # each leaf's first (leaf, pattern) row
    for leaf, offset in zip(leaves, offsets, strict=True):
        if not leaf.features:
            continue
        leaf_starts.append(len(pair_starts))
        first_rows.append(int(offset))
        for slot in range(len(leaf.features)):
            pair_starts.append(len(split_feature))
            bits.append(1 << slot)
            for on_slot, f, t, goes_left in leaf.conditions:
                if on_slot == slot:
                    split_feature.append(f)
                    split_threshold.append(t)
                    split_left.append(goes_left)
    takes = (points[:, split_feature] <= np.asarray(split_threshold)) == np.asarray(split_left)
    agrees = np.logical_and.reduceat(takes, pair_starts, axis=1)
    pattern = np.add.reduceat(agrees * np.asarray(bits), leaf_starts, axis=1)
    phi = rows[np.asarray(first_rows) + pattern].sum(axis=1)
    return phi, cuts, strides


class LeafTables:
    """A forest's TreeSHAP contributions tabulated per tree and cell of its threshold grid;
    `contributions(matrix)` returns what LightGBM's predict(matrix, pred_contrib=True) does.

    A stone is placed once in each feature's sorted thresholds (all trees'), which gives, through
    `lookup`, its cell in every tree at once: a stone costs one table row per tree."""

    def __init__(self, trees: list[list[_Leaf]], features: int) -> None:
        self.features = features
        self.expected = float(
            sum(leaf.value * math.prod(leaf.zero) for tree in trees for leaf in tree)
        )
        everything = [leaf for tree in trees for leaf in tree]
        rows, offsets = _pattern_rows(everything, features)  # all leaves of all trees at once
        built = []
        first = 0
        for tree in trees:
            built.append(_tree_cells(tree, offsets[first : first + len(tree)], rows, features))
            first += len(tree)
        self.table = np.concatenate([phi for phi, _, _ in built])
        starts = np.cumsum([0] + [len(phi) for phi, _, _ in built[:-1]])
        self.cuts: list[np.ndarray] = []
        self.lookup: list[np.ndarray] = []  # per feature: (trees, bins) -> row part
        for f in range(features):
            found = [c[f] for _, c, _ in built if f in c]
            every = np.unique(np.concatenate(found)) if found else np.empty(0)
            self.cuts.append(every)
            lookup = np.zeros((len(trees), len(every) + 1), dtype=np.int64)
            for t, (_, cuts, strides) in enumerate(built):
                if f in cuts:
                    stride = strides[sorted(cuts).index(f)]
                    # a stone in global bin g lies below every cut >= every[g]
                    local = np.searchsorted(cuts[f], every, side="left")
                    lookup[t] = np.append(local, len(cuts[f])) * stride
            self.lookup.append(lookup)
        self.lookup[0] = self.lookup[0] + starts[:, None]  # each tree's first row, once

    @classmethod
    def from_dump(cls, dump: dict[str, Any]) -> LeafTables | None:
        trees: list[list[_Leaf]] = []
        cells = patterns = 0
        for tree in dump["tree_info"]:
            found = _leaves(tree)
            if found is None:
                return None
            sizes: dict[int, set[float]] = {}
            for leaf in found:
                for _, feature, threshold, _ in leaf.conditions:
                    sizes.setdefault(feature, set()).add(threshold)
            tree_cells = math.prod(len(v) + 1 for v in sizes.values())
            cells += tree_cells
            patterns += sum(1 << len(leaf.features) for leaf in found)
            work = tree_cells * max(sum(len(leaf.conditions) for leaf in found), len(found))
            if max(cells, patterns) > MAX_TABLE_ROWS or work > MAX_TREE_WORK:
                return None
            trees.append(found)
        if not trees:
            return None
        return cls(trees, int(dump["max_feature_idx"]) + 1)

    @classmethod
    def build(cls, booster: Any, stones: np.ndarray | None = None) -> LeafTables | None:
        """Tables for `booster`, or None (LightGBM then explains): a split they do not model,
        too many rows, or any disagreement with LightGBM on the probe stones (`stones`, the
        model's probe set from fast.probe_stones; by default the thresholds' grid alone)."""
        try:
            tables = cls.from_dump(booster.dump_model())
            if tables is None:
                return None
            probe = stones if stones is not None else probes.stones(None, tables.cuts)
            expected = np.asarray(booster.predict(probe, pred_contrib=True), dtype=float)
            gap = probes.gap(tables.contributions(probe), expected)
        except Exception as exc:  # never worse than LightGBM: it explains instead
            logger.warning("TreeSHAP tables not used: %s", exc)
            return None
        if not gap <= probes.TOLERANCE:
            logger.warning("TreeSHAP tables not used: they differ from LightGBM by %.3g", gap)
            return None
        return tables

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """(stones, features + 1): each feature's contribution, then the expected value. For
        stones without missing values (LightGBM sends those its own way: ask it)."""
        matrix = np.asarray(matrix, dtype=float)
        out = np.empty((len(matrix), self.features + 1))
        out[:, -1] = self.expected
        for start in range(0, len(matrix), CHUNK):
            part = matrix[start : start + CHUNK]
            rows = self.lookup[0][:, np.searchsorted(self.cuts[0], part[:, 0], side="left")]
            for f in range(1, self.features):
                bins = np.searchsorted(self.cuts[f], part[:, f], side="left")
                rows = rows + self.lookup[f][:, bins]
            out[start : start + CHUNK, :-1] = self.table[rows].sum(axis=0)
        return out
