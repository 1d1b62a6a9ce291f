"""Shared fixtures: an isolated APPRAISER_HOME and one small trained champion per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from appraiser import data, schema
from appraiser.config import settings

REPO = Path(__file__).resolve().parents[1]
FRANCESCO = Path(os.environ.get("APPRAISER_DATA", REPO.parent / "shared" / "data" / "diamonds.csv"))


def use_home(path: Path) -> None:
    os.environ["APPRAISER_HOME"] = str(path)
    settings.cache_clear()


@pytest.fixture(scope="session")
def public() -> pd.DataFrame:
    """The validated public table."""
    return data.load(None).clean


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory: pytest.TempPathFactory, public: pd.DataFrame) -> Path:
    """1,500 priced public stones plus a few bad rows, as a CSV."""
    path = tmp_path_factory.mktemp("data") / "small.csv"
    sample = public.sample(1500, random_state=1)
    raw = sample.astype(object)
    bad = sample.head(3).astype(object).copy()
    bad.iloc[0, bad.columns.get_loc("price")] = -1
    bad.iloc[1, bad.columns.get_loc("cut")] = "Excellent"
    bad.iloc[2, bad.columns.get_loc("carat")] = "heavy"
    pd.concat([raw, bad]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory: pytest.TempPathFactory, small_csv: Path) -> Path:
    """An APPRAISER_HOME holding one champion trained (quickly, once) on `small_csv`."""
    from appraiser.train import train

    home = tmp_path_factory.mktemp("home")
    use_home(home)
    result = train(small_csv, trials=2, timeout=20, show_progress=False)
    assert result.champion
    return home


@pytest.fixture
def trained(trained_home: Path) -> Iterator[Path]:
    """The trained home, made this test's APPRAISER_HOME (other tests point elsewhere)."""
    use_home(trained_home)
    yield trained_home


@pytest.fixture
def stone() -> dict:
    return schema.example_stone()
