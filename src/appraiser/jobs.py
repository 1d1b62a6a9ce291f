"""Background jobs started through the API: a retrain runs in its own process.

The API answers 202 at once with the job's id; `python -m appraiser.jobs JOB_ID` does the work and
records its progress in the store's jobs table, which every API process can read. Training in a
separate process keeps the server's latency steady (it needs the CPU and the GIL) and lets a crash
in training take nothing else down.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

from appraiser import audit, store

RETRAIN = "retrain"


class JobConflict(RuntimeError):
    """A job of the same kind is already queued or running."""


def start_retrain(params: dict[str, Any], *, actor: str) -> str:
    """Queue a retrain and start its process; returns the job id (JobConflict if one runs).
    `actor` is kept in the audit trail."""
    running = store.active_job(RETRAIN)
    if running is not None and not _abandoned(running):
        raise JobConflict(f"a retrain is already under way (job {running})")
    job_id = store.create_job(RETRAIN, params)
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
    audit.record(actor, "retrain_started", job_id=job_id, **params)
    return job_id


STARTUP_GRACE = 120.0  # seconds a new job's process may take to import and take the lock


def _abandoned(job_id: str) -> bool:
    """A queued/running job whose process is gone (the server that watched it restarted and the
    process then died): no one holds the pipeline lock although the job is past its start-up.
    Such a job is marked failed, so it cannot block retraining forever."""
    from appraiser import pipeline

    job = store.get_job(job_id)
    if job is None:
        return True
    created = job["created_at"]
    if created.tzinfo is None:
        created = created.replace(tzinfo=store.utcnow().tzinfo)
    if (store.utcnow() - created).total_seconds() < STARTUP_GRACE:
        return False
    try:
        with pipeline.exclusive():
            pass
    except pipeline.PipelineBusy:
        return False  # a pass or this job holds the lock: it is alive
    _fail(job_id, "the job's process was lost (found without the pipeline lock)")
    return True


def _fail(job_id: str, error: str) -> None:
    store.update_job(job_id, status="failed", finished_at=store.utcnow(), error=error)


def _reap(job_id: str, process: subprocess.Popen[bytes]) -> None:
    """Wait for the job's process; if it died without saying how it ended, mark the job failed."""
    _, stderr = process.communicate()
    job = store.get_job(job_id)
    if job is not None and job["status"] in ("queued", "running"):
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
    if job is not None and job["status"] in ("queued", "running") and _abandoned(job_id):
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
    try:
        with pipeline.exclusive():
            result = pipeline.retrain(
                trials=int(params.get("trials", pipeline.DEFAULT_TRIALS)),
                timeout=float(params.get("timeout", pipeline.DEFAULT_TIMEOUT)),
                show_progress=False,
                actor=f"api job {job_id}",
            )
    except Exception as exc:  # recorded for GET /v1/jobs/{id}; the champion is untouched
        store.update_job(
            job_id,
            status="failed",
            finished_at=store.utcnow(),
            error=f"{type(exc).__name__}: {exc}",
        )
        return False
    store.update_job(
        job_id,
        status="succeeded",
        finished_at=store.utcnow(),
        result={"version": result.version, **result.to_dict()},
    )
    return True


if __name__ == "__main__":
    sys.exit(0 if run(sys.argv[1]) else 1)
