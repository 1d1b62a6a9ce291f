"""Serving benchmark: `appraiser serve` on loopback, beside a bare endpoint and `mlflow serve`.

    python benchmarks/serving.py [--home DIR] [--seconds S] [--rounds N] [--skip-mlflow] [--json F]

Goals (issue 12), as ratios against the bare endpoint (benchmarks/bare_endpoint.py: pydantic, one
XGBoost booster of 500 trees, no storage, no log) measured in the same run, so they hold on any
machine: single stones at 32 connections >= 1.2x its requests/s; a lone request's p50 <= 1.1x its
p50; explained stones (8 connections) >= 2x its requests/s; rows/s in 1,000-stone batches >= 1.0x.
The appraiser keeps validation, ids, storage and the access log on.

1. The champion of --home (default: .appraiser, the home `make run` uses); without one, a model is
   trained there on the default data exactly as `make run` does (`appraiser train`).
2. `appraiser serve` in a child process: 1 worker, access log on (written to a file).
3. A load generator in this process: asyncio + uvloop over raw keep-alive HTTP/1.1 connections
   (about 20 microseconds of client CPU per request, so the client is not what is measured),
   each connection sending its next request when the previous answer arrived. Stones are real
   public stones, a different one per request. Every answer must be 200.
4. The bare endpoint, running beside it, under the same four loads: each load in --rounds short
   turns that alternate between the two servers (this machine's speed drifts by tens of percent
   within minutes; in turns, the drift slows both alike), then `mlflow models serve` of the
   registered version (its /invocations endpoint) under the same load generator.
The machine's cores are shared by the server and the client (2 cores here).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

from appraiser import champion, data, features, registry, schema
from appraiser.config import REGISTERED_MODEL


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=REPO / ".appraiser", help="APPRAISER_HOME")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each load run")
    parser.add_argument(
        "--rounds", type=int, default=4, help="turns per load, alternating the two servers"
    )
    parser.add_argument("--skip-mlflow", action="store_true", help="skip `mlflow models serve`")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--loads",
        nargs="+",
        choices=list(LOADS),
        default=list(LOADS),
        help="run only these loads (default: all four)",
    )
    return parser.parse_args(argv)


WARM_UP_LIMIT_SECONDS = 180.0


def wait_until_idle(pid: int, limit: float = WARM_UP_LIMIT_SECONDS) -> float:
    """Wait until process `pid` and its children (a compile runs in one) spend under 5% of a
    core for 2 s (Linux /proc), at most `limit` seconds; returns the seconds waited. A fixed
    pause was too short on a slow day."""
    tick = os.sysconf("SC_CLK_TCK")

    def family(root: int) -> list[int]:
        found, todo = [], [root]
        while todo:
            current = todo.pop()
            found.append(current)
            for task in Path(f"/proc/{current}/task").glob("*/children"):
                with contextlib.suppress(OSError):
                    todo.extend(int(child) for child in task.read_text().split())
        return found

    def cpu_seconds() -> float:
        total = 0.0
        for member in family(pid):
            with contextlib.suppress(OSError, IndexError):
                fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
                # its own time and its reaped children's (a compile that just ended)
                total += sum(int(f) for f in fields[11:15]) / tick
        return total

    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = cpu_seconds()
        time.sleep(2.0)
        if cpu_seconds() - before < 0.1:
            break
    return time.monotonic() - started


# load -> (concurrency, stones per request, answer check); bodies: single stones or batches
LOADS = {
    "c1": (1, 1, "single"),
    "c32": (32, 1, "single"),
    "explain": (8, 1, "explain"),
    "batch": (2, 1000, "batch"),
}

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

    def __add__(self, other: Load) -> Load:
        """Two rounds of the same load as one: their requests, seconds and latencies."""
        return Load(
            self.name,
            self.concurrency,
            self.requests + other.requests,
            self.seconds + other.seconds,
            self.latencies + other.latencies,
            self.rows_per_request,
        )


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
    version = champion.current() if (home / "mlflow.db").exists() else None
    if version is None:
        print(f"No champion in {home}: training one on the default data (as `make run` does)")
        subprocess.run(
            [sys.executable, "-m", "appraiser.cli", "train", "--if-no-champion"], check=True
        )
        version = champion.current()
    assert version is not None
    return version


APPRAISER_PATHS = {
    "c1": "/v1/appraisals",
    "c32": "/v1/appraisals",
    "explain": "/v1/appraisals?explain=true&comparables=5",
    "batch": "/v1/appraisals/batch",
}
BARE_PATHS = {"c1": "/price", "c32": "/price", "explain": "/explain", "batch": "/batch"}


def _has_price(body: bytes) -> None:
    assert json.loads(body)["price"] > 0


def _has_reasons(body: bytes) -> None:
    answer = json.loads(body)
    assert set(answer["contributions"]) == set(features.REASONS) and answer["comparables"]


def _bare_reasons(body: bytes) -> None:
    assert set(json.loads(body)["contributions"]) == set(schema.FEATURES)


def _thousand(key: str) -> Callable[[bytes], None]:
    def check(body: bytes) -> None:
        assert len(json.loads(body)[key]) == 1000

    return check


appraiser_checks = {"single": _has_price, "explain": _has_reasons, "batch": _thousand("appraisals")}
bare_checks = {"single": _has_price, "explain": _bare_reasons, "batch": _thousand("prices")}


def four_loads(
    servers: dict[str, tuple[int, dict[str, str], dict[str, Callable[[bytes], None]]]],
    singles: list[bytes],
    batches: list[bytes],
    seconds: float,
    rounds: int,
    kinds: Sequence[str] = tuple(LOADS),
) -> dict[str, dict[str, Load]]:
    """A lone client, 32 clients, explained stones over 8, batches of 1,000 over 2 (LOADS; those
    of `kinds`), on each server (name -> port, paths, checks). Each load runs in `rounds` short
    rounds that alternate between the servers, so a machine whose speed drifts during the run
    slows both alike."""
    out: dict[str, dict[str, Load]] = {name: {} for name in servers}
    for kind in kinds:
        concurrency, rows, check = LOADS[kind]
        bodies = batches if kind == "batch" else singles
        for _ in range(rounds):
            for name, (port, paths, checks) in servers.items():
                label = f"POST {paths[kind]}" + (" (1,000 stones)" if kind == "batch" else "")
                got = load(
                    label,
                    port,
                    paths[kind],
                    bodies,
                    concurrency,
                    seconds / rounds,
                    checks[check],
                    rows_per_request=rows,
                )
                out[name][kind] = out[name][kind] + got if kind in out[name] else got
    return out


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

    results: dict[str, Any] = {"champion": {"version": version, "model": model_name}}

    port, bport = free_port(), free_port()
    log = home / "serving-benchmark.log"
    print(f"\n`appraiser serve` (1 worker, access log on, to {log}) and the bare endpoint")
    print("(benchmarks/bare_endpoint.py: pydantic + one 500-tree XGBoost booster), in turns:")
    server = start(
        [sys.executable, "-m", "appraiser.cli", "serve", "--port", str(port), "--workers", "1"],
        port,
        "/health",
        log,
    )
    # what a server makes in the background once per version (compiled trees when the cache has
    # none, TreeSHAP tables: seconds) is start-up, not serving: let it finish first
    print(f"  (the server's background start-up took {wait_until_idle(server.pid):.0f} s more)")
    try:
        bare = start(
            [
                sys.executable,
                str(Path(__file__).with_name("bare_endpoint.py")),
                "--port",
                str(bport),
                "--model",
                str(home / "bare-xgboost-500.json"),  # trained once, then reused
            ],
            bport,
            "/health",
            home / "bare-endpoint.log",
        )
        try:
            both = four_loads(
                {
                    "appraiser": (port, APPRAISER_PATHS, appraiser_checks),
                    "bare": (bport, BARE_PATHS, bare_checks),
                },
                singles,
                batches,
                args.seconds,
                args.rounds,
                args.loads,
            )
        finally:
            stop(bare)
    finally:
        stop(server)
    runs = dict(both["appraiser"])
    runs.update({f"bare_{k}": v for k, v in both["bare"].items()})

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
    per_second = lambda a, b: a.per_second / b.per_second  # noqa: E731
    # load -> (figure's key, label, how the two runs compare, goal's low, goal's high)
    goal_of = {
        "c32": ("single_c32", "single stones/s at 32 connections, x bare", per_second, 1.2, None),
        "c1": (
            "lone_p50",
            "a lone request's p50, x bare",
            lambda a, b: a.percentile(50) / b.percentile(50),
            None,
            1.1,
        ),
        "explain": (
            "explained",
            "explained stones/s (8 connections), x bare",
            per_second,
            2.0,
            None,
        ),
        "batch": (
            "batch_rows",
            "rows/s in batches of 1,000, x bare",
            lambda a, b: a.rows_per_second / b.rows_per_second,
            1.0,
            None,
        ),
    }
    ratios, goals = {}, []
    for kind in args.loads:
        key, label, ratio, low, high = goal_of[kind]
        ratios[key] = ratio(runs[kind], runs[f"bare_{kind}"])
        goals.append(Goal(label, ratios[key], "x", low=low, high=high))
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
    results["ratios"] = ratios
    results["goals"] = [g.as_dict() for g in goals]
    results["environment"] = environment()
    write_json(args.json, results)


if __name__ == "__main__":
    main()
