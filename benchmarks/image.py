"""The image's size and start-up: the Dockerfile built with podman (tests/image.py), then the
image's own `appraiser` trains a champion as its user and is started N times, timed to /health.

    python benchmarks/image.py [--runs 5] [--data CSV] [--no-build]

Goals (issue 21): /opt/venv at most 900 MiB; /health within 10 s of start. Prints the image's
stored size, the virtualenv's, and start -> /health for each run (the champion is loaded before
/health answers: the server loads it at start-up).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' image helpers

from _bench import resolve_data

from tests import image
from tests.conftest import free_port

KEY = "benchmark-admin-key-0123456789"


def time_to_health(mounted: image.Mounted, deadline: float = 120) -> float:
    port = free_port()
    started = time.perf_counter()
    server = mounted.popen(
        ["appraiser", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={"APPRAISER_API_KEY": KEY},
    )
    try:
        while time.perf_counter() - started < deadline:
            if server.poll() is not None:
                raise RuntimeError(server.stdout.read() if server.stdout else "server exited")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    return time.perf_counter() - started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        raise RuntimeError(f"no /health within {deadline} s")
    finally:
        image.stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--data", type=Path, help="default: Francesco's collection")
    parser.add_argument("--no-build", action="store_true", help="use the image already built")
    args = parser.parse_args()
    missing = image.missing_tools()
    if missing:
        sys.exit(f"needs {', '.join(missing)} (apt-get install podman debootstrap)")
    data = resolve_data(args.data, required=True)
    assert data is not None
    if not args.no_build:
        began = time.perf_counter()
        image.build()
        print(f"built {image.TAG} in {time.perf_counter() - began:.0f} s")
    with image.mounted() as mounted:
        inside = mounted.root / "tmp" / "stones.csv"
        shutil.copy(data, inside)
        uid, gid = (int(part) for part in mounted.ids().split(":"))
        os.chown(inside, uid, gid)
        trained = mounted.run(["appraiser", "train", "--data", "/tmp/stones.csv"])
        if trained.returncode != 0:
            sys.exit(trained.stdout[-3000:] + trained.stderr[-3000:])
        times = [time_to_health(mounted) for _ in range(args.runs)]
        print(f"image (stored): {mounted.config.size / 2**20:,.0f} MiB")
        print(f"/opt/venv: {mounted.venv_bytes() / 2**20:,.0f} MiB (goal <= 900)")
        runs = ", ".join(f"{t:.1f}" for t in times)
        median = statistics.median(times)
        print(f"start -> /health, champion trained on {data.name}: median {median:.1f} s")
        print(f"  over {len(times)} starts ({runs} s) (goal <= 10 s)")


if __name__ == "__main__":
    main()
