"""Exact TreeSHAP contributions of a LightGBM forest, read from tables made once.

LightGBM's `predict(pred_contrib=True)` runs path-dependent TreeSHAP (Lundberg et al. 2020) for
every stone: O(leaves x depth^2) per tree, 0.6-3.7 ms per stone here for 600 trees of 15 leaves or
322 of 45, most of an explained request's cost. The same values can be tabulated:

1. Per leaf (as in Fast TreeSHAP v2, Yang 2021). A leaf with value v whose path splits on the
   features U (d of them) is a game on its own: with o_j = 1 when the stone takes the leaf's side
   of every split on j, and z_j the share of training stones that took it (the product of
   child/parent counts), its value given the features S is v prod_{j in S} o_j prod_{j not in S}
   z_j, and its Shapley value for i in U is
       v (o_i - z_i) sum_{S in U-{i}} |S|!(d-|S|-1)!/d! prod_{j in S} o_j prod_{j in U-S-{i}} z_j.
   The forest's game is the sum of its leaves' (that is what path-dependent TreeSHAP computes),
   and so are its Shapley values. With 7 features a leaf has at most 2^7 patterns of o: each is
   computed once (the coalition sums through elementary symmetric polynomials of the z's).
2. Per group of leaves. A stone's values matter to a tree only through which side of each of its
   thresholds they fall, so a tree's contributions are tabulated per cell of its threshold grid
   (the sum of its leaves' rows at one stone of the cell). A grid has a cell per combination of
   bins, so a tree of 45 leaves can have 10^4-10^6: such a tree is cut into subtrees, each
   tabulated on the grid of the thresholds its leaves' paths cross (a subtree's leaves are a
   game like any other set of leaves), where the cut costs fewer rows than GROUP_ROWS per group
   added (`_groups`); down to single leaves if need be, whose grids have at least 2^d cells.
   The other way, consecutive groups (small trees, subtrees, the next tree's) are joined into one
   when their joined grid costs fewer rows than it saves (`_packed`).
A stone is then placed once in each feature's sorted thresholds (all trees'), which gives its cell
in every group: one table row per group. The same numbers as LightGBM to rounding (1e-14 here),
5-20 times faster here (benchmarks/serving_parts.py); `LeafTables.build` checks them against
LightGBM on stones at and beside every threshold, and declines (LightGBM explains) a split it does
not model or tables past the memory bounds below (at most 2M rows, 112 MB, and 40 MB of lookups).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from appraiser.fast import probe as probes

logger = logging.getLogger(__name__)

# Bounds on what a forest's tables may hold, checked from the dump before anything is allocated;
# past them, LightGBM explains. Rows are 7 floats: 2M rows are 112 MB.
MAX_TABLE_ROWS = 2_000_000  # grid cells of all groups, and (leaf, pattern) rows
MAX_GROUP_WORK = 250_000  # one group's cells x its splits or leaves: 14 MB to fill them
MAX_LOOKUP = 10_000_000  # groups x global bins: the int32 lookups (40 MB)
# A group costs every stone one table row and a lookup per feature; a row costs only memory. A
# group is split into its two subtrees when that saves more than this many rows, and two
# consecutive groups joined when their joined grid has fewer than this many cells more.
GROUP_ROWS = 256
GATHER_ROWS = 65_536  # table rows gathered at once (3.7 MB): sets the stones per chunk


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


def _cuts(leaves: list[_Leaf]) -> dict[int, set[float]]:
    found: dict[int, set[float]] = {}
    for leaf in leaves:
        for _, feature, threshold, _ in leaf.conditions:
            found.setdefault(feature, set()).add(threshold)
    return found


def _groups(
    leaves: list[_Leaf], depth: int = 0
) -> tuple[float, list[list[_Leaf]], dict[int, set[float]]]:
    """One tree's leaves (or a subtree's: they share their first `depth` splits) as groups, each
    a whole subtree tabulated on its own threshold grid; their cost, cells plus GROUP_ROWS per
    group, the least over the ways of cutting the tree into subtrees (a small tree stays whole;
    past MAX_GROUP_WORK a group must be cut); and the thresholds the leaves' paths cross."""
    if len(leaves) == 1:
        parts: list[tuple[float, list[list[_Leaf]]]] = []
        cuts = _cuts(leaves)
    else:  # the next split parts the subtree in two; its thresholds are its halves' together
        left = _groups([x for x in leaves if x.conditions[depth][3]], depth + 1)
        right = _groups([x for x in leaves if not x.conditions[depth][3]], depth + 1)
        parts = [left[:2], right[:2]]
        cuts = {f: left[2].get(f, set()) | right[2].get(f, set()) for f in {*left[2], *right[2]}}
    cells = math.prod(len(c) + 1 for c in cuts.values())
    work = cells * max(sum(len(leaf.conditions) for leaf in leaves), len(leaves))
    whole = cells + GROUP_ROWS if work <= MAX_GROUP_WORK else math.inf
    if parts and parts[0][0] + parts[1][0] < whole:
        return parts[0][0] + parts[1][0], parts[0][1] + parts[1][1], cuts
    return whole, [leaves], cuts


def _cells(cuts: dict[int, set[float]]) -> int:
    """The cells of the threshold grid of `cuts`."""
    return math.prod(len(c) + 1 for c in cuts.values())


def _packed(groups: list[list[_Leaf]]) -> list[list[_Leaf]]:
    """Consecutive groups joined while a join pays: its grid (the joined thresholds) has fewer
    cells than the two grids and GROUP_ROWS, so the table grows by less than GROUP_ROWS rows and
    every stone gathers one row fewer. Leaves of any trees make one game (their values add), and
    a forest's small trees and subtrees share thresholds (the two-seed champion of 644 trees:
    3,192 groups -> 2,286, 11% more rows; benchmarks/serving_parts.py)."""
    out: list[list[_Leaf]] = []
    current: list[_Leaf] = []
    cuts: dict[int, set[float]] = {}
    splits = 0  # the current group's conditions, for its work (MAX_GROUP_WORK)
    for group in groups:
        found = _cuts(group)
        joined = {f: cuts.get(f, set()) | found.get(f, set()) for f in {*cuts, *found}}
        cells = _cells(joined)
        more = sum(len(leaf.conditions) for leaf in group)
        work = cells * max(splits + more, len(current) + len(group))
        if current and cells < _cells(cuts) + _cells(found) + GROUP_ROWS and work <= MAX_GROUP_WORK:
            current.extend(group)
            cuts, splits = joined, splits + more
            continue
        if current:
            out.append(current)
        current, cuts, splits = list(group), found, more
    if current:
        out.append(current)
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


def _group_cells(
    leaves: list[_Leaf], offsets: np.ndarray, rows: np.ndarray, features: int
) -> tuple[np.ndarray, dict[int, np.ndarray], list[int]]:
    """A group's contributions per cell of its threshold grid (a stone's values matter to its
    leaves only through which side of each threshold they fall): (cells, features) phi from the
    group's (leaf, pattern) `rows` (its leaves' first rows: `offsets`), the group's sorted
    thresholds per feature it splits on, and the features' strides in the cell index."""
    found = _cuts(leaves)
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
    """A forest's TreeSHAP contributions tabulated per group of leaves (a whole tree, one of its
    subtrees, or consecutive ones joined: `_groups`, `_packed`) and cell of the group's grid;
    `contributions(matrix)` returns what LightGBM's predict(matrix, pred_contrib=True) does.

    A stone is placed once in each feature's sorted thresholds (all trees'), which gives, through
    `lookup`, its cell in every group at once: a stone costs one table row per group."""

    def __init__(self, groups: list[list[_Leaf]], features: int) -> None:
        self.features = features
        everything = [leaf for group in groups for leaf in group]
        self.expected = float(sum(leaf.value * math.prod(leaf.zero) for leaf in everything))
        rows, offsets = _pattern_rows(everything, features)  # all leaves of all groups at once
        sizes = [math.prod(len(c) + 1 for c in _cuts(group).values()) for group in groups]
        starts = np.cumsum([0, *sizes[:-1]])
        self.table = np.empty((sum(sizes), features))  # filled in place: one group's cells extra
        built = []
        first = 0
        for group, start, size in zip(groups, starts, sizes, strict=True):
            phi, cuts, strides = _group_cells(
                group, offsets[first : first + len(group)], rows, features
            )
            self.table[start : start + size] = phi
            built.append((cuts, strides))
            first += len(group)
        self.cuts: list[np.ndarray] = []
        self.lookup: list[np.ndarray] = []  # per feature: (groups, bins) -> row part
        for f in range(features):
            found = [c[f] for c, _ in built if f in c]
            every = np.unique(np.concatenate(found)) if found else np.empty(0)
            self.cuts.append(every)
            lookup = np.zeros((len(groups), len(every) + 1), dtype=np.int32)
            for g, (cuts, strides) in enumerate(built):
                if f in cuts:
                    stride = strides[sorted(cuts).index(f)]
                    # a stone in global bin b lies below every cut >= every[b]
                    local = np.searchsorted(cuts[f], every, side="left")
                    lookup[g] = np.append(local, len(cuts[f])) * stride
            self.lookup.append(lookup)
        self.lookup[0] += starts[:, None].astype(np.int32)  # each group's first row, once
        self.chunk = max(1, GATHER_ROWS // len(groups))  # stones per gather

    @classmethod
    def from_dump(cls, dump: dict[str, Any]) -> LeafTables | None:
        """Tables for a dumped forest, or None: a split they do not model, or past the bounds."""
        groups: list[list[_Leaf]] = []
        cells = patterns = 0.0
        for tree in dump["tree_info"]:
            found = _leaves(tree)
            if found is None:
                return None
            cost, parts, _ = _groups(found)
            cells += cost - GROUP_ROWS * len(parts)
            patterns += sum(1 << len(leaf.features) for leaf in found)
            if max(cells, patterns) > MAX_TABLE_ROWS:
                logger.info("TreeSHAP tables would pass %d rows: LightGBM explains", MAX_TABLE_ROWS)
                return None
            groups += parts
        packed = _packed(groups)
        if sum(_cells(_cuts(group)) for group in packed) <= MAX_TABLE_ROWS:
            groups = packed  # (a join may add up to GROUP_ROWS rows: within the bound, or not)
        bins = sum(len(cuts) + 1 for cuts in _cuts([x for g in groups for x in g]).values())
        if not groups or len(groups) * bins > MAX_LOOKUP:
            return None
        return cls(groups, int(dump["max_feature_idx"]) + 1)

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
        for start in range(0, len(matrix), self.chunk):
            part = matrix[start : start + self.chunk]
            rows = self.lookup[0][:, np.searchsorted(self.cuts[0], part[:, 0], side="left")]
            for f in range(1, self.features):
                bins = np.searchsorted(self.cuts[f], part[:, f], side="left")
                rows = rows + self.lookup[f][:, bins]
            out[start : start + self.chunk, :-1] = self.table[rows].sum(axis=0)
        return out
