"""The registered model served by MLflow's own server: `mlflow models serve` of the champion
answers /invocations with the prices the appraiser gives, and says which rows are bad."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from appraiser import champion, registry, schema
from appraiser.config import REGISTERED_MODEL
from appraiser.predict import Appraiser
from tests.conftest import free_port

pytestmark = pytest.mark.slow


def test_mlflow_models_serve_prices_like_the_appraiser(
    home_copy: Path, public: pd.DataFrame, tmp_path: Path
) -> None:
    version = champion.current()
    port = free_port()
    log = (tmp_path / "mlflow-serve.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            f"models:/{REGISTERED_MODEL}/{version}",
            "--env-manager",
            "local",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            **registry.mlflow_env(),
            # MLflow starts `uvicorn` by name: this environment's, also when it is not activated
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "mlflow-serve.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not come up"
            time.sleep(0.5)
        stones = public[list(schema.FEATURES)].sample(20, random_state=11).reset_index(drop=True)
        sent = stones.astype(object)
        sent.loc[3, "cut"] = "Excellent"  # a bad row: priced NaN with its reason
        answer = httpx.post(
            f"{url}/invocations",
            json={"dataframe_records": sent.to_dict(orient="records")},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        served = pd.DataFrame(answer.json()["predictions"])
        expected = Appraiser.champion().price(stones)
        good = served.index != 3
        assert (served.loc[good, "price"] - expected.loc[good, "price"]).abs().max() < 0.01
        assert "cut must be one of" in served.loc[3, "error"]
        assert pd.isna(served.loc[3, "price"])
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        log.close()
