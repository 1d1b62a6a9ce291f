"""A day of the store as Parquet (archive.export_day, `appraiser export`) and the retention rule
(archive.prune_appraisals, `appraiser retention`), on both backends: an expert-priced stone is
never deleted, and the archive holds it whole."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from appraiser import archive, feedback, schema, store
from appraiser.cli import app
from tests import pg


@pytest.fixture(params=pg.BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch) -> Iterator[str]:
    yield from pg.backend_url(request.param, tmp_path, monkeypatch)


def _serve(url: str, carat: float, days_ago: float) -> str:
    stone = {**schema.example_stone(), "carat": carat}
    when = store.utcnow() - timedelta(days=days_ago)
    return store.record_appraisal(stone, 1000 * carat, url=url, created_at=when, model_version="1")


def _read(path: str) -> list[dict]:
    with fsspec.open(path, "rb") as f:
        return pq.read_table(f).to_pylist()


def test_a_day_is_exported_with_its_reviewed_prices_and_their_stones(url: str) -> None:
    store.upgrade(url)
    today = [_serve(url, 1.0 + i / 10, days_ago=0) for i in range(3)]
    older = _serve(url, 2.5, days_ago=3)
    sent = feedback.submit(older, 9000.0, actor="expert-1")
    feedback.review(sent["id"], approve=True, actor="admin-1")

    done = archive.export_day(store.utcnow().date(), "memory://warehouse", url=url)
    assert (done.appraisals, done.feedback) == (3, 1)
    served = _read(done.files[0])
    assert [row["id"] for row in served] == today  # the day's, not the older one
    assert served[0]["carat"] == 1.0 and served[0]["cut"] == schema.example_stone()["cut"]
    assert served[0]["created_at"].tzinfo is not None and served[0]["model_version"] == "1"
    (label,) = _read(done.files[1])  # reviewed today, for a stone served three days ago
    assert label["appraisal_id"] == older and label["expert_price"] == 9000.0
    assert label["carat"] == 2.5 and label["status"] == "approved"
    assert "day=" in done.files[0] and done.files[0].startswith("memory://warehouse/appraisals/")

    empty = archive.export_day(store.utcnow().date() - timedelta(days=30), "memory://w2", url=url)
    assert (empty.appraisals, empty.feedback) == (0, 0)
    assert _read(empty.files[0]) == []
    # an empty day has the same column types
    with fsspec.open(empty.files[0], "rb") as f, fsspec.open(done.files[0], "rb") as g:
        assert pq.read_schema(f) == pq.read_schema(g)


def test_retention_never_deletes_a_stone_an_expert_priced(url: str, tmp_path: Path) -> None:
    store.upgrade(url)
    old = [_serve(url, 0.5 + i / 10, days_ago=400) for i in range(3)]
    recent = _serve(url, 1.2, days_ago=10)
    feedback.submit(old[0], 2000.0, actor="expert-1")  # pending: still a label in waiting
    approved = feedback.submit(old[1], 2500.0, actor="expert-1")
    feedback.review(approved["id"], approve=True, actor="admin-1")

    trial = archive.prune_appraisals(365, url=url, dry_run=True)
    assert (trial.deleted, trial.kept_labelled) == (1, 2)
    assert store.get_appraisal(old[2], url=url) is not None  # a dry run deletes nothing

    pruned = archive.prune_appraisals(365, url=url)
    assert (pruned.deleted, pruned.kept_labelled) == (1, 2)
    assert store.get_appraisal(old[2], url=url) is None
    for kept in (old[0], old[1], recent):
        assert store.get_appraisal(kept, url=url) is not None
    assert list(feedback.approved_stones()["carat"]) == [0.6]  # the label still has its stone
    with pytest.raises(ValueError, match="at least one day"):
        archive.prune_appraisals(0, url=url)

    runner = CliRunner()
    said = runner.invoke(app, ["retention", "--days", "365", "--dry-run"])
    assert said.exit_code == 0 and "would delete 0 appraisals" in said.output
    exported = runner.invoke(app, ["export", "--to", str(tmp_path / "exports")])
    assert exported.exit_code == 0, exported.output
    assert list((tmp_path / "exports" / "appraisals").glob("day=*/appraisals.parquet"))
    assert runner.invoke(app, ["export", "--day", "yesterday"]).exit_code == 2
