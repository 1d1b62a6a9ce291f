"""What operators see: `/metrics` summed over `appraiser serve --workers N`, the JSON request log
(APPRAISER_LOG_FORMAT=json, as Google Cloud Logging reads it), and the Grafana dashboard and
Prometheus alert rules of compose.yaml naming metrics the server really exports.

One real server for the module: `appraiser serve --workers 2` on the trained champion, a SQLite
store, JSON logs. Each appraisal goes on a fresh connection, so both workers answer some; a
worker only knows its own figures, so without multiprocess metrics a scrape reports one
worker's share (the one that answered it).
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from appraiser import schema
from appraiser.api import metrics, request_log
from tests.conftest import API_KEY, free_port, private_home
from tests.test_multiprocess import Process, base_env, call, get, wait_until_up

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
APPRAISALS = 200
START_DEADLINE = 240.0  # seconds: two workers import the app and load the model (slow CI boxes)


@dataclass
class Served:
    port: int
    process: Process
    metrics_port: int  # APPRAISER_METRICS_PORT: /metrics is served there only


@pytest.fixture(scope="module")
def two_workers(trained_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`appraiser serve --workers 2` with JSON logs, on a private copy of the trained home."""
    root = tmp_path_factory.mktemp("observability")
    home = private_home(trained_home, root)
    port, metrics_port = free_port(), free_port()
    env = base_env(
        APPRAISER_HOME=str(home),
        APPRAISER_API_KEY=API_KEY,
        APPRAISER_LOG_FORMAT="json",
        APPRAISER_METRICS_PORT=str(metrics_port),
    )
    command = [sys.executable, "-m", "appraiser.cli", "serve", "--port", str(port)]
    process = Process("serve", [*command, "--workers", "2"], env, root / "serve.log").start()
    try:
        wait_until_up(process, port, "/ready", time.monotonic() + START_DEADLINE)
        yield Served(port, process, metrics_port)
    finally:
        process.stop()


def scrape(port: int) -> str:
    status, text = get(port, "/metrics")
    assert status == 200, text
    assert isinstance(text, str)
    return text


def sample(text: str, name: str, labels: str = "") -> float | None:
    """The value of sample `name{labels}` in a Prometheus text scrape (labels as written)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return None


def exported_names(text: str) -> set[str]:
    """Every metric and sample name in a scrape (`x_bucket`, `x_count` and `x` for a histogram)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def appraise_on_fresh_connections(port: int, count: int) -> list[str]:
    """`count` appraisals of the example stone, each on a new connection; their request ids."""
    ids = []
    for i in range(count):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            request_id = f"obs-test-{i}"
            conn.request(
                "POST",
                "/v1/appraisals",
                body=json.dumps(schema.example_stone()),
                headers={"Content-Type": "application/json", "X-Request-ID": request_id},
            )
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200, body
            assert response.getheader("X-Request-ID") == request_id
            ids.append(request_id)
        finally:
            conn.close()
    return ids


@pytest.fixture(scope="module")
def appraised(two_workers: Served) -> list[str]:
    return appraise_on_fresh_connections(two_workers.port, APPRAISALS)


def test_metrics_sum_over_workers(two_workers: Served, appraised: list[str]) -> None:
    """Every scrape, whichever worker answers it, counts the 200 appraisals of both workers."""
    port = two_workers.metrics_port
    route = 'method="POST",route="/v1/appraisals",status="200"'
    # a worker's live figures (its loads) reach the shared files within metrics.SYNC_SECONDS of
    # its start; on a loaded machine its first copy can come after the first scrape
    deadline = time.monotonic() + 30
    while sample(scrape(port), "appraiser_model_loads_total") != 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    for _ in range(8):  # fresh connections: the scrapes land on both workers
        text = scrape(port)
        assert sample(text, "appraiser_stones_priced_total", 'endpoint="single"') == APPRAISALS
        assert sample(text, "appraiser_request_seconds_count", route) == APPRAISALS
        assert sample(text, "appraiser_model_loads_total") == 2  # one load in each worker
        assert sample(text, "appraiser_champion_version") == 1
    # the background writers store the rows within a second or two; each worker's count reaches
    # the shared files within metrics.SYNC_SECONDS
    deadline = time.monotonic() + 30
    while True:
        texts = [scrape(port) for _ in range(4)]
        written = [sample(t, "appraiser_appraisals_written_total") for t in texts]
        if all(w == APPRAISALS for w in written) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert written == [APPRAISALS] * 4, written
    assert all(sample(t, "appraiser_appraisals_queued") == 0 for t in texts)
    assert all(sample(t, "appraiser_store_write_failures_total") == 0 for t in texts)


def test_json_logs_have_one_line_per_request(two_workers: Served, appraised: list[str]) -> None:
    time.sleep(0.5)  # the last lines reach the log file
    lines = [line for line in two_workers.process.output().splitlines() if line.strip()]
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    for entry in entries:
        assert {"severity", "message", "time"} <= set(entry), entry
    requests = {e["request_id"]: e for e in entries if e.get("logger") == "appraiser.access"}
    for request_id in appraised:
        entry = requests[request_id]
        assert entry["severity"] == "INFO"
        assert entry["method"] == "POST" and entry["route"] == "/v1/appraisals"
        assert entry["status"] == 200 and entry["model_version"] == "1"
        assert isinstance(entry["latency_ms"], float) and entry["latency_ms"] > 0
        http_request = entry["httpRequest"]  # Cloud Logging's own request fields
        assert http_request["requestMethod"] == "POST" and http_request["status"] == 200
        assert re.fullmatch(r"\d+\.\d{6}s", http_request["latency"])
    # a request without an id gets one, sent back and logged; the route is the template
    conn = http.client.HTTPConnection("127.0.0.1", two_workers.port, timeout=10)
    try:
        status, _ = call(conn, "GET", "/v1/appraisals/" + "0" * 32)
        assert status == 404
    finally:
        conn.close()
    deadline = time.monotonic() + 5
    while True:
        found = [
            json.loads(line)
            for line in two_workers.process.output().splitlines()
            if '"route": "/v1/appraisals/{appraisal_id}"' in line
        ]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert found and found[0]["status"] == 404 and found[0]["severity"] == "WARNING"
    assert re.fullmatch(r"[0-9a-f]{32}", found[0]["request_id"])


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every query of the dashboards and every alert rule."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{path.name}: {panel['title']}", target["expr"]))
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            found.append((f"alerts.yml: {rule['alert']}", rule["expr"]))
            for text in rule.get("annotations", {}).values():
                found.append((f"alerts.yml: {rule['alert']} annotation", text))
    return found


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bappraiser_[a-z0-9_]+", expr))


def base_name(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name)


def test_dashboard_and_alert_rules_name_metrics_the_server_exports(
    two_workers: Served, appraised: list[str]
) -> None:
    exported = exported_names(scrape(two_workers.metrics_port))
    exported |= {base_name(n) for n in exported}
    used = expressions()
    assert len(used) >= 10
    missing = {
        (where, name)
        for where, expr in used
        for name in metric_names(expr)
        if name not in exported and base_name(name) not in exported
    }
    assert not missing, sorted(missing)


# --- without a server ----------------------------------------------------------------------------


def test_a_live_counter_grows_by_the_increase_of_what_it_reads() -> None:
    from prometheus_client import CollectorRegistry, Counter

    counter = Counter("x_things", "things", registry=CollectorRegistry())
    live = metrics.Live(counter)
    figures = iter([3, 5, 5, 1, 4])  # 1: a new source (a new app) counted from there
    live.set_function(lambda: next(figures))
    for _ in range(5):
        live.sync()
    assert counter._value.get() == 5 + 3


def test_the_json_formatter_writes_cloud_logging_lines() -> None:
    record = logging.LogRecord("appraiser.x", logging.WARNING, __file__, 1, "a %s", ("b",), None)
    record.fields = {"route": "/v1/appraisals", "status": 422}
    entry = json.loads(request_log.JsonFormatter().format(record))
    assert entry["severity"] == "WARNING" and entry["message"] == "a b"
    assert entry["route"] == "/v1/appraisals" and entry["status"] == 422
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = json.loads(request_log.JsonFormatter().format(record))
    assert entry["severity"] == "ERROR" and "ValueError: boom" in entry["message"]
