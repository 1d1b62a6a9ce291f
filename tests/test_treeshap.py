"""TreeSHAP from tables (fast/tables.py): LightGBM's contributions, to rounding, without it."""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from appraiser import features
from appraiser.fast import probe as probes
from appraiser.fast import tables as treeshap


@pytest.fixture(scope="module")
def stones(public: pd.DataFrame) -> np.ndarray:
    return features.encode(public.sample(3000, random_state=3)).to_numpy()


def each_trees_groups(model: lgb.Booster) -> list[Any]:
    """The groups of every tree on its own, before tables._packed joins them."""
    groups = []
    for tree in model.dump_model()["tree_info"]:
        leaves = treeshap._leaves(tree)
        assert leaves is not None
        groups += treeshap._groups(leaves)[1]
    return groups


def booster(stones: np.ndarray, **params: object) -> lgb.Booster:
    target = stones[:, 0] * 2 + stones[:, 1] * 0.1 + np.sin(stones[:, 4])
    settings = {"num_leaves": 15, "learning_rate": 0.1, "verbose": -1, **params}
    return lgb.train(settings, lgb.Dataset(stones, target), num_boost_round=60)


@pytest.mark.parametrize("params", [{}, {"bagging_fraction": 0.7, "bagging_freq": 1}])
def test_the_tables_give_lightgbms_contributions(stones: np.ndarray, params: dict) -> None:
    model = booster(stones, **params)
    tables = treeshap.LeafTables.build(model)
    assert tables is not None
    for rows in (stones[:1], stones[:7], stones, probes.stones(None, tables.cuts)):
        expected = model.predict(rows, pred_contrib=True)
        np.testing.assert_allclose(tables.contributions(rows), expected, rtol=0, atol=1e-10)
    # additive: contributions and the expected value sum to the prediction
    np.testing.assert_allclose(
        tables.contributions(stones).sum(axis=1), model.predict(stones), rtol=0, atol=1e-10
    )


def test_small_trees_share_grids_and_give_the_same_contributions(stones: np.ndarray) -> None:
    """Consecutive trees (or subtrees) whose joined threshold grid costs fewer rows than a group
    are tabulated as one group: a stone gathers fewer rows, the values are LightGBM's."""
    model = booster(stones, bagging_fraction=0.7, bagging_freq=1)
    alone = each_trees_groups(model)
    tables = treeshap.LeafTables.build(model)
    assert tables is not None
    groups = len(tables.lookup[0])  # one lookup row per group
    assert groups < 0.75 * len(alone), (groups, len(alone))
    expected = model.predict(stones, pred_contrib=True)
    np.testing.assert_allclose(tables.contributions(stones), expected, rtol=0, atol=1e-10)
    packed = treeshap._packed(alone)
    assert len(packed) == groups  # the groups the tables use

    def cells(group: list[Any]) -> int:
        return treeshap._cells(treeshap._cuts(group))

    assert len(tables.table) == sum(cells(group) for group in packed)
    # the joins paid, in total: grids plus a group's cost each, summed, fell
    cost = sum(cells(g) for g in alone) + treeshap.GROUP_ROWS * len(alone)
    assert sum(cells(g) for g in packed) + treeshap.GROUP_ROWS * len(packed) < cost
    for group in packed:  # no group past the work bound
        splits = sum(len(leaf.conditions) for leaf in group)
        assert cells(group) * max(splits, len(group)) <= treeshap.MAX_GROUP_WORK


def test_the_tables_explain_a_mean_of_boosters(stones: np.ndarray) -> None:
    """A registered booster is the mean of two seeds' fits (boosters.average_forests)."""
    from appraiser.models.boosters import average_forests

    bagged = {"bagging_fraction": 0.7, "bagging_freq": 1}
    fits = [booster(stones, **bagged, seed=s) for s in (1, 2)]
    mean = lgb.Booster(model_str=average_forests([f.model_to_string() for f in fits]))
    assert mean.num_trees() == 120
    tables = treeshap.LeafTables.build(mean)
    assert tables is not None
    expected = np.mean([f.predict(stones, pred_contrib=True) for f in fits], axis=0)
    np.testing.assert_allclose(mean.predict(stones, pred_contrib=True), expected, atol=1e-10)
    np.testing.assert_allclose(tables.contributions(stones), expected, rtol=0, atol=1e-10)


def test_boosters_of_other_shapes_are_not_averaged(stones: np.ndarray) -> None:
    """Trees of other features or another objective cannot join: the merge refuses them."""
    from appraiser.models.boosters import average_forests

    fit = booster(stones).model_to_string()
    for other in (booster(stones[:, :-1]), booster(stones, objective="huber")):
        with pytest.raises(ValueError, match="other shapes"):
            average_forests([fit, other.model_to_string()])


@pytest.fixture(scope="module")
def big_trees(stones: np.ndarray) -> lgb.Booster:
    """Trees of 48 leaves, the LightGBM candidate's largest: too large for one grid each."""
    return booster(stones, num_leaves=48, min_child_samples=2)


def test_trees_too_large_for_one_grid_are_tabulated_by_subtree(
    stones: np.ndarray, big_trees: lgb.Booster
) -> None:
    dump = big_trees.dump_model()
    leaves = [treeshap._leaves(tree) for tree in dump["tree_info"]]
    assert max(len(found) for found in leaves if found) >= 40
    tables = treeshap.LeafTables.build(big_trees)
    assert tables is not None
    assert len(tables.lookup[0]) > big_trees.num_trees()  # some trees were cut into subtrees
    for rows in (stones[:1], stones[:9], stones, probes.stones(None, tables.cuts)):
        expected = big_trees.predict(rows, pred_contrib=True)
        np.testing.assert_allclose(tables.contributions(rows), expected, rtol=0, atol=1e-10)


def test_the_memory_bounds_hold_or_lightgbm_explains(
    stones: np.ndarray, big_trees: lgb.Booster, monkeypatch: pytest.MonkeyPatch
) -> None:
    tables = treeshap.LeafTables.build(big_trees)
    assert tables is not None
    rows, groups = len(tables.table), len(tables.lookup[0])
    assert rows <= treeshap.MAX_TABLE_ROWS
    assert sum(lookup.size for lookup in tables.lookup) <= treeshap.MAX_LOOKUP
    # a tighter bound on one group's work cuts more subtrees, and the answers stay exact (a tenth
    # of it: far tighter, a single deep leaf of these trees can exceed it, and then LightGBM
    # explains, the path the bounds below test: 10,000 did so for one leaf on 2026-12-07)
    monkeypatch.setattr(treeshap, "MAX_GROUP_WORK", treeshap.MAX_GROUP_WORK // 10)
    finer = treeshap.LeafTables.build(big_trees)
    assert finer is not None and len(finer.lookup[0]) > groups
    np.testing.assert_allclose(
        finer.contributions(stones), tables.contributions(stones), rtol=0, atol=1e-10
    )
    monkeypatch.undo()
    # the groups unpacked (_packed joins them when a join pays, at fewer than GROUP_ROWS rows more)
    alone = each_trees_groups(big_trees)
    unpacked_rows = sum(treeshap._cells(treeshap._cuts(group)) for group in alone)
    assert unpacked_rows < rows  # packing these trees adds rows (each join fewer than GROUP_ROWS)
    for bound, value in (("MAX_TABLE_ROWS", unpacked_rows - 1), ("MAX_LOOKUP", groups)):
        with monkeypatch.context() as patch:
            patch.setattr(treeshap, bound, value)
            assert treeshap.LeafTables.build(big_trees) is None, bound
    with monkeypatch.context() as patch:  # packed past the bound, unpacked within: unpacked
        patch.setattr(treeshap, "MAX_TABLE_ROWS", rows - 1)
        within = treeshap.LeafTables.build(big_trees)
        assert within is not None
        assert len(within.lookup[0]) == len(alone) and len(within.table) == unpacked_rows


def test_a_categorical_split_is_left_to_lightgbm(stones: np.ndarray) -> None:
    codes = stones.copy()  # column 5 holds the color's code
    target = np.isin(np.round(codes[:, 5]), [1, 3]).astype(float)
    data = lgb.Dataset(codes, target, categorical_feature=[5])
    model = lgb.train({"num_leaves": 7, "verbose": -1, "min_data_per_group": 5}, data, 20)
    assert "'=='" in str(model.dump_model()) and treeshap.LeafTables.build(model) is None


def test_tables_that_disagree_with_lightgbm_are_not_used(stones: np.ndarray, monkeypatch) -> None:
    model = booster(stones)
    real = treeshap.LeafTables.contributions
    monkeypatch.setattr(treeshap.LeafTables, "contributions", lambda self, m: real(self, m) + 1e-7)
    assert treeshap.LeafTables.build(model) is None


def test_the_served_champion_explains_from_tables(home_copy, monkeypatch) -> None:
    """The champion a server loads explains without LightGBM's TreeSHAP, with the same dollars."""
    from appraiser import schema
    from appraiser.models import LightGBMMember
    from appraiser.predict import ChampionWatcher

    watcher = ChampionWatcher()
    assert watcher.check() and watcher.current is not None
    model = watcher.current.model
    members = [m for m in model.members if isinstance(m, LightGBMMember)]
    if not members:
        pytest.skip("the test champion has no LightGBM member")
    assert watcher.tables_thread is not None  # made in the background: LightGBM meanwhile
    watcher.tables_thread.join(timeout=120)
    assert all(m.accelerated is not None and m.accelerated.tables is not None for m in members)
    stones = [schema.example_stone(), {**schema.example_stone(), "carat": 2.1, "x": 8.2}]
    with_tables = watcher.current.appraise(stones, explain=True)
    saved = [m.accelerated for m in members]
    for m in members:
        m.accelerated = None
    by_lightgbm = watcher.current.appraise(stones, explain=True)
    assert with_tables == by_lightgbm
    real: list = [m.booster for m in members]
    for m, tables, booster_of in zip(members, saved, real, strict=True):
        m.accelerated = tables
        monkeypatch.setattr(m, "booster", _NoTreeShap(booster_of))
    assert watcher.current.appraise(stones, explain=True) == with_tables
    # a missing value goes LightGBM's own way (its default side), so LightGBM explains it
    member = members[0]
    monkeypatch.setattr(member, "booster", real[0])
    gap = features.encode_stones(stones).astype(float)
    gap[0, 1] = np.nan
    np.testing.assert_allclose(
        member._tree_contributions(gap),
        real[0].predict(gap, pred_contrib=True),
        rtol=0,
        atol=1e-12,
    )


class _NoTreeShap:
    """A booster that refuses pred_contrib: explanations must come from the tables."""

    def __init__(self, real: lgb.Booster) -> None:
        self.real = real

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        assert not kwargs.get("pred_contrib"), "LightGBM's TreeSHAP was asked"
        return self.real.predict(*args, **kwargs)

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)
