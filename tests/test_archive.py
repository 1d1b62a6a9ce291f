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

from appraiser import archive, clock, feedback, schema, store
from appraiser.cli import app
from tests import pg


@pytest.fixture(params=pg.BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch) -> Iterator[str]:
    yield from pg.backend_url(request.param, tmp_path, monkeypatch)


def _serve(url: str | None, carat: float, days_ago: float) -> str:
    stone = {**schema.example_stone(), "carat": carat}
    when = clock.now() - timedelta(days=days_ago)
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

    done = archive.export_day(clock.now().date(), "memory://warehouse", url=url)
    assert (done.appraisals, done.feedback) == (3, 1)
    served = _read(done.files[0])
    assert [row["id"] for row in served] == today  # the day's, not the older one
    assert served[0]["carat"] == 1.0 and served[0]["cut"] == schema.example_stone()["cut"]
    assert served[0]["created_at"].tzinfo is not None and served[0]["model_version"] == "1"
    (label,) = _read(done.files[1])  # reviewed today, for a stone served three days ago
    assert label["appraisal_id"] == older and label["expert_price"] == 9000.0
    assert label["carat"] == 2.5 and label["status"] == "approved"
    assert "day=" in done.files[0] and done.files[0].startswith("memory://warehouse/appraisals/")

    empty = archive.export_day(clock.now().date() - timedelta(days=30), "memory://w2", url=url)
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


@pytest.fixture
def gcs(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A local Cloud Storage (gcp-storage-emulator, in memory) that gcsfs reaches through
    STORAGE_EMULATOR_HOST, as the Google clients do; yields the bucket's name."""
    import socket

    import gcsfs
    from gcp_storage_emulator.server import create_server

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="appraiser-exports")
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    gcsfs.GCSFileSystem.clear_instance_cache()
    try:
        yield "appraiser-exports"
    finally:
        gcsfs.GCSFileSystem.clear_instance_cache()
        server.stop()


def test_the_export_lands_in_cloud_storage(gcs: str, tmp_path: Path, monkeypatch) -> None:
    """`appraiser export` to gs://, against a local Cloud Storage: the files read back whole."""
    import gcsfs

    use = tmp_path / "home"
    monkeypatch.setenv("APPRAISER_HOME", str(use))
    monkeypatch.setenv("APPRAISER_EXPORT_TO", f"gs://{gcs}/warehouse")  # as the export job sets it
    from appraiser.config import settings

    settings.cache_clear()
    store.upgrade()
    served = [_serve(None, 1.0 + i / 10, days_ago=1) for i in range(4)]
    said = CliRunner().invoke(app, ["export"])  # yesterday, to APPRAISER_EXPORT_TO
    settings.cache_clear()
    assert said.exit_code == 0, said.output
    day = (clock.now() - timedelta(days=1)).date().isoformat()
    fs = gcsfs.GCSFileSystem()
    written = sorted(fs.find(f"{gcs}/warehouse"))
    assert written == [
        f"{gcs}/warehouse/appraisals/day={day}/appraisals.parquet",
        f"{gcs}/warehouse/feedback/day={day}/feedback.parquet",
    ]
    with fs.open(written[0], "rb") as f:
        assert [row["id"] for row in pq.read_table(f).to_pylist()] == served


def test_a_day_loads_into_bigquery_replacing_its_partition(gcs: str, monkeypatch) -> None:
    """With a dataset named, each exported file is loaded into `<kind>$YYYYMMDD` with
    WRITE_TRUNCATE: exporting a day twice leaves it once. BigQuery itself is a fake here: its
    client is given the calls it would send."""
    from google.cloud import bigquery

    loads: list[tuple[str, str, bigquery.LoadJobConfig]] = []

    class Done:
        def result(self) -> None:
            return None

    class FakeClient:
        def __init__(self, project: str) -> None:
            assert project == "appraiser-prod"

        def load_table_from_uri(
            self, uri: str, table: str, job_config: bigquery.LoadJobConfig
        ) -> Done:
            loads.append((uri, table, job_config))
            return Done()

    monkeypatch.setattr(bigquery, "Client", FakeClient)
    day = clock.now().date()
    files = [
        f"gs://{gcs}/w/appraisals/day={day}/appraisals.parquet",
        f"gs://{gcs}/w/feedback/day={day}/feedback.parquet",
    ]
    written = archive.load_into_bigquery(files, day, "appraiser-prod.appraiser")
    stamp = f"{day:%Y%m%d}"
    assert written == [
        f"appraiser-prod.appraiser.appraisals${stamp}",
        f"appraiser-prod.appraiser.feedback${stamp}",
    ]
    assert [uri for uri, _, _ in loads] == files
    for _, _, config in loads:  # the day's partition, replaced: a re-export leaves it once
        assert config.source_format == bigquery.SourceFormat.PARQUET
        assert config.write_disposition == bigquery.WriteDisposition.WRITE_TRUNCATE
        assert config.time_partitioning.type_ == bigquery.TimePartitioningType.DAY
        assert config.schema_update_options == [bigquery.SchemaUpdateOption.ALLOW_FIELD_ADDITION]
    assert archive.load_into_bigquery(files, day, "appraiser-prod.appraiser") == written
    with pytest.raises(ValueError, match="gs://"):  # BigQuery cannot load from a local folder
        archive.export_day(day, "memory://w3", bigquery="appraiser-prod.appraiser")
