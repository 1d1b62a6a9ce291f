"""Several API processes on real engines: one PostgreSQL store, one MLflow tracking server.

Two short tests first pin down what processes sharing a store and a model cache must survive:
replicas migrating a fresh store at the same moment, and workers filling one cache at once.

The test starts `mlflow server` (its backend store a fresh PostgreSQL database, its artifacts
proxied from a temporary folder) and two `appraiser serve` "machines" that share it and a second
fresh PostgreSQL database as their store:

- A runs `--workers 2` (two processes sharing A's APPRAISER_HOME, as on one machine);
- B runs one process with its own APPRAISER_HOME (another machine).

Both start at once, before there is a model (they answer 503 and follow the registry);
`appraiser train` then registers and promotes v1 through the tracking server, and a copy of it is
registered as v2.
The test shows that every worker of A and B serves v1, that every appraisal any of them answers
lands in the PostgreSQL store with the version that priced it, and that a promotion of v2 made
through B's API reaches every worker of A and B within seconds; their later appraisals carry v2
and land in the store too.

Which worker answered? A request goes to whichever of A's workers accepts its connection; each
worker's `/health` gives `loaded_at`, the time that process loaded its model (unique per process and
model), and a `/health` and an appraisal sent on one keep-alive connection are answered by the same
worker. So the test opens fresh connections until it has heard from every worker.

Needs APPRAISER_TEST_POSTGRES_URL (see docs/postgres.md): skipped without it, failed under CI.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, create_engine, text
from sqlalchemy.pool import NullPool

from appraiser import schema
from appraiser.config import REGISTERED_MODEL
from tests.conftest import API_KEY, free_port
from tests.pg import POSTGRES_ENV, fresh_postgres_database
from tests.system import in_ci

needs_postgres = pytest.mark.skipif(
    not os.environ.get(POSTGRES_ENV, "").strip() and not in_ci(),
    reason=f"{POSTGRES_ENV} is not set: no PostgreSQL server to test against (docs/postgres.md)",
)

RELOAD_SECONDS = 1
PROMOTION_DEADLINE = 15.0  # seconds for a promotion to reach every worker


# --- processes ----------------------------------------------------------------------------------


@dataclass
class Process:
    """A command started in its own process group (its children stop with it), output to a file."""

    name: str
    command: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.popen.returncode}:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM to the group this process leads, SIGKILL to it after 10 s."""
        if self.popen is None:
            return
        group = self.popen.pid  # start_new_session: the group id is the leader's pid
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
            try:  # the leader is gone; its workers may linger a moment
                os.killpg(group, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)


def base_env(**extra: str) -> dict[str, str]:
    """This environment without any APPRAISER_ or MLFLOW_ setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPRAISER_", "MLFLOW_"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


# --- HTTP ----------------------------------------------------------------------------------------


def call(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request on `conn` (kept open: HTTP/1.1 keep-alive); the status and the JSON body."""
    payload = json.dumps(body).encode() if body is not None else None
    sent = {"Content-Type": "application/json"} if payload is not None else {}
    conn.request(method, path, body=payload, headers={**sent, **(headers or {})})
    response = conn.getresponse()
    raw = response.read()
    try:
        return response.status, json.loads(raw) if raw else None
    except ValueError:
        return response.status, raw.decode(errors="replace")


def get(port: int, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        return call(conn, "GET", path)
    finally:
        conn.close()


def wait_until_up(process: Process, port: int, path: str, deadline: float) -> None:
    while True:
        process.check_alive()
        try:
            status, _ = get(port, path)
            if status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{process.name} did not answer {path} in time:\n{process.output()}")
        time.sleep(0.3)


@dataclass
class Server:
    """One `appraiser serve` (one or more worker processes behind one port)."""

    name: str
    port: int
    workers: int
    process: Process
    appraisals: list[tuple[str, str]] = field(default_factory=list)  # (id, model_version)
    reload_errors: set[str] = field(default_factory=set)

    def visit(self, version: str) -> dict[str, Any]:
        """One worker's `/health`, and when it serves `version` an appraisal of the example stone
        on the same connection (so by the same worker), which must be priced by `version`."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            status, health = call(conn, "GET", "/health")
            assert status == 200, (self.name, status, health)
            if health["reload_error"]:
                self.reload_errors.add(health["reload_error"])
            if health["champion"] != version:
                return health
            sock = conn.sock
            status, appraisal = call(conn, "POST", "/v1/appraisals", schema.example_stone())
            assert conn.sock is sock and sock is not None, "the connection was not kept alive"
        finally:
            conn.close()
        assert status == 200, f"{self.name} answered {status}: {appraisal}"
        assert appraisal["model_version"] == version, (health, appraisal)
        self.appraisals.append((appraisal["id"], appraisal["model_version"]))
        return health

    def every_worker_serves(self, version: str, deadline: float) -> dict[float, dict[str, Any]]:
        """Fresh connections until each worker has answered with `version` (and appraised with
        it, see `visit`): their `/health`, by worker (`loaded_at`)."""
        seen: dict[float, dict[str, Any]] = {}
        answers: list[str] = []
        while len(seen) < self.workers:
            self.process.check_alive()
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{self.name}: {len(seen)} of {self.workers} workers served v{version} in "
                    f"time; answers (champion@loaded_at): {answers[-20:]}\n"
                    f"{self.process.output()[-5000:]}"
                )
            health = self.visit(version)
            answers.append(f"{health['champion']}@{health['loaded_at']}")
            if health["champion"] == version:
                seen[health["loaded_at"]] = health
            time.sleep(0.05)
        return seen


def stored_versions(url: str, ids: list[str], deadline: float) -> dict[str, str | None]:
    """uid -> model_version of the appraisals `ids` in the store, waiting (until `deadline`) for
    the servers' background writers to have written all of them."""
    engine = create_engine(url, poolclass=NullPool)
    query = text("SELECT uid, model_version FROM appraisals WHERE uid IN :ids").bindparams(
        bindparam("ids", expanding=True)
    )
    try:
        while True:
            with engine.connect() as conn:
                found = {row.uid: row.model_version for row in conn.execute(query, {"ids": ids})}
            if len(found) == len(set(ids)) or time.monotonic() > deadline:
                return found
            time.sleep(0.2)
    finally:
        engine.dispose()


# --- the tests -----------------------------------------------------------------------------------


def run_together(script: str, env: dict[str, str], count: int = 4) -> list[tuple[int, str]]:
    """`count` Python processes running `script` from the same instant: each prints "ready" once
    its imports are done and waits for "go" on stdin, sent when all are ready. Their exit codes
    and output."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(count)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.strip() == "ready", line + child.stdout.read()
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        return [(child.wait(timeout=60), child.communicate()[0]) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def failures(results: list[tuple[int, str]], what: str) -> str:
    """'' when every process succeeded, else how many failed and the first one's error."""
    failed = [out.strip() for code, out in results if code]
    if not failed:
        return ""
    lines = failed[0].splitlines()
    error = next((line for line in reversed(lines) if "Error" in line.split(":")[0]), lines[-1])
    return f"{len(failed)} of {len(results)} processes {what} failed: {error}\n{failed[0][-3000:]}"


MIGRATE = """
import sys
import alembic.command
from appraiser import store
store.engine().connect().close()  # connected and imported: all start from the same mark
print("ready", flush=True)
sys.stdin.readline()
store.ready()
"""


@needs_postgres
def test_processes_starting_together_on_a_fresh_store_all_migrate_it(tmp_path: Path) -> None:
    """Replicas start at once (`appraiser serve` on several machines, a deploy): each migrates
    the store on start (`store.ready`), and none may fail because another is migrating too."""
    with fresh_postgres_database() as url:
        env = base_env(APPRAISER_DATABASE_URL=url, APPRAISER_HOME=str(tmp_path / "home"))
        results = run_together(MIGRATE, env)
        problem = failures(results, "starting together on a fresh store")
        assert not problem, problem
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
                appraisals = conn.execute(text("SELECT count(*) FROM appraisals")).scalar_one()
        finally:
            engine.dispose()
        assert len(versions) == 1 and appraisals == 0


LOAD = """
import sys
import mlflow.artifacts
from appraiser import registry
registry.client()  # imported and pointed at the registry: all start from the same mark
print("ready", flush=True)
sys.stdin.readline()
version, model = registry.load_version("1")
assert version == "1" and model.name
"""


def test_workers_loading_a_new_version_together_share_its_cache(home_copy: Path) -> None:
    """The workers of one server (`--workers N`) share APPRAISER_HOME and so its model cache;
    after a promotion they all load the new version within a poll of each other. Each must get
    the whole model, the first time, whatever the others are doing to the cache meanwhile."""
    shutil.rmtree(home_copy / "cache", ignore_errors=True)
    results = run_together(LOAD, base_env(APPRAISER_HOME=str(home_copy)))
    problem = failures(results, "loading v1 into one cache")
    assert not problem, problem


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    """Two fresh PostgreSQL databases: the appraiser store and the MLflow backend store."""
    with fresh_postgres_database() as store_url, fresh_postgres_database() as mlflow_url:
        yield store_url, mlflow_url


@needs_postgres
def test_api_processes_share_the_store_and_follow_one_promotion(
    databases: tuple[str, str], small_csv: Path, tmp_path: Path
) -> None:
    store_url, mlflow_db = databases
    mlflow_port, port_a, port_b = free_port(), free_port(), free_port()
    tracking = f"http://127.0.0.1:{mlflow_port}"
    python = sys.executable
    processes: list[Process] = []
    failed = True

    def launch(name: str, command: list[str], env: dict[str, str]) -> Process:
        process = Process(name, command, env, tmp_path / f"{name}.log").start()
        processes.append(process)
        return process

    try:
        started = time.monotonic()
        mlflow = launch(
            "mlflow-server",
            [
                *(python, "-m", "mlflow", "server"),
                *("--backend-store-uri", mlflow_db),
                *("--artifacts-destination", str(tmp_path / "artifacts")),
                *("--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"),
            ],
            # no job runner (huey consumers): nothing here uses MLflow's server-side jobs
            base_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        )
        wait_until_up(mlflow, mlflow_port, "/health", started + 90)
        mlflow_up = time.monotonic() - started

        # two "machines" start at once, before there is a model; a champion is trained meanwhile
        def serve_env(home: str) -> dict[str, str]:
            return base_env(
                APPRAISER_HOME=str(tmp_path / home),
                APPRAISER_DATABASE_URL=store_url,
                MLFLOW_TRACKING_URI=tracking,
                APPRAISER_API_KEY=API_KEY,
                APPRAISER_RELOAD_SECONDS=str(RELOAD_SECONDS),
            )

        def serve(name: str, port: int, workers: int) -> Server:
            command = [python, "-m", "appraiser.cli", "serve", "--port", str(port)]
            command += ["--workers", str(workers), "--no-access-log"]
            return Server(name, port, workers, launch(name, command, serve_env(name)))

        servers = [serve("server-a", port_a, 2), serve("server-b", port_b, 1)]
        trainer = launch(
            "train",
            [
                *(python, "-m", "appraiser.cli", "train", "--data", str(small_csv)),
                *("--trials", "1", "--timeout", "5", "--candidate", "hedonic"),
            ],
            base_env(APPRAISER_HOME=str(tmp_path / "trainer"), MLFLOW_TRACKING_URI=tracking),
        )
        assert trainer.popen is not None
        assert trainer.popen.wait(timeout=120) == 0, trainer.output()
        trained = time.monotonic() - started

        from mlflow.tracking import MlflowClient

        registry = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
        first = registry.get_model_version_by_alias(REGISTERED_MODEL, "champion")
        assert first.version == "1" and first.source is not None
        source: str = first.source
        second = registry.create_model_version(  # the same files: enough to tell which is served
            REGISTERED_MODEL,
            source,
            run_id=first.run_id,
            # a server checks that a models:/m-... source is the logged model named here; the
            # registry's answer leaves model_id empty, the source names it
            model_id=source.removeprefix("models:/"),
            description="copy of v1",
        )
        assert second.version == "2"

        # every worker of A and B serves v1 and prices with it
        deadline = time.monotonic() + 60
        for server in servers:
            wait_until_up(server.process, server.port, "/health", deadline)
            server.every_worker_serves("1", deadline)
        serving_v1 = time.monotonic() - started

        # a promotion through B's API: B serves v2 at once, every other worker within seconds
        conn = http.client.HTTPConnection("127.0.0.1", port_b, timeout=30)
        try:
            bearer = {"Authorization": f"Bearer {API_KEY}"}
            status, promoted = call(conn, "POST", "/v1/models/2/promote", headers=bearer)
        finally:
            conn.close()
        assert status == 200 and promoted["champion"] == "2", promoted
        promoted_at = time.monotonic()
        assert get(port_b, "/health")[1]["champion"] == "2"
        assert registry.get_model_version_by_alias(REGISTERED_MODEL, "champion").version == "2"
        reached: dict[str, float] = {}
        for server in servers:
            workers = server.every_worker_serves("2", promoted_at + PROMOTION_DEADLINE)
            reached[server.name] = time.monotonic() - promoted_at
            # each worker's last load succeeded (an error there is cleared by the next success)
            assert all(h["reload_error"] is None for h in workers.values()), workers

        # every appraisal any worker answered is in the one store, with the version that priced it
        answered = {uid: version for server in servers for uid, version in server.appraisals}
        assert len(answered) == sum(len(s.appraisals) for s in servers)  # ids unique across all
        stored = stored_versions(store_url, list(answered), time.monotonic() + 15)
        missing = sorted(set(answered) - set(stored))
        assert not missing, f"{len(missing)} of {len(answered)} appraisals not stored: {missing}"
        assert stored == answered
        for server in servers:
            versions = {version for _, version in server.appraisals}
            assert versions == {"1", "2"}, (server.name, server.appraisals)

        # a load that failed and was retried (e.g. two workers filling one model cache at once)
        # leaves only a warning in the log: shown here, not failed on
        warnings = [
            f"{s.name}: {line}"
            for s in servers
            for line in s.process.output().splitlines()
            if "could not load the champion" in line
        ]
        print(
            f"mlflow server up in {mlflow_up:.1f}s, v1 trained at {trained:.1f}s, every worker "
            f"serving v1 at {serving_v1:.1f}s; every worker serving v2 "
            + ", ".join(f"{name} {s:.1f}s" for name, s in reached.items())
            + f" after the promotion; {len(answered)} appraisals stored; retried loads: "
            + str(warnings + sorted(e for s in servers for e in s.reload_errors))
        )
        failed = False
    finally:
        with ExitStack() as stopping:
            for process in processes:
                stopping.callback(process.stop)
        if failed:
            for process in processes:
                print(f"\n===== {process.name} ({process.log}) =====\n{process.output()[-20000:]}")
