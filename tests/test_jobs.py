"""Background jobs (jobs.py): a failed job's process exits non-zero, and a job whose process was
lost reads failed rather than running for ever."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from appraiser import clock, jobs, store
from tests.conftest import lock_held_elsewhere, use_home


def test_a_failed_job_exits_non_zero(tmp_path: Path) -> None:
    """Defect (issue 13): a retrain job that failed exited 0, so a launcher (a Cloud Run job
    execution) counted it a success."""
    use_home(tmp_path / "home")
    job_id = jobs.create_job(jobs.RETRAIN, {"trials": 1, "timeout": 1})
    env = {**os.environ, "APPRAISER_HOME": str(tmp_path / "home")}
    env.pop("APPRAISER_DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "appraiser.jobs", job_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    job = jobs.get_job(job_id)
    assert job is not None and job["status"] == "failed"
    assert "TrainingError" in job["error"]  # no stones in this store yet


def test_a_job_whose_process_was_lost_reads_failed(tmp_path: Path) -> None:
    use_home(tmp_path / "home")
    job_id = jobs.create_job(jobs.RETRAIN, {})
    jobs.update_job(job_id, status="running", started_at=clock.now())
    young = jobs.status(job_id)
    assert young is not None and young["status"] == "running"  # still within its start-up
    long_ago = clock.now() - timedelta(seconds=jobs.STARTUP_GRACE + 60)
    jobs.update_job(job_id, created_at=long_ago)
    with lock_held_elsewhere():  # its process holds the pipeline lock: alive
        alive = jobs.status(job_id)
        assert alive is not None and alive["status"] == "running"
    lost = jobs.status(job_id)  # no one holds the lock: the process is gone
    assert lost is not None and lost["status"] == "failed" and "lost" in lost["error"]
    assert jobs.status("0" * 32) is None


def test_a_job_that_ended_is_never_called_lost(tmp_path: Path) -> None:
    """Review: a status check that took the lock as the job released it overwrote its ending."""
    use_home(tmp_path / "home")
    job_id = jobs.create_job(jobs.RETRAIN, {})
    long_ago = clock.now() - timedelta(seconds=jobs.STARTUP_GRACE + 60)
    jobs.update_job(job_id, status="succeeded", created_at=long_ago, result={"version": "2"})
    assert not jobs._abandoned(job_id)  # what start_retrain asks: the lock is free, yet it ended
    done = jobs.status(job_id)
    assert done is not None and done["status"] == "succeeded" and done["error"] is None


class FakeCloudRun:
    """The Cloud Run Admin API's jobs.run on loopback (the REST transport's wire format): it
    records each request and answers a long-running operation, or `status` when set."""

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.seen: list[tuple[str, dict]] = []
        self.status = 200
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                path = self.path.split("?", 1)[0]  # the query carries the encoding
                fake.seen.append((path, json.loads(self.rfile.read(length) or b"{}")))
                answer: dict[str, object]
                if fake.status == 200:
                    answer = {"name": "projects/p/locations/r/operations/op-1"}
                else:
                    answer = {"error": {"code": fake.status, "message": "permission denied"}}
                body = json.dumps(answer).encode()
                self.send_response(fake.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import run_v2
        from google.cloud.run_v2.services.jobs.transports import JobsRestTransport

        host = f"127.0.0.1:{self.server.server_address[1]}"
        transport = JobsRestTransport(
            host=host, credentials=AnonymousCredentials(), url_scheme="http"
        )
        return run_v2.JobsClient(transport=transport)


def test_a_retrain_starts_a_cloud_run_job_execution(tmp_path: Path, monkeypatch) -> None:
    """Issue 13: with APPRAISER_JOB_LAUNCHER=cloud-run, a retrain is an execution of the retrain
    job with the job id as its argument (google-cloud-run's client, over a fake API)."""
    from appraiser.config import settings

    use_home(tmp_path / "home")
    fake = FakeCloudRun()
    monkeypatch.setattr(jobs, "cloud_run_client", fake.client)
    monkeypatch.setenv("APPRAISER_JOB_LAUNCHER", "cloud-run")
    monkeypatch.setenv("APPRAISER_RETRAIN_JOB", "projects/p/locations/r/jobs/appraiser-retrain")
    settings.cache_clear()
    try:
        job_id = jobs.start_retrain({"trials": 1}, actor="admin-1")
        ((path, body),) = fake.seen
        assert path == "/v2/projects/p/locations/r/jobs/appraiser-retrain:run"
        (override,) = body["overrides"]["containerOverrides"]
        assert override["args"] == ["python", "-m", "appraiser.jobs", job_id]
        queued = jobs.get_job(job_id)
        assert queued is not None and queued["status"] == "queued"  # the execution reports

        jobs.update_job(job_id, status="succeeded")  # (one retrain at a time)
        fake.status = 403  # the platform refuses: the job is failed, the caller told why
        with pytest.raises(jobs.JobLaunchFailed, match="could not start"):
            jobs.start_retrain({"trials": 1}, actor="admin-1")
        others = [jobs.get_job(i) for i in _job_ids() if i != job_id]
        refused = [j for j in others if j is not None]
        assert refused and refused[0]["status"] == "failed"

        monkeypatch.delenv("APPRAISER_RETRAIN_JOB")
        settings.cache_clear()
        with pytest.raises(jobs.JobLaunchFailed, match="APPRAISER_RETRAIN_JOB"):
            jobs.start_retrain({}, actor="admin-1")
    finally:
        fake.server.shutdown()
        settings.cache_clear()


def _job_ids() -> list[str]:
    from sqlalchemy import select

    with store.session() as s:
        return list(s.scalars(select(store.Job.id)))
