import numpy as np
import pandas as pd

from appraiser import schema
from appraiser.predict import Appraiser, score_file, score_frame


def test_chunked_scoring_matches_one_pass(trained, public, tmp_path):
    model = Appraiser.champion().model
    stones = public.sample(1000, random_state=2)[list(schema.FEATURES)]
    source = tmp_path / "in.csv"
    stones.to_csv(source, index=False)
    seen: list[int] = []
    summary = score_file(model, source, tmp_path / "out.csv", chunk_rows=300, progress=seen.append)
    assert summary.rows == 1000 and summary.errors == 0
    assert seen == [300, 300, 300, 100]
    chunked = pd.read_csv(tmp_path / "out.csv")
    whole = score_frame(model, stones.astype(str))
    np.testing.assert_allclose(chunked["price"], whole["price"].astype(float))


def test_error_lines_refer_to_the_file(trained, public, tmp_path):
    model = Appraiser.champion().model
    stones = public.head(10)[list(schema.FEATURES)].astype(object)
    stones.iloc[4, 0] = "abc"
    scored = score_frame(model, stones)
    assert np.isnan(scored.loc[4, "price"]) and "carat: not a number" in scored.loc[4, "error"]
    assert scored["price"].notna().sum() == 9


def test_scoring_a_file_starts_without_mlflow_or_scikit_learn(trained, tmp_path):
    """Defect (issue 12): `appraiser predict` spent ~6 s starting up, importing MLflow and
    scikit-learn and opening the tracking store, to read a model already on disk. It now takes
    the champion's version from the store's promotion history and the files from the cache."""
    import os
    import subprocess
    import sys

    from appraiser import champion

    version = Appraiser.champion().version  # fills the cache, as any first load does
    probe = (
        "import sys\n"
        "from appraiser.predict import Appraiser, boosters_without_estimators\n"
        "with boosters_without_estimators():  # as `appraiser predict` does\n"
        "    a = Appraiser.for_scoring()\n"
        "    a.model.predict_matrix(__import__('numpy').ones((3, 7)))\n"
        "print(a.version, sorted(m for m in ('mlflow', 'sklearn', 'sqlalchemy', 'pandera', 'yaml')"
        " if m in sys.modules))\n"
    )
    env = {**os.environ, "APPRAISER_HOME": str(trained)}
    env.pop("APPRAISER_DATABASE_URL", None)  # the default SQLite store: read without SQLAlchemy
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == [version, "[]"], done.stderr
    assert version == champion.current()


def test_the_cached_model_is_found_where_its_mlmodel_file_says(trained):
    from appraiser import model_cache

    version = Appraiser.champion().version  # fills the cache
    cached = model_cache.folder(version)
    assert model_cache.pricer_folder(version) == model_cache._pricer_folder_by_mlmodel(cached)


def test_scoring_falls_back_to_the_registry_when_the_cache_is_empty(trained, tmp_path):
    import shutil

    from appraiser import model_cache

    version = Appraiser.champion().version
    shutil.rmtree(model_cache.folder(version))
    assert Appraiser.for_scoring().version == version  # downloaded again through MLflow
    assert model_cache.is_complete(version)


def test_the_champion_read_without_sqlalchemy_is_the_stores(trained, tmp_path, monkeypatch):
    """champion.current reads the default SQLite store's promotion history with sqlite3
    (start-up): the same answer as store.Promotion read through SQLAlchemy; None with no store or
    table."""
    from appraiser import champion, store

    monkeypatch.delenv("APPRAISER_DATABASE_URL", raising=False)
    first = champion.current()
    assert first is not None and champion._stored() == first
    monkeypatch.setenv("APPRAISER_DATABASE_URL", store.database_url())  # the same file
    assert champion._stored() == first  # now read through SQLAlchemy
    assert champion._stored_sqlite(tmp_path / "none.db") is None
    (tmp_path / "empty.db").write_bytes(b"")
    assert champion._stored_sqlite(tmp_path / "empty.db") is None


def test_old_cached_versions_are_pruned(tmp_path):
    """Issue 13: cache/vN folders were never removed (on Cloud Run the cache is in memory).
    The loaded version and the newest three stay; a download a dead process left goes."""
    import os
    import time

    from appraiser import model_cache
    from tests.conftest import use_home

    use_home(tmp_path / "home")
    root = model_cache.root()
    for n in range(1, 8):
        (root / f"v{n}").mkdir(parents=True)
        (root / f"v{n}" / "MLmodel").write_text("flavors: {}\n")
    old, fresh = root / "v9.partial-abc", root / "v9.partial-def"
    old.mkdir()
    fresh.mkdir()
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    (root / "native").mkdir()  # compiled trees: not a version
    removed = model_cache.prune(loaded="2", also=["3"])  # 3: the champion
    assert sorted(removed, key=int) == ["1", "4"]
    assert sorted(p.name for p in root.iterdir()) == [
        "native",
        "v2",
        "v3",
        "v5",
        "v6",
        "v7",
        "v9.partial-def",
    ]
