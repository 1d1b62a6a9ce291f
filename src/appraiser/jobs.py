"""Background jobs started through the API: a retrain runs in its own process.

The API answers 202 at once with the job's id; `python -m appraiser.jobs JOB_ID` does the work and
records its progress in the store's jobs table, which every API process can read. Training in a
separate process keeps the server's latency steady (it needs the CPU and the GIL) and lets a crash
in training take nothing else down.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from typing import Any

from appraiser import audit, store
from appraiser.config import settings
from appraiser.monitoring import utc

logger = logging.getLogger(__name__)

RETRAIN = "retrain"


class JobConflict(RuntimeError):
    """A job of the same kind is already queued or running."""


class JobLaunchFailed(RuntimeError):
    """The job could not be started (the job is recorded as failed)."""


def start_retrain(params: dict[str, Any], *, actor: str) -> str:
    """Queue a retrain and start its process; returns the job id (JobConflict if one runs).
    `actor` is kept in the audit trail."""
    running = store.active_job(RETRAIN)
    if running is not None and not _abandoned(running):
        raise JobConflict(f"a retrain is already under way (job {running})")
    job_id = store.create_job(RETRAIN, params)
    if settings().job_launcher == "cloud-run":
        _start_cloud_run(job_id)
    else:
        _start_local(job_id)
    audit.record(actor, "retrain_started", job_id=job_id, **params)
    return job_id


def _start_local(job_id: str) -> None:
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "appraiser.jobs", job_id],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a server restart does not kill a retrain half-way
        )
    except OSError as exc:
        _fail(job_id, f"the job process could not start: {exc}")
        raise
    threading.Thread(target=_reap, args=(job_id, process), daemon=True).start()


def cloud_run_client() -> Any:
    """The Cloud Run Admin API client (the runtime service account's credentials); tests give
    it a transport of their own."""
    from google.cloud import run_v2

    return run_v2.JobsClient()


def _start_cloud_run(job_id: str) -> None:
    """Start an execution of the retrain job with this job's id as its argument, and return
    without waiting: the execution reports through the jobs table as a local process does, and
    a lost one reads failed (`status`)."""
    from google.cloud import run_v2

    job_name = settings().retrain_job
    if not job_name:
        _fail(job_id, "APPRAISER_RETRAIN_JOB is not set")
        raise JobLaunchFailed("APPRAISER_JOB_LAUNCHER=cloud-run needs APPRAISER_RETRAIN_JOB")
    request = run_v2.RunJobRequest(
        name=job_name,
        overrides=run_v2.RunJobRequest.Overrides(
            container_overrides=[
                run_v2.RunJobRequest.Overrides.ContainerOverride(
                    args=["python", "-m", "appraiser.jobs", job_id]
                )
            ]
        ),
    )
    try:
        operation = cloud_run_client().run_job(request=request)
    except Exception as exc:  # the API refused or could not be reached: the job reads failed
        _fail(job_id, f"the Cloud Run job could not start: {type(exc).__name__}: {exc}")
        raise JobLaunchFailed(f"the Cloud Run job {job_name} could not start: {exc}") from exc
    execution = getattr(getattr(operation, "metadata", None), "name", "") or "an execution"
    logger.info("retrain job %s runs as %s of %s", job_id, execution, job_name)


STARTUP_GRACE = 120.0  # seconds a new job's process may take to import and take the lock


def _abandoned(job_id: str) -> bool:
    """A queued/running job whose process is gone (the server that watched it restarted and the
    process then died): no one holds the pipeline lock although the job is past its start-up.
    Such a job is marked failed, so it cannot block retraining forever."""
    from appraiser import pipeline

    job = store.get_job(job_id)
    if job is None:
        return True
    created = utc(job["created_at"])
    assert created is not None  # a stored job always has its creation time
    if (store.utcnow() - created).total_seconds() < STARTUP_GRACE:
        return False
    try:
        with pipeline.exclusive():  # held while deciding: the job cannot end meanwhile
            again = store.get_job(job_id)  # it may have ended just before the lock was free
            if again is None or again["status"] not in store.JOB_ACTIVE:
                return False
            _fail(job_id, "the job's process was lost (found without the pipeline lock)")
    except pipeline.PipelineBusy:
        return False  # a pass or this job holds the lock: it is alive
    return True


def _fail(job_id: str, error: str) -> None:
    store.update_job(job_id, status="failed", finished_at=store.utcnow(), error=error)


def _reap(job_id: str, process: subprocess.Popen[bytes]) -> None:
    """Wait for the job's process; if it died without saying how it ended, mark the job failed."""
    _, stderr = process.communicate()
    job = store.get_job(job_id)
    if job is not None and job["status"] in store.JOB_ACTIVE:
        tail = stderr.decode(errors="replace").strip().splitlines()[-5:]
        store.update_job(
            job_id,
            status="failed",
            finished_at=store.utcnow(),
            error=f"the job process exited with code {process.returncode}: " + " / ".join(tail),
        )


def status(job_id: str) -> dict[str, Any] | None:
    """A job as the store has it, a queued or running one first checked for a lost process
    (then reported failed): a job whose process died with no one watching would otherwise read
    `running` for ever."""
    job = store.get_job(job_id)
    if job is not None and job["status"] in store.JOB_ACTIVE and _abandoned(job_id):
        job = store.get_job(job_id)
    return job


def run(job_id: str) -> bool:
    """Do a queued job (in this process) and record how it ended; True when it succeeded (the
    process's exit status says the same, for whatever launched it)."""
    from appraiser import pipeline

    job = store.get_job(job_id)
    if job is None:
        raise KeyError(f"no job with id {job_id}")
    store.update_job(job_id, status="running", started_at=store.utcnow())
    params = job["params"]
    # how the job ended is written while the lock is held: a status check (`status`) that took
    # the lock the moment it was released would otherwise find a finished job "lost"
    try:
        with pipeline.exclusive():
            try:
                result = pipeline.retrain(
                    trials=int(params.get("trials", pipeline.DEFAULT_TRIALS)),
                    timeout=float(params.get("timeout", pipeline.DEFAULT_TIMEOUT)),
                    show_progress=False,
                    actor=f"api job {job_id}",
                )
            except Exception as exc:  # recorded for GET /v1/jobs/{id}; the champion is untouched
                _fail(job_id, f"{type(exc).__name__}: {exc}")
                return False
            store.update_job(
                job_id,
                status="succeeded",
                finished_at=store.utcnow(),
                result={"version": result.version, **result.to_dict()},
            )
            return True
    except pipeline.PipelineBusy as exc:  # another pass or retrain runs: this one does not
        _fail(job_id, f"PipelineBusy: {exc}")
        return False


if __name__ == "__main__":
    sys.exit(0 if run(sys.argv[1]) else 1)
