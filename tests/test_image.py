"""The image itself: the Dockerfile built with podman, then the image's own `appraiser`, as the
image's user, trains on a small file, serves, prices a stone and answers /health (tests/image.py
says how, on machines without a Docker engine). Without podman or debootstrap it is skipped
locally and fails under CI, whose `.ci/run` installs them. Slow: the first build downloads every
pinned wheel (about 4 minutes here); start-up time is measured by benchmarks/image.py."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from appraiser import schema
from tests import image
from tests.conftest import free_port
from tests.system import unavailable

pytestmark = pytest.mark.slow

VENV_LIMIT = 900 * 2**20  # bytes: Cloud Run pulls the image on every new instance
KEY = "image-test-admin-key-0123456789"  # long enough for any key rule


@pytest.fixture(scope="module")
def can_build() -> None:
    missing = image.missing_tools()
    if missing:
        unavailable(
            f"the image test needs {', '.join(missing)}", "apt-get install podman debootstrap"
        )


@pytest.fixture(scope="module")
def built(can_build: None) -> str:
    image.build()
    return image.TAG


@pytest.fixture(scope="module")
def container(built: str) -> Iterator[image.Mounted]:
    with image.mounted(built) as mounted:
        yield mounted


def get(url: str, body: dict | None = None, timeout: float = 10) -> dict:
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())


def test_the_runtime_venv_is_lean(container: image.Mounted) -> None:
    size = container.venv_bytes()
    assert size <= VENV_LIMIT, f"/opt/venv is {size / 2**20:.0f} MiB"
    # what only the dev venv needs stays out: the GPU build of XGBoost, the MLflow server, the
    # public table, the installers
    left_out = ("nvidia", "flask", "plotnine", "statsmodels", "pip", "uv", "pytest")
    probe = f"import importlib.util as u; print([m for m in {left_out!r} if u.find_spec(m)])"
    done = container.run(["python", "-c", probe])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_image_trains_serves_and_prices(
    container: image.Mounted, small_csv: Path, tmp_path: Path
) -> None:
    user = container.ids()
    uid, gid = (int(part) for part in user.split(":"))
    data = container.root / "tmp" / "stones.csv"
    shutil.copy(small_csv, data)
    os.chown(data, uid, gid)

    # no data named: the public table is not in the image, and the message says what to do
    bare = container.run(["appraiser", "train", "--trials", "1"])
    assert bare.returncode != 0
    assert "--data FILE" in bare.stdout + bare.stderr

    trained = container.run(
        ["appraiser", "train", "--data", "/tmp/stones.csv", "--trials", "2", "--timeout", "20"]
    )
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    assert "champion" in trained.stdout.lower()

    port = free_port()
    server = container.popen(
        ["appraiser", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={"APPRAISER_API_KEY": KEY},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120  # a ceiling for slow machines; benchmarks time it
        health: dict | None = None
        while health is None and time.monotonic() < deadline:
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            try:
                health = get(f"{url}/health", timeout=2)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        assert health is not None, "no /health answer within 120 s"
        appraisal = get(f"{url}/v1/appraisals", schema.example_stone())
        assert appraisal["price"] > 0
        assert appraisal["price_low"] <= appraisal["price"] <= appraisal["price_high"]
    finally:
        image.stop(server)


def test_the_mlflow_target_builds_and_runs_the_server(can_build: None) -> None:
    """The Dockerfile's `mlflow` target (compose's and the cloud's MLflow server): the app's
    virtualenv plus the server, started here as the image's user far enough to answer --help."""
    tag = "localhost/appraiser-mlflow:test"
    image.build(tag, target="mlflow")
    with image.mounted(tag) as mounted:
        done = mounted.run(["mlflow", "server", "--help"])
        assert done.returncode == 0, done.stderr[-2000:]
        assert "--backend-store-uri" in done.stdout
        assert mounted.run(["appraiser", "--help"]).returncode == 0
