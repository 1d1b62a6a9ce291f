"""Serving benchmark: `appraiser serve` on loopback, beside the bare model and `mlflow serve`.

    python benchmarks/serving.py [--home DIR] [--seconds S] [--json OUT]

Goals (issue 4): >= 1,500 appraisals/s at concurrency 32; p50 <= 1 ms at concurrency 1;
>= 300 explained appraisals/s; >= 60,000 rows/s in batches of 1,000.

1. The champion of --home (default: .appraiser, the home `make run` uses); without one, a model is
   trained there on the default data exactly as `make run` does (`appraiser train`).
2. `appraiser serve` in a child process: 1 worker, access log on (written to a file).
3. A load generator in this process: asyncio + uvloop over raw keep-alive HTTP/1.1 connections
   (about 20 microseconds of client CPU per request, so the client is not what is measured),
   each connection sending its next request when the previous answer arrived. Stones are real
   public stones, a different one per request. Every answer must be 200.
4. The same model in-process (Appraiser.appraise), and `mlflow models serve` of the registered
   version (its /invocations endpoint) under the same load generator.
The machine's cores are shared by the server and the client (2 cores here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _bench import REPO, Goal, environment, format_table, goals_table, use_home, write_json

from appraiser import data, registry, schema
from appraiser.config import REGISTERED_MODEL


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=REPO / ".appraiser", help="APPRAISER_HOME")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each load run")
    parser.add_argument("--skip-mlflow", action="store_true", help="skip `mlflow models serve`")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return parser.parse_args(argv)


# --- a small, fast HTTP/1.1 load generator --------------------------------------------------------


@dataclass
class Load:
    name: str
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float]
    rows_per_request: int = 1

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def rows_per_second(self) -> float:
        return self.per_second * self.rows_per_request

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000


def _request(path: str, body: bytes, port: int) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    for line in lines[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:].strip())
    if length is None:
        raise RuntimeError(f"response without Content-Length: {head[:200]!r}")
    return status, await reader.readexactly(length)


async def _load(
    port: int,
    payloads: list[bytes],
    concurrency: int,
    seconds: float,
    check: Callable[[bytes], None],
) -> tuple[int, float, list[float]]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    counter = 0

    async def connection(offset: int) -> None:
        nonlocal counter
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = offset
        while time.perf_counter() < deadline:
            payload = payloads[i % len(payloads)]
            i += concurrency
            start = time.perf_counter()
            writer.write(payload)
            status, body = await _read_response(reader)
            latencies.append(time.perf_counter() - start)
            if status != 200:
                raise RuntimeError(f"answer {status}: {body[:300]!r}")
            if counter % 997 == 0:
                check(body)
            counter += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection(c) for c in range(concurrency)))
    return len(latencies), time.perf_counter() - started, latencies


def load(
    name: str,
    port: int,
    path: str,
    bodies: list[bytes],
    concurrency: int,
    seconds: float,
    check: Callable[[bytes], None],
    rows_per_request: int = 1,
) -> Load:
    import uvloop

    payloads = [_request(path, b, port) for b in bodies]
    # a short warm-up (connections, caches), then the measured run
    uvloop.run(_load(port, payloads, concurrency, min(1.0, seconds / 4), check))
    n, took, latencies = uvloop.run(_load(port, payloads, concurrency, seconds, check))
    result = Load(name, concurrency, n, took, latencies, rows_per_request)
    print(
        f"  {name:<44} c={concurrency:<3} {result.per_second:>9,.0f} req/s  "
        f"p50 {result.percentile(50):6.2f} ms  p99 {result.percentile(99):6.2f} ms"
    )
    return result


# --- servers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(
    command: list[str], port: int, ready_path: str, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    process = subprocess.Popen(
        command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[0]} exited; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {ready_path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                if b" 200 " in s.recv(200):
                    return process
        except OSError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"{command} did not come up; see {log}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


# --- the champion -------------------------------------------------------------------------------


def ensure_champion(home: Path) -> str:
    use_home(home)
    version = registry.champion_version() if (home / "mlflow.db").exists() else None
    if version is None:
        print(f"No champion in {home}: training one on the default data (as `make run` does)")
        subprocess.run(
            [sys.executable, "-m", "appraiser.cli", "train", "--if-no-champion"], check=True
        )
        version = registry.champion_version()
    assert version is not None
    return version


def in_process(stones: list[dict[str, Any]], seconds: float) -> dict[str, float]:
    """The bare model: Appraiser.appraise on one stone at a time, and on 1,000 at once."""
    from appraiser.predict import Appraiser

    appraiser = Appraiser.champion()
    figures = {}
    for label, size, explain in (
        ("single", 1, False),
        ("explained", 1, True),
        ("batch", 1000, False),
    ):
        calls, rows, began = 0, 0, time.perf_counter()
        while time.perf_counter() - began < seconds / 2:
            start = (calls * size) % (len(stones) - size)
            appraiser.appraise(
                stones[start : start + size], explain=explain, comparables=5 if explain else 0
            )
            calls += 1
            rows += size
        took = time.perf_counter() - began
        figures[f"{label}_us_per_call"] = took / calls * 1e6
        figures[f"{label}_rows_per_s"] = rows / took
    print(
        f"  in-process Appraiser.appraise: single {figures['single_us_per_call']:.0f} us, "
        f"explained {figures['explained_us_per_call']:.0f} us, "
        f"batch of 1,000 {figures['batch_rows_per_s']:,.0f} rows/s"
    )
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    home = args.home.expanduser().resolve()
    version = ensure_champion(home)
    from appraiser.predict import Appraiser

    model_name = Appraiser.champion().model.name
    print(f"Champion: v{version} ({model_name}) in {home}")

    public = data.load(None).clean[list(schema.FEATURES)]
    stones = public.sample(20_000, random_state=0).to_dict(orient="records")
    singles = [json.dumps(s).encode() for s in stones]
    batches = [
        json.dumps({"diamonds": stones[i : i + 1000]}).encode() for i in range(0, 10_000, 1000)
    ]

    def has_price(body: bytes) -> None:
        assert json.loads(body)["price"] > 0

    def has_reasons(body: bytes) -> None:
        answer = json.loads(body)
        assert set(answer["contributions"]) == set(schema.FEATURES) and answer["comparables"]

    def has_thousand(body: bytes) -> None:
        assert len(json.loads(body)["appraisals"]) == 1000

    results: dict[str, Any] = {"champion": {"version": version, "model": model_name}}
    print("\nIn-process (no HTTP):")
    results["in_process"] = in_process(stones, args.seconds)

    port = free_port()
    log = home / "serving-benchmark.log"
    print(f"\n`appraiser serve` (1 worker, access log on, to {log}):")
    server = start(
        [sys.executable, "-m", "appraiser.cli", "serve", "--port", str(port), "--workers", "1"],
        port,
        "/health",
        log,
    )
    runs: dict[str, Load] = {}
    try:
        s = args.seconds
        runs["c1"] = load("POST /v1/appraisals", port, "/v1/appraisals", singles, 1, s, has_price)
        runs["c32"] = load("POST /v1/appraisals", port, "/v1/appraisals", singles, 32, s, has_price)
        explained = "/v1/appraisals?explain=true&comparables=5"
        runs["explain"] = load(
            "POST /v1/appraisals?explain=true&comparables=5",
            port,
            explained,
            singles,
            8,
            s,
            has_reasons,
        )
        runs["batch"] = load(
            "POST /v1/appraisals/batch (1,000 stones)",
            port,
            "/v1/appraisals/batch",
            batches,
            2,
            s,
            has_thousand,
            rows_per_request=1000,
        )
    finally:
        stop(server)

    if not args.skip_mlflow:
        mport = free_port()
        print("\n`mlflow models serve` of the same version (env-manager local, 1 worker):")
        mlflow_server = start(
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
                str(mport),
                "--workers",
                "1",
            ],
            mport,
            "/ping",
            home / "mlflow-serve-benchmark.log",
            # the registry the appraiser uses (a local SQLite file unless a server is set)
            env={
                **registry.mlflow_env(),
                # MLflow starts `uvicorn` by name: this environment's, even when not activated
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            },
        )
        records = [json.dumps({"dataframe_records": [s]}).encode() for s in stones]

        def has_prediction(body: bytes) -> None:
            assert json.loads(body)["predictions"][0]["price"] > 0

        try:
            runs["mlflow_c1"] = load(
                "mlflow /invocations",
                mport,
                "/invocations",
                records,
                1,
                args.seconds,
                has_prediction,
            )
            runs["mlflow_c32"] = load(
                "mlflow /invocations",
                mport,
                "/invocations",
                records,
                32,
                args.seconds,
                has_prediction,
            )
        finally:
            stop(mlflow_server)

    rows = [
        [
            r.name,
            r.concurrency,
            f"{r.per_second:,.0f}",
            f"{r.rows_per_second:,.0f}",
            f"{r.percentile(50):.2f}",
            f"{r.percentile(99):.2f}",
        ]
        for r in runs.values()
    ]
    print()
    print(
        format_table(
            ["endpoint", "concurrency", "req/s", "rows/s", "p50 ms", "p99 ms"], rows, "Loopback"
        )
    )
    goals = [
        Goal("appraisals/s at concurrency 32", runs["c32"].per_second, "/s", low=1500, digits=0),
        Goal("p50 latency at concurrency 1", runs["c1"].percentile(50), "ms", high=1.0),
        Goal("explained appraisals/s", runs["explain"].per_second, "/s", low=300, digits=0),
        Goal(
            "rows/s in batches of 1,000", runs["batch"].rows_per_second, "/s", low=60_000, digits=0
        ),
    ]
    print()
    print(goals_table(goals))
    results["loopback"] = {
        k: {
            "name": r.name,
            "concurrency": r.concurrency,
            "requests_per_s": r.per_second,
            "rows_per_s": r.rows_per_second,
            "p50_ms": r.percentile(50),
            "p99_ms": r.percentile(99),
            "requests": r.requests,
        }
        for k, r in runs.items()
    }
    results["goals"] = [g.as_dict() for g in goals]
    results["environment"] = environment()
    write_json(args.json, results)


if __name__ == "__main__":
    main()
