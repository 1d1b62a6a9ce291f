"""The registered model as an MLflow pyfunc in Spark: `mlflow.pyfunc.spark_udf` on a local session
prices a CSV exactly as `appraiser predict` does, bad rows included.

Slow-ish (marked `slow`): a JVM, a Spark session and two Python workers start; about 35 s on
two busy cores, the session champion's training included.
Without Java (or pyspark) the test is skipped locally and fails under CI (CI set), where
`.ci/run` installs a Java runtime.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from appraiser import champion, schema
from appraiser.cli import app
from appraiser.config import REGISTERED_MODEL
from tests.conftest import use_home
from tests.system import unavailable

pytestmark = [
    pytest.mark.slow,
    # pyspark 4.3's Arrow conversion passes `copy=False` to astype, which pandas 3 deprecates
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

PRICES = ("price", "price_low", "price_high")
RESULT_TYPE = "price double, price_low double, price_high double, error string"
TEXT_COLUMNS = ("cut", "color", "clarity")


@pytest.fixture(scope="session")
def spark_available() -> None:
    """Skip (fail under CI) without Java or pyspark, before the champion is trained."""
    java_home = os.environ.get("JAVA_HOME")
    if shutil.which("java") is None and not (java_home and Path(java_home, "bin", "java").exists()):
        unavailable(
            "no Java runtime (java not on PATH, JAVA_HOME unset)",
            "install one (apt-get install openjdk-17-jre-headless)",
        )
    try:
        import pyspark  # noqa: F401
    except ImportError:
        unavailable("pyspark is not installed", "make install")


@pytest.fixture(scope="module")
def spark(spark_available: None) -> Iterator[Any]:
    """A small local Spark session whose Python workers run this interpreter (this venv)."""
    from pyspark.sql import SparkSession

    with pytest.MonkeyPatch.context() as mp:
        # the workers must import this venv's appraiser, mlflow and pandas
        mp.setenv("PYSPARK_PYTHON", sys.executable)
        mp.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
        session = (
            SparkSession.builder.master("local[2]")
            .appName("appraiser-test-spark")
            .config("spark.ui.enabled", "false")
            .config("spark.driver.memory", "1g")
            .config("spark.sql.shuffle.partitions", "2")
            # two input partitions and several Arrow batches each: rows cross batch boundaries
            .config("spark.sql.files.maxPartitionBytes", str(48 * 1024))
            .config("spark.sql.execution.arrow.maxRecordsPerBatch", "300")
            .getOrCreate()
        )
        session.sparkContext.setLogLevel("ERROR")
        try:
            yield session
        finally:
            _stop(session)


def _stop(session: Any) -> None:
    """Stop the session and its JVM (left alone, it would live as long as pytest)."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    session.stop()
    if gateway is None:
        return
    gateway.shutdown()
    proc = getattr(gateway, "proc", None)
    if proc is not None:
        if proc.stdin is not None:
            proc.stdin.close()  # the JVM exits when its stdin closes
        try:
            proc.wait(timeout=30)
        except Exception:
            proc.kill()
    SparkContext._gateway = None
    SparkContext._jvm = None


def test_spark_udf_prices_a_file_as_appraiser_predict_does(
    spark_available, trained, public, spark, tmp_path
):
    from pyspark.sql import types as T

    use_home(trained)
    stones = public.sample(2000, random_state=11)[list(schema.FEATURES)].astype(object)
    bad_cut, bad_carat = 17, 1234
    stones.iloc[bad_cut, stones.columns.get_loc("cut")] = "Excellent"
    stones.iloc[bad_carat, stones.columns.get_loc("carat")] = -1
    source, target = tmp_path / "stones.csv", tmp_path / "priced.csv"
    stones.to_csv(source, index=False)

    result = CliRunner().invoke(
        app, ["predict", str(source), "--output", str(target)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    cli = pd.read_csv(target, keep_default_na=False, na_values={c: [""] for c in PRICES})

    # In local mode spark_udf downloads the model on the driver (the models:/ URI is resolved in
    # the registry appraiser points MLflow at) and the workers load that local copy.
    version = champion.current()  # the version `appraiser predict` used (v1 here)
    assert version is not None
    import mlflow.pyfunc

    pricer = mlflow.pyfunc.spark_udf(
        spark,
        model_uri=f"models:/{REGISTERED_MODEL}/{version}",
        result_type=RESULT_TYPE,
        env_manager="local",
        extra_env={"APPRAISER_HOME": str(trained)},
    )
    # an explicit schema types the columns as a CSV reader does (numbers as doubles, grades as
    # text); the bad rows reach the model, which validates them
    columns = T.StructType(
        [
            T.StructField(c, T.StringType() if c in TEXT_COLUMNS else T.DoubleType())
            for c in schema.FEATURES
        ]
    )
    frame = spark.read.csv(str(source), header=True, schema=columns)
    assert frame.rdd.getNumPartitions() >= 2
    scored = frame.withColumn("out", pricer(*schema.FEATURES)).select("*", "out.*").drop("out")
    via_spark = scored.toPandas()

    assert len(via_spark) == len(cli) == 2000
    # same rows in the same order
    assert np.array_equal(via_spark["carat"].to_numpy(float), cli["carat"].to_numpy(float))
    assert via_spark["cut"].astype(str).tolist() == cli["cut"].astype(str).tolist()
    # same prices, to the cent, and NaN on the same (rejected) rows
    for column in PRICES:
        ours, theirs = via_spark[column].to_numpy(float), cli[column].to_numpy(float)
        assert np.array_equal(np.isnan(ours), np.isnan(theirs)), column
        good = ~np.isnan(ours)
        assert np.array_equal(np.round(ours[good] * 100), np.round(theirs[good] * 100)), column
    # same error messages, on the spoiled rows only
    errors = via_spark["error"].fillna("").astype(str)
    assert errors.tolist() == cli["error"].astype(str).tolist()
    assert errors.ne("").sum() == 2
    assert "cut must be one of" in errors.iloc[bad_cut]
    assert "carat must be" in errors.iloc[bad_carat]
    assert via_spark["price"].notna().sum() == 1998
