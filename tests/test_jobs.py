"""Background jobs (jobs.py): a failed job's process exits non-zero, and a job whose process was
lost reads failed rather than running for ever."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from appraiser import jobs, store
from tests.conftest import lock_held_elsewhere, use_home


def test_a_failed_job_exits_non_zero(tmp_path: Path) -> None:
    """Defect (issue 13): a retrain job that failed exited 0, so a launcher (a Cloud Run job
    execution) counted it a success."""
    use_home(tmp_path / "home")
    job_id = store.create_job(jobs.RETRAIN, {"trials": 1, "timeout": 1})
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
    job = store.get_job(job_id)
    assert job is not None and job["status"] == "failed"
    assert "TrainingError" in job["error"]  # no stones in this store yet


def test_a_job_whose_process_was_lost_reads_failed(tmp_path: Path) -> None:
    use_home(tmp_path / "home")
    job_id = store.create_job(jobs.RETRAIN, {})
    store.update_job(job_id, status="running", started_at=store.utcnow())
    young = jobs.status(job_id)
    assert young is not None and young["status"] == "running"  # still within its start-up
    long_ago = store.utcnow() - timedelta(seconds=jobs.STARTUP_GRACE + 60)
    store.update_job(job_id, created_at=long_ago)
    with lock_held_elsewhere():  # its process holds the pipeline lock: alive
        alive = jobs.status(job_id)
        assert alive is not None and alive["status"] == "running"
    lost = jobs.status(job_id)  # no one holds the lock: the process is gone
    assert lost is not None and lost["status"] == "failed" and "lost" in lost["error"]
    assert jobs.status("0" * 32) is None


def test_a_job_that_ended_is_never_called_lost(tmp_path: Path) -> None:
    """Review: a status check that took the lock as the job released it overwrote its ending."""
    use_home(tmp_path / "home")
    job_id = store.create_job(jobs.RETRAIN, {})
    long_ago = store.utcnow() - timedelta(seconds=jobs.STARTUP_GRACE + 60)
    store.update_job(job_id, status="succeeded", created_at=long_ago, result={"version": "2"})
    assert not jobs._abandoned(job_id)  # what start_retrain asks: the lock is free, yet it ended
    done = jobs.status(job_id)
    assert done is not None and done["status"] == "succeeded" and done["error"] is None
