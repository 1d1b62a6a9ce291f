"""Models and the loop that makes them: versions, promotion and rollback, held batches,
retraining in the background and its jobs."""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool

from appraiser import champion, jobs, registry
from appraiser.api import deps
from appraiser.api.schemas import (
    ERRORS,
    BatchStatusOut,
    JobId,
    JobOut,
    JobStarted,
    ModelsOut,
    PromoteOut,
    RetrainIn,
    StoredBatchOut,
)

router = APIRouter(tags=["models"], responses=ERRORS)


@router.get("/v1/models", response_model=ModelsOut, summary="Model versions (staff key)")
async def models(_: deps.Staff) -> dict[str, Any]:
    """Every registered version, newest first, with its holdout metrics (MAPE in %...). A staff
    key or above even when appraising is open to all: versions and metrics are the business's."""
    found = await run_in_threadpool(champion.versions)
    return {
        "champion": next((v.version for v in found if v.champion), None),
        "models": [
            {
                "version": v.version,
                "champion": v.champion,
                "created": v.created.to_pydatetime(),
                "model": v.model,
                "description": v.description,
                "metrics": {k: float(m) for k, m in v.metrics.items()},
            }
            for v in found
        ],
    }


@router.post(
    "/v1/models/{version}/promote",
    response_model=PromoteOut,
    tags=["admin"],
    summary="Make a version the champion (admin key)",
)
async def promote(
    ctx: deps.Ctx,
    who: deps.Admin,
    version: Annotated[str, PathParam(pattern=r"^[0-9]{1,9}$")],
    expected: Annotated[
        str | None,
        Query(
            pattern=r"^[0-9]{1,9}$",
            description="promote only if this version is champion now (else 409)",
        ),
    ] = None,
) -> dict:
    """Every server serves it within seconds (this one at once); the previous champion can be
    restored with POST /v1/models/rollback. Recorded in the audit trail under the key's name."""
    version = str(int(version))  # "007" is version 7
    expect: object = champion.ANY if expected is None else str(int(expected))
    await run_in_threadpool(
        _move_champion, functools.partial(champion.promote, expected=expect), version, who.name
    )
    await run_in_threadpool(ctx.champions.check)
    return {"champion": version, "message": f"version {version} is now the champion"}


@router.post(
    "/v1/models/rollback",
    response_model=PromoteOut,
    tags=["admin"],
    summary="Give the champion back to the one the current champion replaced (admin key)",
)
async def rollback(ctx: deps.Ctx, who: deps.Admin) -> dict:
    """Walks the promotion history back one step (a rollback of a rollback does not return to
    the bad version). 409 while a retrain or pipeline pass runs."""
    version = await run_in_threadpool(_move_champion, champion.rollback, None, who.name)
    await run_in_threadpool(ctx.champions.check)
    return {"champion": version, "message": f"rolled back: version {version} is champion"}


def _move_champion(move: Any, version: str | None, actor: str) -> str:
    """A champion move for the API: 409 while the pipeline is busy or the champion moved, 404 for
    an unknown version or nothing to roll back to, 503 when the registry cannot be read."""
    from appraiser.locking import PipelineBusy

    try:
        if version is None:
            return str(move(actor=actor))
        move(version, actor=actor)
        return version
    except (PipelineBusy, champion.ChampionChanged) as exc:
        raise HTTPException(409, str(exc)) from exc
    except registry.RegistryUnavailable as exc:
        raise HTTPException(503, "the model registry cannot be read; try again later") from exc
    except registry.RegistryError as exc:
        raise HTTPException(404, str(exc)) from exc


@router.get(
    "/v1/batches",
    response_model=list[StoredBatchOut],
    tags=["admin"],
    summary="Ingested batches (held ones wait for review; admin key)",
)
async def list_batches(
    _: deps.Admin,
    status: Annotated[
        Literal["accepted", "held", "dropped"] | None,
        Query(description="only batches with this status"),
    ] = None,
) -> list[dict[str, Any]]:
    """Newest first, with the champion's screening of each: held batches train nothing until
    released."""
    from appraiser import batches

    return await run_in_threadpool(batches.listed, status)


@router.post(
    "/v1/batches/{batch_id}/{action}",
    response_model=BatchStatusOut,
    tags=["admin"],
    summary="Release or drop a held batch (admin key)",
)
async def set_batch(
    who: deps.Admin,
    batch_id: Annotated[int, PathParam(ge=1, le=2**31 - 1)],
    action: Literal["release", "drop"],
) -> dict[str, Any]:
    """release: its stones train the next retrain; drop: kept, never used."""
    from appraiser import ingest

    status = "accepted" if action == "release" else "dropped"
    try:
        before = await run_in_threadpool(
            functools.partial(ingest.set_batch_status, batch_id, status, actor=who.name)
        )
    except KeyError as exc:
        raise HTTPException(404, f"no batch {batch_id}") from exc
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from exc
    return {"batch_id": batch_id, "status": status, "previous": before}


@router.post(
    "/v1/retrain",
    response_model=JobStarted,
    status_code=202,
    tags=["admin"],
    summary="Train a challenger on the store, in the background (admin key)",
)
async def retrain(who: deps.Admin, params: RetrainIn | None = None) -> dict[str, Any]:
    """Starts a retrain in its own process and answers at once with the job's id. The challenger
    replaces the champion only if the gate finds it measurably better."""
    try:
        job_id = await run_in_threadpool(
            functools.partial(
                jobs.start_retrain, (params or RetrainIn()).model_dump(), actor=who.name
            )
        )
    except jobs.JobConflict as exc:
        raise HTTPException(409, str(exc)) from exc
    except jobs.JobLaunchFailed as exc:  # the platform refused it: not the client's mistake
        raise HTTPException(503, str(exc)) from exc
    return {
        "job_id": job_id,
        "status_url": f"/v1/jobs/{job_id}",
        "message": "retrain started: poll status_url until status is succeeded or failed",
    }


@router.get("/v1/jobs/{job_id}", response_model=JobOut, summary="A background job's status")
async def job(job_id: JobId, who: deps.Appraising) -> dict[str, Any]:
    """Its status and result; why it failed (the process's own words) only for admins."""
    found = await run_in_threadpool(jobs.status, job_id)  # a lost process reads failed
    if found is None:
        raise HTTPException(404, f"no job with id {job_id}")
    if found["error"] and not deps.is_admin(who):
        found["error"] = "the job failed; an admin key shows why"
    return found
