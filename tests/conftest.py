"""Shared fixtures: an isolated APPRAISER_HOME and one small trained champion per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from appraiser import challenge, data, schema
from appraiser.config import settings
from appraiser.models.boosters import LightGBMMember
from tests import pg

REPO = Path(__file__).resolve().parents[1]
FRANCESCO = Path(os.environ.get("APPRAISER_DATA", REPO.parent / "shared" / "data" / "diamonds.csv"))
# The environment before this file changes it: the notebooks run in it (see NotebooksAsAlone).
ENVIRONMENT_AT_START = dict(os.environ)
# Compiling a champion's trees (native.py) takes seconds per promotion; tests promote hundreds of
# times, so it is off here and tests/test_native.py turns it on where it is the subject.
os.environ["APPRAISER_NATIVE_TREES"] = "false"
# Freezing the heap after each load (a server's setting) would cost tests a full collection per
# app start and keep each test's garbage: tests/test_heap.py turns it on where it is the subject.
os.environ["APPRAISER_SETTLE_HEAP"] = "false"
# LightGBM's "basic" monotone constraints in this process: a retrain of 3,000 stones takes 10.6 s
# instead of 15.8 s. The served "advanced" method only prices more accurately (benchmarks/
# accuracy.py measures it); tests/test_models.py checks it stays the default, and the tests
# that run `appraiser` in a child process, and the notebooks, train with it.
LightGBMMember.monotone_method = "basic"
# The gate's double cross-fitting refits both recipes once per fold, more than half of a retrain's
# time: 5 folds here instead of 10 (every judged stone is still priced by models that never saw
# it; tests/test_gate.py::test_the_gate_cross_fits_on_ten_folds_by_default pins the product's 10).
challenge.CROSS_FIT_FOLDS = 5


def pytest_configure(config: pytest.Config) -> None:
    """Without APPRAISER_TEST_POSTGRES_URL, PostgreSQL tests get a throwaway server: tests/pg.py."""
    from tests import pg

    pg.start_throwaway()
    config.pluginmanager.register(NotebooksAsAlone(), "appraiser-notebooks-as-alone")


# The modules whose tests build the image, train or start many processes (most of the suite's
# time), slowest first, the modelling notebook among them: pytest-xdist (`make pytest`) hands tests
# out in collection order, so these start first and the last to finish is a short test, not a
# minute-long retrain that started late.
SLOW_FIRST = (
    "test_image.py",
    "test_trust.py",
    "test_pipeline.py",
    "test_access.py",
    "test_multiprocess.py",
    "test_api.py",
    "02-modeling.ipynb",
    "test_observability.py",
    "test_spark.py",
    "test_native.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The SLOW_FIRST modules first (each module's tests together, in their own order)."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))


class NotebooksAsAlone:
    """`make pytest` runs the notebooks (nbmake) in the same session as the tests, on the same
    pytest-xdist workers: each notebook's kernel gets the environment the session started with,
    as `pytest --nbmake notebooks` alone gives it, not the settings above or a test's leftovers
    (its APPRAISER_HOME, say)."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        if item.path.suffix != ".ipynb":
            return (yield)
        during = dict(os.environ)
        os.environ.clear()
        os.environ.update(ENVIRONMENT_AT_START)
        try:
            return (yield)
        finally:
            os.environ.clear()
            os.environ.update(during)


def pytest_unconfigure(config: pytest.Config) -> None:
    from tests import pg

    pg.stop_throwaway()


@pytest.fixture(autouse=True)
def no_leaked_mlflow_uri() -> Iterator[None]:
    """A test that leaves MLFLOW_TRACKING_URI behind makes every later test share its registry
    (mlflow.set_tracking_uri exports it): fail the test that leaked it, not twenty others."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {name: os.environ.get(name) for name in names}
    yield
    after = {name: os.environ.get(name) for name in names}
    assert after == before, f"the test left MLflow's environment changed: {before} -> {after}"


@pytest.fixture
def one_candidate(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Training and retraining tune LightGBM alone (APPRAISER_CANDIDATES), children included:
    for tests of the loop, not of the candidates (test_train and test_models cover those), at
    about a third of the cost of tuning all four."""
    monkeypatch.setenv("APPRAISER_CANDIDATES", "lightgbm")
    settings.cache_clear()
    yield
    monkeypatch.undo()
    settings.cache_clear()


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


class LiveServer:
    """An `appraiser.api` app served by uvicorn in a thread of the test process."""

    def __init__(self, app: object, port: int) -> None:
        import threading

        import uvicorn

        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


API_KEY = "test-admin-key-0123456789abcdef"  # at least 24 characters, as serving requires


def private_home(trained_home: Path, root: Path) -> Path:
    """`root`/home: a copy of the trained home (its registry and model cache, the lineage, an
    empty store otherwise)."""
    import shutil

    home = root / "home"
    shutil.copytree(
        trained_home, home, ignore=shutil.ignore_patterns("appraiser.db*", "runs", "*.lock")
    )
    _copy_lineage(trained_home / "appraiser.db", home / "appraiser.db")
    return home


@pytest.fixture
def home_copy(trained_home: Path, tmp_path: Path) -> Path:
    """A private copy of the trained home made this test's APPRAISER_HOME: a test may promote,
    ingest and appraise without touching others."""
    home = private_home(trained_home, tmp_path)
    use_home(home)
    return home


def _copy_lineage(source: Path, target: Path) -> None:
    """Copy the store with what the registry needs (each version's lineage, the champion
    history), without the stones, appraisals and jobs other tests left in the shared home."""
    import sqlite3

    if not source.exists():
        return
    with sqlite3.connect(source) as src, sqlite3.connect(target) as conn:
        src.backup(conn)  # consistent, WAL included
        conn.execute("PRAGMA journal_mode=WAL")
        # the audit trail refuses deletions (migration 0006): this private copy starts empty,
        # so its guards are lifted for the clean-up and put back as they were
        guards = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?",
            ("audit_events",),
        ).fetchall()
        for name, _ in guards:
            conn.execute(f'DROP TRIGGER "{name}"')
        for table in (
            "feedback",
            "appraisals",
            "rejected_rows",
            "diamonds",
            "batches",
            "jobs",
            "evaluations",
            "api_keys",
            "audit_events",
        ):
            conn.execute(f"DELETE FROM {table}")
        for _, sql in guards:
            conn.execute(sql)


@pytest.fixture
def live_server(home_copy: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The API and web page on a free loopback port, serving the trained champion, with admin
    endpoints enabled by API_KEY. Yields the base URL (http://127.0.0.1:PORT)."""
    from appraiser.api import create_app

    monkeypatch.setenv("APPRAISER_API_KEY", API_KEY)
    settings.cache_clear()
    with LiveServer(create_app(), free_port()) as server:
        yield server.url
    settings.cache_clear()


@contextmanager
def lock_held_elsewhere() -> Iterator[None]:
    """The pipeline lock held by another thread while the block runs (as another process would)."""
    import threading

    from appraiser import locking

    entered, release = threading.Event(), threading.Event()

    def holder() -> None:
        with locking.exclusive():
            entered.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    assert entered.wait(30)
    try:
        yield
    finally:
        release.set()
        thread.join()


@pytest.fixture(params=pg.BACKENDS)
def store_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """An empty default store on each backend (PostgreSQL when a server is at hand),
    APPRAISER_HOME = tmp_path/home."""
    yield from pg.backend_url(request.param, tmp_path, monkeypatch)


@pytest.fixture
def with_champion(home_copy: Path, store_url: str, small_csv: Path) -> str:
    """The trained champion (v1, trained on every stone of small_csv) in a private home, with its
    lineage in this test's store (SQLite or PostgreSQL)."""
    from appraiser import data, lineage

    lineage.record("1", data.load(small_csv).clean, run_id="test", source="small", kind="train")
    return "1"
