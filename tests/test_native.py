"""Compiled trees (native.py): the same prices as LightGBM, found again from the cache, never
trusted when they disagree, and picked up by a server while it serves."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from appraiser import features, model_cache, native, registry
from appraiser.api import create_app
from appraiser.config import settings
from appraiser.models import LightGBMMember, PriceModel
from appraiser.predict import Appraiser, ChampionWatcher


@pytest.fixture
def compiling(home_copy: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("APPRAISER_NATIVE_TREES", "true")
    settings.cache_clear()
    yield home_copy
    settings.cache_clear()


def _lightgbm_only(model: PriceModel) -> PriceModel:
    """The model with every compiled forest taken away: LightGBM's own answers."""
    fresh = PriceModel.load(model_cache.pricer_folder(registry.champion_version() or ""))
    assert not any(f.compiled for f in native.forests(fresh))
    return fresh


def test_compiled_trees_price_as_lightgbm_does(compiling: Path, public) -> None:
    version, model = registry.load_version()
    assert native.forests(model), "the test champion has LightGBM trees (member or spread)"
    assert not any(f.compiled for f in native.forests(model))  # nothing compiled yet
    assert native.attach(model, build=True)
    assert all(f.compiled for f in native.forests(model))

    stones = public.sample(3000, random_state=7)
    matrix = features.encode(stones).to_numpy()
    reference = _lightgbm_only(model)
    for got, want in zip(
        model.predict_matrix(matrix), reference.predict_matrix(matrix), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    for one in range(3):  # a lone stone takes another path through lleaves
        np.testing.assert_allclose(
            model.predict_matrix(matrix[one : one + 1])[0],
            reference.predict_matrix(matrix[one : one + 1])[0],
            rtol=1e-12,
        )

    # a second load finds the compiled code in the cache, without compiling
    started = time.perf_counter()
    _, again = registry.load_version(version)
    assert all(f.compiled for f in native.forests(again))
    assert time.perf_counter() - started < 30
    assert sorted(p.suffix for p in native.folder().iterdir()) == sorted(
        [".o", ".sha256", ".txt"] * len(native.forests(model))
    )


def test_a_damaged_compiled_file_is_never_used(compiling: Path) -> None:
    """Defect: machine code damaged on disk was run, and crashed the process (SIGSEGV)."""
    _, model = registry.load_version()
    assert native.attach(model, build=True)
    for compiled in native.folder().glob("*.o"):
        compiled.write_bytes(b"\0" * 64)  # not machine code

    _, reloaded = registry.load_version()  # load_version only looks in the cache
    assert not any(f.compiled for f in native.forests(reloaded))
    assert native.attach(reloaded, build=True)  # compiled afresh
    assert all(f.compiled for f in native.forests(reloaded))


def test_compiled_trees_that_disagree_are_refused(
    compiling: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, model = registry.load_version()
    member = next(f for f in native.forests(model) if isinstance(f.holder, LightGBMMember))
    real = member.booster.predict
    monkeypatch.setattr(member.booster, "predict", lambda m, **kw: real(m, **kw) + 1e-6)
    native.attach(model, build=True)
    assert member.holder.native is None  # LightGBM keeps the member
    key = native._key(native._model_text(member.booster))
    assert not (native.folder() / f"{key}.sha256").exists()  # the next build starts afresh


def test_switched_off_nothing_is_compiled(home_copy: Path) -> None:
    assert not settings().native_trees  # tests run with it off (conftest)
    _, model = registry.load_version()
    assert not native.attach(model, build=True)
    assert not native.folder().exists()


def test_a_server_prices_with_lightgbm_until_its_compiled_trees_are_ready(
    compiling: Path, stone: dict
) -> None:
    watcher = ChampionWatcher(interval=60)
    with TestClient(create_app(watcher=watcher)) as client:
        first = client.post("/v1/appraisals", json=stone)
        assert first.status_code == 200
        current = watcher.current
        assert current is not None
        deadline = time.monotonic() + 120
        while not all(f.compiled for f in native.forests(current.model)):
            assert time.monotonic() < deadline, "the trees were not compiled in the background"
            time.sleep(0.2)
        second = client.post("/v1/appraisals", json=stone)
        assert second.status_code == 200
        assert second.json()["price"] == first.json()["price"]
        assert second.json()["price_low"] == first.json()["price_low"]


def test_the_predict_command_compiles_once_and_reuses(compiling: Path) -> None:
    appraiser = Appraiser.for_scoring()
    assert all(f.compiled for f in native.forests(appraiser.model))
    files = sorted(native.folder().iterdir())
    again = Appraiser.for_scoring()
    assert all(f.compiled for f in native.forests(again.model))
    assert sorted(native.folder().iterdir()) == files
