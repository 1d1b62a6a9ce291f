"""The `appraiser` command as a user runs it: exit codes and messages, then real outputs."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from appraiser import schema
from appraiser.cli import app
from tests.conftest import use_home

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def empty_home(tmp_path):
    use_home(tmp_path / "home")
    yield tmp_path


def test_train_refuses_a_missing_file(empty_home):
    result = invoke("train", "--data", str(empty_home / "absent.csv"))
    assert result.exit_code != 0
    assert "no such file" in " ".join(result.output.split())  # rich wraps long paths


def test_train_refuses_a_file_without_price(empty_home):
    path = empty_home / "no_price.csv"
    pd.DataFrame([schema.example_stone()]).to_csv(path, index=False)
    result = invoke("train", "--data", str(path))
    assert result.exit_code != 0
    assert "missing required column(s) price" in result.output


def test_train_refuses_a_non_csv(empty_home):
    path = empty_home / "stones.xlsx"
    path.write_bytes(b"PK\x03\x04 not really a spreadsheet")
    result = invoke("train", "--data", str(path))
    assert result.exit_code != 0
    assert "unsupported file type" in result.output


def test_commands_without_a_champion_say_what_to_do(empty_home, stone):
    result = invoke("explain", *[f"--{k}={v}" for k, v in stone.items()])
    assert result.exit_code == 1
    assert "appraiser train" in result.output
    assert "No model yet" in invoke("models").output


def test_explain_refuses_bad_values_naming_the_field(empty_home, stone):
    result = invoke("explain", *[f"--{k}={v}" for k, v in {**stone, "clarity": "VVS3"}.items()])
    assert result.exit_code == 2
    assert "clarity must be one of: I1, SI2" in result.output


def test_explain_prices_and_explains(trained, stone):
    use_home(trained)
    result = invoke("explain", *[f"--{k}={v}" for k, v in stone.items()], "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["price_low"] < payload["price"] < payload["price_high"]
    total = payload["baseline"] + sum(payload["contributions"].values())
    assert total == pytest.approx(payload["price"], rel=1e-6)
    assert len(payload["comparables"]) == 5
    assert all(c["clarity"] == stone["clarity"] for c in payload["comparables"])


def test_models_lists_the_champion(trained):
    use_home(trained)
    result = invoke("models")
    assert result.exit_code == 0
    assert "*" in result.output and "MAPE" in result.output


def test_predict_scores_a_file_and_flags_bad_rows(trained, public, tmp_path):
    use_home(trained)
    stones = public.sample(250, random_state=5)[list(schema.FEATURES)].astype(object)
    stones.iloc[7, stones.columns.get_loc("cut")] = "Superb"
    stones.iloc[9, stones.columns.get_loc("x")] = "-3"
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    stones.to_csv(source, index=False)
    result = invoke("predict", str(source), "--output", str(target))
    assert result.exit_code == 0, result.output
    out = pd.read_csv(target, keep_default_na=False)
    assert len(out) == 250
    priced_as = ["price", "price_low", "price_high", "market_level", "as_of"]
    assert list(out.columns) == [*schema.FEATURES, *priced_as, "error"]
    assert "cut must be one of" in out.loc[7, "error"]
    assert "x must be > 0" in out.loc[9, "error"]
    priced = out[out["error"] == ""]
    assert len(priced) == 248
    assert (pd.to_numeric(priced["price_low"]) < pd.to_numeric(priced["price"])).all()


def test_predict_refuses_a_file_without_columns(trained, tmp_path):
    use_home(trained)
    source = tmp_path / "in.csv"
    source.write_text("a;b\n1;2\n")
    result = invoke("predict", str(source), "--output", str(tmp_path / "out.csv"))
    assert result.exit_code == 1
    assert "missing required column" in result.output
    assert not (tmp_path / "out.csv").exists()


def test_evaluate_reports_metrics_and_slices(trained, small_csv):
    use_home(trained)
    result = invoke("evaluate", "--data", str(small_csv))
    assert result.exit_code == 0, result.output
    assert "MAPE" in result.output and "carat_band" in result.output
    assert "3 rejected" in result.output


def test_ingest_reports_and_is_idempotent(empty_home, small_csv, tmp_path):
    first = invoke("ingest", str(small_csv), "--source", "new expert")
    assert first.exit_code == 0, first.output
    assert "1,500 accepted, 3 rejected" in " ".join(first.output.split())
    again = invoke("ingest", str(small_csv))
    assert "already ingested" in again.output
    export = tmp_path / "rejected.csv"
    assert invoke("rejected", "--output", str(export)).exit_code == 0
    rows = pd.read_csv(export)
    assert len(rows) == 3 and rows["reasons"].str.len().gt(0).all()


def test_ingest_refuses_an_unusable_file_and_exits_non_zero(empty_home):
    bad = empty_home / "semicolons.csv"
    bad.write_text("carat;cut\n1;Ideal\n")
    result = invoke("ingest", str(bad))
    assert result.exit_code == 1
    said = " ".join(result.output.split())
    assert "missing required column" in said and "nothing stored" in said


def test_ingest_reads_fsspec_urls_and_sql_queries(empty_home, public):
    import fsspec
    import sqlalchemy

    stones = public.sample(200, random_state=8)
    with fsspec.open("memory://inbox/batch.csv", "w") as remote:
        stones.head(100).to_csv(remote, index=False)
    by_url = invoke("ingest", "memory://inbox/batch.csv", "--source", "bucket")
    assert by_url.exit_code == 0, by_url.output
    assert "100 accepted" in " ".join(by_url.output.split())

    database = f"sqlite:///{empty_home / 'warehouse.db'}"
    with sqlalchemy.create_engine(database).begin() as conn:
        stones.tail(100).to_sql("appraisals", conn, index=False)
    query = "SELECT * FROM appraisals WHERE price > 0"
    by_sql = invoke("ingest", "--sql", query, "--database", database)
    assert by_sql.exit_code == 0, by_sql.output
    assert "100 accepted" in " ".join(by_sql.output.split())
    assert "already ingested" in invoke("ingest", "--sql", query, "--database", database).output

    missing = invoke("ingest", "memory://inbox/absent.csv")
    assert missing.exit_code == 1 and "cannot be read" in missing.output
    assert invoke("ingest").exit_code == 2
