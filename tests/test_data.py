import pandas as pd
import pytest

from appraiser import data, schema
from tests.conftest import FRANCESCO


def good_rows(n: int = 3) -> pd.DataFrame:
    stone = {**schema.example_stone(), "price": 4733}
    return pd.DataFrame([stone] * n).astype(str)


def test_public_table_is_packaged():
    raw = data.read_table(None)
    assert len(raw) == 53_940
    assert list(raw.columns) == [
        "carat",
        "cut",
        "color",
        "clarity",
        "depth",
        "table",
        "price",
        "x",
        "y",
        "z",
    ]


def test_every_defect_kind_gets_a_reason():
    rows = good_rows(1)
    bad = pd.concat([rows] * 8, ignore_index=True)
    bad.loc[1, "price"] = "-1"
    bad.loc[2, "cut"] = "Excellent"
    bad.loc[3, "carat"] = "heavy"
    bad.loc[4, "x"] = None
    bad.loc[5, "z"] = "3.0"  # depth no longer matches 2z/(x+y)
    bad.loc[6, "y"] = "58.9"  # out of physical bounds
    # row 7 repeats row 0 exactly
    result = data.validate(bad)
    reasons = dict(zip(result.rejected["line"], result.rejected["reasons"], strict=True))
    assert len(result.clean) == 1
    assert "price must be > 0" in reasons[3]
    assert "cut must be one of" in reasons[4]
    assert "carat: not a number ('heavy')" in reasons[5]
    assert "x: missing value" in reasons[6]
    assert "depth must agree" in reasons[7]
    assert "y must be > 0 and <= 20" in reasons[8]
    assert reasons[9] == data.DUPLICATE
    assert result.total == 8 and len(result.rejected) == 7
    assert result.report["rows"].sum() >= 7


def test_rejected_rows_keep_raw_values_and_lines():
    rows = good_rows(2)
    rows.loc[1, "carat"] = "heavy"
    result = data.validate(rows, dedupe=False)
    assert result.rejected.loc[0, "carat"] == "heavy"
    assert result.rejected.loc[0, "line"] == 3


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "no_price.csv"
    good_rows().drop(columns=["price"]).to_csv(path, index=False)
    with pytest.raises(data.DataError, match="missing required column\\(s\\) price"):
        data.load(path)


def test_unusable_files_are_refused(tmp_path):
    with pytest.raises(data.DataError, match="no such file"):
        data.read_table(tmp_path / "absent.csv")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(data.DataError, match="unsupported file type"):
        data.read_table(text)
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(data.DataError, match=r"not a readable CSV|missing required"):
        data.load(garbage)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(data.DataError, match="empty"):
        data.read_table(empty)
    semicolons = tmp_path / "semicolons.csv"
    good_rows().to_csv(semicolons, index=False, sep=";")
    with pytest.raises(data.DataError, match="comma as separator"):
        data.load(semicolons)


def test_parquet_is_read(tmp_path):
    path = tmp_path / "stones.parquet"
    good_rows(1).to_parquet(path)
    assert len(data.load(path).clean) == 1


def test_fingerprint_tracks_content():
    a = data.validate(good_rows(1)).clean
    b = a.assign(price=a["price"] + 1)
    assert data.fingerprint(a) == data.fingerprint(a.copy())
    assert data.fingerprint(a) != data.fingerprint(b)


@pytest.mark.skipif(
    not FRANCESCO.exists(), reason="Francesco's collection is not beside the project"
)
def test_francescos_planted_defects_are_all_found():
    result = data.load(FRANCESCO)
    reasons = result.rejected["reasons"]
    assert result.total == 5000
    assert reasons.str.contains("price must be > 0").sum() == 10
    assert reasons.str.contains("duplicate").sum() == 1
    assert reasons.str.contains("x must be > 0").sum() == 1
    assert reasons.str.contains("depth must agree").sum() == 5
    assert len(result.clean) == 5000 - len(result.rejected)


@pytest.mark.parametrize("fault", [None, "price", "cut", "carat", "x", "z", "y", "duplicate"])
def test_the_column_wise_check_agrees_with_pandera_on_each_fault(fault, monkeypatch):
    """A table is taken without pandera only when pandera would find nothing in it; any fault
    still gets pandera's exact reasons."""
    rows = data.read_table(None).sample(300, random_state=0).reset_index(drop=True)
    faults = {
        "price": "-1",
        "cut": "Excellent",
        "carat": "11",
        "x": None,
        "z": "3.0",
        "y": "58.9",
    }
    if fault == "duplicate":
        rows.loc[299] = rows.loc[5]
    elif fault is not None:
        rows.loc[7, fault] = faults[fault]
    fast = data.validate(rows)
    calls: list[bool] = []

    def never_clean(*args: object) -> bool:
        calls.append(True)
        return False

    monkeypatch.setattr(data, "_breaks_no_rule", never_clean)
    slow = data.validate(rows)
    assert calls, "the pandera path ran"
    pd.testing.assert_frame_equal(fast.clean, slow.clean)
    pd.testing.assert_frame_equal(fast.rejected, slow.rejected)
    assert fast.reasons == slow.reasons and (len(fast.rejected) == 0) == (fault is None)


def test_a_clean_file_is_scored_without_importing_pandera(tmp_path):
    import subprocess
    import sys

    stones = data.read_table(None).head(20).drop(columns="price")
    path = tmp_path / "clean.csv"
    stones.to_csv(path, index=False)
    code = (
        "import sys; from appraiser import data; "
        f"r = data.load({str(path)!r}, labelled=False); "
        "assert len(r.clean) == 20, r.rejected; "
        "print('pandera' in sys.modules)"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"
