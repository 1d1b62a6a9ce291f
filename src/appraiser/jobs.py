"""Background jobs started through the API: a retrain runs in its own process.

The API answers 202 at once with the job's id; `python -m appraiser.jobs JOB_ID` does the work and
records its progress in the store's jobs table (read and written here), which every API process
can read. Training in a separate process keeps the server's latency steady (it needs the CPU and
the GIL) and lets a crash in training take nothing else down.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from appraiser import audit, clock, store
from appraiser.config import settings
from appraiser.store import JOB_ACTIVE, Job

logger = logging.getLogger(__name__)

RETRAIN = "retrain"


class JobConflict(RuntimeError):
    """A job of the same kind is already queued or running."""


class JobLaunchFailed(RuntimeError):
    """The job could not be started (the job is recorded as failed)."""


# --- the jobs table -----------------------------------------------------------------------------


def create_job(
    kind: str, params: Mapping[str, Any], url: str | None = None, *, actor: str | None = None
) -> str:
    """A queued job; returns its id. With `actor`, audited (`<kind>_started`) in the same
    transaction."""
    store.ready(url)
    job_id = store.new_uid()
    with store.session(url) as s, s.begin():
        s.add(Job(id=job_id, kind=kind, status="queued", params=json.dumps(dict(params))))
        if actor is not None:
            audit.record(actor, f"{kind}_started", session=s, job_id=job_id, **params)
    return job_id


def update_job(job_id: str, url: str | None = None, **values: Any) -> None:
    """Set a job's status, times, result (JSON-encoded here) or error."""
    if "result" in values and values["result"] is not None:
        values["result"] = json.dumps(values["result"], default=str)
    store.ready(url)
    with store.session(url) as s, s.begin():
        job = s.get(Job, job_id)
        if job is None:
            raise KeyError(f"no job with id {job_id}")
        for key, value in values.items():
            setattr(job, key, value)


def get_job(job_id: str, url: str | None = None) -> dict[str, Any] | None:
    """A job as a dict, or None."""
    store.ready(url)
    with store.session(url) as s:
        job = s.get(Job, job_id)
        if job is None:
            return None
        return {
            "id": job.id,
            "kind": job.kind,
            "status": job.status,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "params": json.loads(job.params),
            "result": json.loads(job.result) if job.result else None,
            "error": job.error,
        }


def active_job(kind: str, url: str | None = None) -> str | None:
    """The id of a queued or running job of this kind, if any."""
    store.ready(url)
    with store.session(url) as s:
        return s.scalar(select(Job.id).where(Job.kind == kind, Job.status.in_(JOB_ACTIVE)).limit(1))


# --- starting, watching and running a job -------------------------------------------------------


def start_retrain(params: dict[str, Any], *, actor: str) -> str:
    """Queue a retrain and start its process; returns the job id (JobConflict if one runs).
    `actor` is kept in the audit trail."""
    running = active_job(RETRAIN)
    if running is not None and not _abandoned(running):
        raise JobConflict(f"a retrain is already under way (job {running})")
    job_id = create_job(RETRAIN, params, actor=actor)
    if settings().job_launcher == "cloud-run":
        _start_cloud_run(job_id)
    else:
        _start_local(job_id)
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

    job = get_job(job_id)
    if job is None:
        return True
    created = clock.utc(job["created_at"])
    assert created is not None  # a stored job always has its creation time
    if (clock.now() - created).total_seconds() < STARTUP_GRACE:
        return False
    try:
        with pipeline.exclusive():  # held while deciding: the job cannot end meanwhile
            again = get_job(job_id)  # it may have ended just before the lock was free
            if again is None or again["status"] not in JOB_ACTIVE:
                return False
            _fail(job_id, "the job's process was lost (found without the pipeline lock)")
    except pipeline.PipelineBusy:
        return False  # a pass or this job holds the lock: it is alive
    return True


def _fail(job_id: str, error: str) -> None:
    update_job(job_id, status="failed", finished_at=clock.now(), error=error)


def _reap(job_id: str, process: subprocess.Popen[bytes]) -> None:
    """Wait for the job's process; if it died without saying how it ended, mark the job failed."""
    _, stderr = process.communicate()
    job = get_job(job_id)
    if job is not None and job["status"] in JOB_ACTIVE:
        tail = stderr.decode(errors="replace").strip().splitlines()[-5:]
        update_job(
            job_id,
            status="failed",
            finished_at=clock.now(),
            error=f"the job process exited with code {process.returncode}: " + " / ".join(tail),
        )


def status(job_id: str) -> dict[str, Any] | None:
    """A job as the store has it, a queued or running one first checked for a lost process
    (then reported failed): a job whose process died with no one watching would otherwise read
    `running` for ever."""
    job = get_job(job_id)
    if job is not None and job["status"] in JOB_ACTIVE and _abandoned(job_id):
        job = get_job(job_id)
    return job


def run(job_id: str) -> bool:
    """Do a queued job (in this process) and record how it ended; True when it succeeded (the
    process's exit status says the same, for whatever launched it)."""
    from appraiser import pipeline

    job = get_job(job_id)
    if job is None:
        raise KeyError(f"no job with id {job_id}")
    update_job(job_id, status="running", started_at=clock.now())
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
                    actor=audit.system_actor(f"job {job_id}"),
                )
            except Exception as exc:  # recorded for GET /v1/jobs/{id}; the champion is untouched
                _fail(job_id, f"{type(exc).__name__}: {exc}")
                return False
            update_job(
                job_id,
                status="succeeded",
                finished_at=clock.now(),
                result={"version": result.version, **result.to_dict()},
            )
            return True
    except pipeline.PipelineBusy as exc:  # another pass or retrain runs: this one does not
        _fail(job_id, f"PipelineBusy: {exc}")
        return False


if __name__ == "__main__":
    sys.exit(0 if run(sys.argv[1]) else 1)
