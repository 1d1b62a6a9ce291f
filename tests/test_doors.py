"""The server's doors (issue 24): slow bodies hold no batch place, forwarded headers are believed
only from named proxies, the bootstrap key is long, a rate limit is on by default and never on
/health, the metrics have their own port and the model list needs a key.

Where the subject is what `appraiser serve` gives uvicorn (forwarded headers, the metrics port),
the test runs the real command; the batch places are the app's, tested under uvicorn in-process.
"""

from __future__ import annotations

import http.client
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from appraiser.api import create_app, deps
from appraiser.cli import app as cli
from appraiser.config import Settings, settings
from tests.conftest import API_KEY, LiveServer, free_port, private_home
from tests.test_multiprocess import Process, base_env, call, get, wait_until_up

ADMIN = {"Authorization": f"Bearer {API_KEY}"}
LIMIT = 20  # per minute, for the served process below
START_DEADLINE = 240.0


# --- slow bodies ---------------------------------------------------------------------------------


def stall(
    port: int, path: str, content_type: str = "application/json", first: str = "{"
) -> socket.socket:
    """A connection that announces a 100 kB body, sends its `first` bytes and waits."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    conn.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: 100000\r\n\r\n{first}".encode()
    )
    return conn


@pytest.fixture
def served(home_copy: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("APPRAISER_API_KEY", API_KEY)
    settings.cache_clear()
    with LiveServer(create_app(), free_port()) as server:
        yield server.url
    settings.cache_clear()


def test_stalled_bodies_do_not_stop_batches(
    served: str, stone: dict, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect: a batch took one of its 4 places before reading its body, so four connections that
    sent headers and one byte made every batch answer 503 until they gave up (and a sender
    that hung up was logged as the server's error, a 500)."""
    port = int(served.rsplit(":", 1)[1])
    stalled = [stall(port, "/v1/appraisals/batch") for _ in range(settings().max_batch_calls)]
    try:
        time.sleep(0.5)  # their headers are read and their handlers wait for the body
        started = time.monotonic()
        answer = httpx.post(f"{served}/v1/appraisals/batch", json={"diamonds": [stone]}, timeout=5)
        assert answer.status_code == 200, answer.text
        assert time.monotonic() - started < 5
        assert len(answer.json()["appraisals"]) == 1
    finally:
        for conn in stalled:
            conn.close()
    time.sleep(0.5)  # the server sees them go
    assert not [r for r in caplog.records if "unexpected error" in r.getMessage()]


def test_a_body_that_does_not_arrive_in_time_is_a_408(
    home_copy: Path, monkeypatch: pytest.MonkeyPatch, stone: dict
) -> None:
    monkeypatch.setenv("APPRAISER_REQUEST_BODY_SECONDS", "1")
    settings.cache_clear()
    try:
        with LiveServer(create_app(), free_port()) as server:
            port = int(server.url.rsplit(":", 1)[1])
            for path, kind, first in (
                ("/v1/appraisals/batch", "application/json", "{"),
                ("/v1/appraisals/list", "multipart/form-data; boundary=x", "--x\r\n"),
            ):
                conn = stall(port, path, kind, first)
                started = time.monotonic()
                with conn:
                    raw = conn.recv(65536).decode()
                assert raw.startswith("HTTP/1.1 408"), (path, raw)
                assert "APPRAISER_REQUEST_BODY_SECONDS" in raw, raw
                assert 0.9 < time.monotonic() - started < 10
            # the place the slow batch would have held is free
            answer = httpx.post(f"{server.url}/v1/appraisals/batch", json={"diamonds": [stone]})
            assert answer.status_code == 200, answer.text
    finally:
        settings.cache_clear()


# --- `appraiser serve`: forwarded headers, limits, the metrics port ------------------------------


@dataclass
class Served:
    port: int
    metrics_port: int
    process: Process


@pytest.fixture(scope="module")
def serve(trained_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`appraiser serve` (one worker) with a low rate limit and a metrics port, defaults else."""
    root = tmp_path_factory.mktemp("doors")
    home = private_home(trained_home, root)
    port, metrics_port = free_port(), free_port()
    env = base_env(
        APPRAISER_HOME=str(home),
        APPRAISER_API_KEY=API_KEY,
        APPRAISER_RATE_LIMIT=f"{LIMIT}/minute",
        APPRAISER_METRICS_PORT=str(metrics_port),
    )
    command = [sys.executable, "-m", "appraiser.cli", "serve", "--port", str(port)]
    process = Process("serve", command, env, root / "serve.log").start()
    try:
        wait_until_up(process, port, "/ready", time.monotonic() + START_DEADLINE)
        yield Served(port, metrics_port, process)
    finally:
        process.stop()


def test_forged_forwarded_headers_buy_no_fresh_bucket(serve: Served, stone: dict) -> None:
    """Defect: uvicorn believed X-Forwarded-For from 127.0.0.1 by default, so each forged
    address was a new client with a full allowance."""
    conn = http.client.HTTPConnection("127.0.0.1", serve.port, timeout=10)
    try:
        codes = [
            call(conn, "POST", "/v1/appraisals", stone, {"X-Forwarded-For": f"203.0.113.{i}"})[0]
            for i in range(100)
        ]
    finally:
        conn.close()
    assert set(codes) <= {200, 429}, codes
    assert codes.count(200) <= LIMIT and codes.count(429) >= 100 - LIMIT, codes


def test_health_is_never_rate_limited(serve: Served, stone: dict) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", serve.port, timeout=10)
    try:
        codes = [call(conn, "POST", "/v1/appraisals", stone)[0] for _ in range(LIMIT + 5)]
        assert codes[-1] == 429, codes  # this address is over its limit
        for path in ("/health", "/ready"):
            status, body = call(conn, "GET", path)
            assert status == 200 and body["status"] == "ok", (path, status, body)
        # a key's holder past the address's limit still gets an answer (as anyone)
        assert call(conn, "GET", "/health", headers=ADMIN)[0] == 200
    finally:
        conn.close()


def test_metrics_are_served_on_their_own_port_only(serve: Served) -> None:
    status, body = get(serve.port, "/metrics")
    assert status == 404 and "APPRAISER_METRICS_PORT" in body["message"], body
    status, text = get(serve.metrics_port, "/metrics")
    assert status == 200 and "appraiser_request_seconds" in text
    assert get(serve.metrics_port, "/v1/schema")[0] == 404  # the API is not served there


# --- keys and defaults ---------------------------------------------------------------------------


def test_a_short_bootstrap_key_is_refused_at_start(
    home_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn
    from uvicorn.server import Server

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn, "run", started)
    monkeypatch.setattr(Server, "run", started)
    monkeypatch.setenv("APPRAISER_API_KEY", "change-me")
    settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["serve", "--port", str(free_port())])
        assert result.exit_code == 1, result.output
        said = " ".join(result.output.split())
        assert "APPRAISER_API_KEY" in said and "at least 24 characters" in said, said
        assert "secrets.token_urlsafe(32)" in said, said
        with pytest.raises(ValueError, match="APPRAISER_API_KEY"):
            create_app()  # nor does any other server start with it
    finally:
        settings.cache_clear()
    Settings(api_key=SecretStr("x" * 24)).check_serving()  # 24 is enough: no error


def test_any_proxy_is_refused_as_a_trusted_proxy() -> None:
    """Review: with '*' uvicorn believes the leftmost X-Forwarded-For entry, the client's own."""
    with pytest.raises(ValueError, match="APPRAISER_TRUSTED_PROXIES"):
        Settings(trusted_proxies="10.0.0.0/8, *").check_serving()
    Settings(trusted_proxies="10.0.0.0/8").check_serving()


def test_a_rate_limit_is_on_by_default_above_the_benchmarks_load() -> None:
    (limit,) = deps.make_limits(Settings().rate_limit)
    # docs/measurements.md: one worker served 2,157 single stones/s to the loopback benchmark
    per_second = limit.amount / limit.get_expiry()
    assert per_second >= 2 * 2_157, limit
    assert deps.make_limits("none") == []


def test_the_model_list_needs_a_staff_key_even_when_appraising_is_open(
    home_copy: Path, monkeypatch: pytest.MonkeyPatch, stone: dict
) -> None:
    monkeypatch.setenv("APPRAISER_API_KEY", API_KEY)
    settings.cache_clear()
    try:
        with TestClient(create_app()) as client:
            assert client.post("/v1/appraisals", json=stone).status_code == 200  # open
            anonymous = client.get("/v1/models")
            assert anonymous.status_code == 401 and "staff key" in anonymous.json()["message"]
            listed = client.get("/v1/models", headers=ADMIN)
            assert listed.status_code == 200 and listed.json()["champion"] == "1"
    finally:
        settings.cache_clear()
