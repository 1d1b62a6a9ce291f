"""Compiled trees (native.py): the same prices as LightGBM, found again from the cache without
compiling, never run when damaged, disagreeing or writable by others, and picked up by a server
while it serves."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from appraiser import champion, features, registry
from appraiser.api import create_app
from appraiser.config import settings
from appraiser.fast import compiled as native
from appraiser.models import CANDIDATES, AdaptiveRange, LazyBooster, PriceModel
from appraiser.predict import Appraiser, ChampionWatcher

pytest.importorskip("lleaves")  # not installed past Python 3.13 (pyproject.toml)


@pytest.fixture
def compiling(home_copy: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("APPRAISER_NATIVE_TREES", "true")
    settings.cache_clear()
    yield home_copy
    settings.cache_clear()


@pytest.fixture(scope="module")
def forest_model(public: pd.DataFrame) -> PriceModel:
    """A small model with every kind of LightGBM forest: a booster (the mean of two seeds' fits,
    as registered), a random forest (rf mode, averaged trees) and a range's spread model."""
    stones = public.sample(2000, random_state=11).reset_index(drop=True)
    log_price = features.log_price(stones["price"])
    members = [
        CANDIDATES["lightgbm"].build({"n_estimators": 60}).fit_averaged(stones, log_price, 2),
        CANDIDATES["random_forest"]
        .build({"n_estimators": 15, "num_leaves": 31})
        .fit(stones, log_price),
    ]
    matrix = features.encode(stones).to_numpy()
    residuals = np.random.default_rng(0).normal(0, 0.1, len(stones)) * (1 + matrix[:, 0])
    return PriceModel(
        members=members,
        weights=[0.5, 0.5],
        intervals=[0.1] * 5,
        coverage=0.9,
        reference=stones,
        ranges=AdaptiveRange.fit(matrix, residuals, 0.9, seed=0),
    )


def _fresh(model: PriceModel) -> PriceModel:
    """The same model, nothing compiled (the boosters are shared, the `native` slots not)."""
    import copy

    clone = copy.copy(model)
    clone.members = [copy.copy(m) for m in model.members]
    for member in clone.members:
        member.accelerated = None  # type: ignore[attr-defined]
    clone.ranges = copy.copy(model.ranges)
    assert clone.ranges is not None
    clone.ranges.accelerated = None
    assert not any(f.compiled for f in native.forests(clone))
    return clone


def _matrix(public: pd.DataFrame) -> np.ndarray:
    return features.encode(public.sample(3000, random_state=7)).to_numpy()


def test_every_kind_of_forest_prices_through_its_compiled_code(
    compiling: Path, forest_model: PriceModel, public: pd.DataFrame, monkeypatch
) -> None:
    model = _fresh(forest_model)
    assert sorted(f.role for f in native.forests(model)) == ["lightgbm", "random_forest", "spread"]
    matrix = _matrix(public)
    want = forest_model.predict_matrix(matrix)  # LightGBM's own answers
    assert native.attach(model, build=True)
    for forest in native.forests(model):  # from here on LightGBM must not be asked
        monkeypatch.setattr(forest.booster, "predict", _must_not_run)
    for got, expected in zip(model.predict_matrix(matrix), want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    for one in range(3):  # a lone stone takes another path through lleaves
        np.testing.assert_allclose(
            model.predict_matrix(matrix[one : one + 1])[0], want[0][one : one + 1], rtol=1e-12
        )


def _must_not_run(*_: object, **__: object) -> None:
    raise AssertionError("LightGBM was asked although compiled trees were in place")


def test_the_cache_is_used_without_compiling_again(
    compiling: Path, forest_model: PriceModel, monkeypatch
) -> None:
    assert native.attach(_fresh(forest_model), build=True)

    def no_compiling(*_: object) -> None:
        raise AssertionError("compiled again although the cache holds the code")

    monkeypatch.setattr(native, "_build_in_child", no_compiling)
    assert native.attach(_fresh(forest_model), build=True)
    assert sorted(p.suffix for p in native.folder().iterdir()) == sorted(
        [".lock", ".o", ".sha256", ".npz"] * 3  # .answers.npz: LightGBM's, to check the code
    )


def test_kept_answers_that_are_wrong_damaged_or_stale_are_made_again(
    compiling: Path, forest_model: PriceModel
) -> None:
    """LightGBM's answers kept beside the code spare a load LightGBM; when they disagree with the
    code, cannot be read, or come from another LightGBM version, LightGBM is asked again (and
    has the last word): good code is never refused for a bad answers file."""
    assert native.attach(_fresh(forest_model), build=True)
    kept = sorted(native.folder().glob("*.answers.npz"))
    assert len(kept) == 3
    with np.load(kept[0]) as saved:
        wrong = {name: saved[name] for name in saved.files}
    wrong["expected"] = wrong["expected"] + 1e-6
    np.savez(kept[0].with_suffix(""), **wrong)  # savez adds .npz back
    kept[1].write_bytes(b"")  # damaged
    with np.load(kept[2]) as saved:
        stale = {name: saved[name] for name in saved.files}
    np.savez(kept[2].with_suffix(""), **{**stale, "lightgbm": np.array("0.0.1")})
    for path in kept:
        path.chmod(0o644)
    again = _fresh(forest_model)
    assert native.attach(again, build=False)  # every forest compiled, nothing refused
    assert not list(native.folder().glob("*.refused"))
    for path in kept:  # made again by LightGBM, whole and current
        with np.load(path) as saved:
            assert str(saved["lightgbm"]) == native._lightgbm_version()
    with np.load(kept[0]) as saved:
        assert not np.array_equal(saved["expected"], wrong["expected"])


def test_a_failing_compiler_is_not_run_again_at_once(
    compiling: Path, forest_model: PriceModel, monkeypatch
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("the compiler exited with -9: killed")

    real = native._build_in_child
    monkeypatch.setattr(native, "_build_in_child", broken)
    assert not native.attach(_fresh(forest_model), build=True)
    assert len(list(native.folder().glob("*.failed"))) == 3
    monkeypatch.setattr(native, "_build_in_child", _must_not_run)
    assert not native.attach(_fresh(forest_model), build=True)  # within the back-off
    monkeypatch.setattr(native, "_build_in_child", real)
    monkeypatch.setattr(native, "RETRY_SECONDS", 0)  # the back-off over
    assert native.attach(_fresh(forest_model), build=True)
    assert not list(native.folder().glob("*.failed"))


def test_a_damaged_compiled_file_is_never_run(compiling: Path, forest_model: PriceModel) -> None:
    """Defect: machine code damaged on disk was run, and crashed the process (SIGSEGV)."""
    assert native.attach(_fresh(forest_model), build=True)
    for compiled in native.folder().glob("*.o"):
        compiled.write_bytes(b"\0" * 64)  # not machine code
    again = _fresh(forest_model)
    assert not native.attach(again, build=False)  # only looks in the cache: finds nothing usable
    assert native.attach(again, build=True)  # compiled afresh


def test_code_others_may_write_is_never_run(compiling: Path, forest_model: PriceModel) -> None:
    assert native.attach(_fresh(forest_model), build=True)
    for compiled in native.folder().glob("*.o"):
        compiled.chmod(0o666)
    assert not native.attach(_fresh(forest_model), build=False)


def test_compiled_trees_that_disagree_are_refused_for_good(
    compiling: Path, forest_model: PriceModel, monkeypatch
) -> None:
    model = _fresh(forest_model)
    forest = next(f for f in native.forests(model) if f.role == "lightgbm")
    real = forest.booster.predict
    monkeypatch.setattr(forest.booster, "predict", lambda m, **kw: real(m, **kw) + 1e-6)
    assert not native.attach(model, build=True)
    assert forest.holder.accelerated is None  # LightGBM keeps it; the other forests are compiled
    assert [f.role for f in native.forests(model) if not f.compiled] == ["lightgbm"]
    assert len(list(native.folder().glob("*.refused"))) == 1

    for path in [*native.folder().glob("*.o"), *native.folder().glob("*.sha256")]:
        path.unlink()  # nothing left to load: only the mark keeps it from compiling again
    builds = []
    monkeypatch.setattr(native, "_build_in_child", lambda *a: builds.append(a))
    native.attach(model, build=True)
    assert builds == []  # not compiled again and again


def test_a_forest_past_the_size_limit_stays_with_lightgbm(
    compiling: Path, forest_model: PriceModel, monkeypatch
) -> None:
    model = _fresh(forest_model)
    leaves = {f.role: native._leaves(native._model_text(f.booster)) for f in native.forests(model)}
    smallest = min(leaves, key=leaves.__getitem__)
    assert sorted(leaves.values())[0] < sorted(leaves.values())[1]
    monkeypatch.setattr(native, "MAX_LEAVES", leaves[smallest])  # the others have more
    assert not native.attach(model, build=True)
    assert [f.role for f in native.forests(model) if f.compiled] == [smallest]


def test_switched_off_nothing_is_compiled(home_copy: Path, forest_model: PriceModel) -> None:
    assert not settings().native_trees  # tests run with it off (conftest)
    assert not native.attach(_fresh(forest_model), build=True)
    assert not native.folder().exists()


def test_a_server_prices_with_lightgbm_until_its_compiled_trees_are_ready(
    compiling: Path, stone: dict
) -> None:
    watcher = ChampionWatcher(interval=60)
    with TestClient(create_app(watcher=watcher)) as client:
        first = client.post("/v1/appraisals", json=stone)
        assert first.status_code == 200
        current = watcher.current
        assert current is not None and native.forests(current.model)
        deadline = time.monotonic() + 300
        while not all(f.compiled for f in native.forests(current.model)):
            assert time.monotonic() < deadline, "the trees were not compiled in the background"
            time.sleep(0.2)
        second = client.post("/v1/appraisals", json=stone)
        assert second.status_code == 200
        assert second.json()["price"] == first.json()["price"]
        assert second.json()["price_low"] == first.json()["price_low"]


def test_the_predict_command_compiles_once_then_loads(compiling: Path, monkeypatch) -> None:
    appraiser = Appraiser.for_scoring()
    assert native.forests(appraiser.model)
    assert all(f.compiled for f in native.forests(appraiser.model))
    monkeypatch.setattr(native, "_build_in_child", _must_not_run)
    again = Appraiser.for_scoring()  # would compile if the cache did not serve
    assert all(f.compiled for f in native.forests(again.model))
    # and checked against the answers LightGBM gave the first time: LightGBM not even loaded
    assert all(isinstance(f.booster, LazyBooster) for f in native.forests(again.model))
    assert not any(f.booster._booster for f in native.forests(again.model))
    _, loaded = registry.load_version(str(champion.current()))  # a server's load: the cache only
    assert all(f.compiled for f in native.forests(loaded))
