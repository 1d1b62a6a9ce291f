"""Ingestion: counts and reasons kept, idempotent, store duplicates refused, all or nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import func, select

from appraiser import data, ingest, schema, store
from tests import pg
from tests.conftest import use_home

GOOD = [
    (0.23, "Ideal", "E", "SI2", 61.5, 55, 3.95, 3.98, 2.43, 326),
    (0.21, "Premium", "E", "SI1", 59.8, 61, 3.89, 3.84, 2.31, 326),
    (0.29, "Premium", "I", "VS2", 62.4, 58, 4.20, 4.23, 2.63, 334),
    (0.31, "Good", "J", "SI2", 63.3, 58, 4.34, 4.35, 2.75, 335),
]
HEADER = ",".join(schema.COLUMNS)


def _csv(path: Path, rows: list[tuple[Any, ...]]) -> Path:
    path.write_text(HEADER + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


def _counts(url: str) -> dict[str, int]:
    with store.session(url) as s:
        return {
            model.__tablename__: s.scalar(select(func.count()).select_from(model)) or 0
            for model in (store.Batch, store.StoredDiamond, store.RejectedRow)
        }


@pytest.fixture(params=pg.BACKENDS)
def url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The default store, migrated and empty, on each backend (tests/pg.py)."""
    for url in pg.backend_url(request.param, tmp_path, monkeypatch):
        store.upgrade(url)
        yield url


def test_good_and_bad_rows(url: str, tmp_path: Path) -> None:
    bad = [
        (0.23, "Excellent", "E", "SI2", 61.5, 55, 3.95, 3.98, 2.43, 326),  # line 6: unknown cut
        (0.5, "Ideal", "E", "SI2", 61.5, 55, 5.1, 5.1, 3.14, -1),  # line 7: negative price
        GOOD[0],  # line 8: repeats line 2
        ("", "Ideal", "E", 'SI2 "x"', 61.5, 55, 3.95, 3.98, 2.43, 326),  # line 9: no carat
    ]
    report = ingest.ingest_file(_csv(tmp_path / "mixed.csv", GOOD + bad), source="expert")
    assert (report.rows_read, report.rows_accepted, report.rows_rejected) == (8, 4, 4)
    assert report.reasons[schema.grade_rule("cut")] == 1
    assert report.reasons[data.DUPLICATE] == 1
    assert not report.already_ingested and report.batch_id is not None

    with store.session(url) as s:
        batch = s.get(store.Batch, report.batch_id)
        assert batch is not None
        assert (batch.source, batch.rows_read, batch.rows_rejected) == ("expert", 8, 4)
        assert batch.file_name.endswith("mixed.csv")
    stones = ingest.accepted_stones()
    assert stones["line"].tolist() == [2, 3, 4, 5]
    assert stones["carat"].tolist() == [r[0] for r in GOOD]
    assert set(stones["batch_id"]) == {report.batch_id}

    rejected = ingest.rejected(report.batch_id)
    assert rejected["line"].tolist() == [6, 7, 8, 9]
    assert rejected.loc[0, "cut"] == "Excellent"  # raw values kept
    assert "cut must be one of" in rejected.loc[0, "reasons"]
    assert "price must be > 0" in rejected.loc[1, "reasons"]
    assert rejected.loc[2, "reasons"] == data.DUPLICATE
    assert rejected.loc[3, "clarity"] == 'SI2 "x"' and pd.isna(rejected.loc[3, "carat"])
    assert "carat: missing value" in rejected.loc[3, "reasons"]
    assert len(ingest.rejected(report.batch_id + 1)) == 0


def test_same_file_twice_adds_nothing(url: str, tmp_path: Path) -> None:
    path = _csv(tmp_path / "a.csv", GOOD)
    first = ingest.ingest_file(path)
    before = _counts(url)
    again = ingest.ingest_file(path)
    assert again.already_ingested and again.batch_id == first.batch_id
    assert again.rows_accepted == 0 and again.file_hash == first.file_hash
    assert _counts(url) == before == {"batches": 1, "diamonds": 4, "rejected_rows": 0}


def test_stone_already_in_store_is_rejected(url: str, tmp_path: Path) -> None:
    first = ingest.ingest_file(_csv(tmp_path / "a.csv", GOOD[:2]))
    new = (0.7, "Ideal", "G", "VS1", 61.9, 56, 5.70, 5.73, 3.54, 2757)
    second = ingest.ingest_file(_csv(tmp_path / "b.csv", [new, GOOD[1]]))
    reason = ingest.DUPLICATE_OF_STORE.format(batch=first.batch_id)
    assert (second.rows_accepted, second.rows_rejected, second.duplicates_of_store) == (1, 1, 1)
    assert second.reasons == {reason: 1}
    rejected = ingest.rejected(second.batch_id)
    assert rejected[["line", "reasons"]].values.tolist() == [[3, reason]]
    assert len(ingest.accepted_stones()) == 3


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.csv", b""),
        ("header_only.csv", (HEADER + "\n").encode()),
        (
            "no_price.csv",
            b"carat,cut,color,clarity,depth,table,x,y,z\n0.23,Ideal,E,SI2,61.5,55,3,3,2\n",
        ),
        (
            "semicolons.csv",
            (HEADER.replace(",", ";") + "\n0.23;Ideal;E;SI2;61.5;55;3;3;2;326\n").encode(),
        ),
        ("garbage.csv", bytes(range(256)) * 8),
    ],
)
def test_unusable_file_stores_nothing(url: str, tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(data.DataError):
        ingest.ingest_file(path)
    assert _counts(url) == {"batches": 0, "diamonds": 0, "rejected_rows": 0}


def test_failure_mid_transaction_stores_nothing(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(session: Any, rows: list[dict[str, Any]]) -> None:
        assert _counts(url)["diamonds"] == 0  # other connections see nothing yet
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ingest, "_insert_rejected", broken)
    path = _csv(tmp_path / "mixed.csv", [*GOOD, GOOD[0]])
    with pytest.raises(RuntimeError, match="disk on fire"):
        ingest.ingest_file(path)
    assert _counts(url) == {"batches": 0, "diamonds": 0, "rejected_rows": 0}

    monkeypatch.undo()  # the file can be ingested once the fault is gone
    use_home(tmp_path / "home")
    report = ingest.ingest_file(path)
    assert not report.already_ingested and report.rows_accepted == 4


def test_parquet_and_public_sample(url: str, tmp_path: Path) -> None:
    sample = data.read_table(None).head(2000)
    path = tmp_path / "public.parquet"
    sample.to_parquet(path)
    report = ingest.ingest_file(path)
    assert report.rows_read == 2000
    assert report.rows_accepted + report.rows_rejected == 2000
    stones = ingest.accepted_stones()
    assert len(stones) == report.rows_accepted
    expected = data.validate(sample).clean
    pd.testing.assert_frame_equal(
        stones[list(schema.COLUMNS)].reset_index(drop=True),
        expected.astype(stones[list(schema.COLUMNS)].dtypes.to_dict()),
    )
