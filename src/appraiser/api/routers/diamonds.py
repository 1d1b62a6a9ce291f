"""The collection: stones like a given one, and admins' uploads of appraised stones."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from appraiser import schema
from appraiser.api import deps
from appraiser.api.schemas import ERRORS, MAX_COMPARABLES, IngestOut, SimilarOut

router = APIRouter(prefix="/v1/diamonds", tags=["diamonds"], responses=ERRORS)

MAX_UNKNOWN_SHOWN = 10


@router.get("/similar", response_model=SimilarOut, summary="Stones of the collection like this one")
async def similar(
    ctx: deps.Ctx,
    _: deps.Appraising,
    carat: Annotated[float, Query(gt=0, le=schema.BOUNDS["carat"].high, examples=[1.1])],
    cut: Annotated[schema.Cut, Query(examples=["Ideal"])],
    color: Annotated[schema.Color, Query(examples=["H"])],
    clarity: Annotated[schema.Clarity, Query(examples=["SI2"])],
    n: Annotated[int, Query(ge=1, le=MAX_COMPARABLES)] = 5,
) -> dict[str, Any]:
    """The n stones (at most 50) with the same cut, color and clarity and the closest carat
    (fewer when the collection has fewer), with their prices."""
    stone = {"carat": carat, "cut": cut, "color": color, "clarity": clarity}
    found = deps.current_appraiser(ctx).index.comparables(stone, n)
    return {"diamonds": found.to_dict(orient="records")}


@router.post(
    "",
    response_model=IngestOut,
    tags=["admin"],
    summary="Add appraised stones (JSON or a CSV upload; admin key)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["diamonds"],
                        "properties": {
                            "diamonds": {
                                "type": "array",
                                "items": {"type": "object"},
                                "description": "stones with their price (all columns)",
                            },
                            "source": {
                                "type": "string",
                                "maxLength": 200,
                                "description": "a label for the batch's name (its source is "
                                "the key's person)",
                            },
                        },
                    },
                    "example": {"diamonds": [{**schema.EXAMPLE_STONE, "price": 4900}]},
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "source": {"type": "string", "maxLength": 200},
                        },
                    }
                },
            },
        }
    },
)
async def add_diamonds(request: Request, who: deps.Admin) -> dict[str, Any]:
    """Validated like every ingested file: bad rows are kept with their reasons (listed here and
    by `appraiser rejected`), good ones join the store for the next retrain; a batch whose
    prices the champion finds far from everything known is held. The same content sent twice is
    stored once. A stone may carry `appraised_at` (YYYY-MM-DD: the day it was priced). The
    batch's source is the key's person; `source` only labels the batch's name."""
    content, label, name, ignored = await _ingest_payload(request)
    # the batch's source is who sent it (the key's person): a client's label cannot make one
    # person look like a second source that corroborates the first (market_loop.py)
    source = who.person or who.name
    if label:
        name = f"{label} ({name})"
    report = await run_in_threadpool(_ingest_bytes, content, source, name, who.name)
    if ignored:
        report["message"] = (
            f"fields ignored (not stone columns): {', '.join(ignored)}; " + report["message"]
        )
    return report


async def _ingest_payload(request: Request) -> tuple[bytes, str, str, list[str]]:
    """The CSV bytes to ingest, the client's label ('' without one), a name for them (the
    uploaded file's name) and the JSON fields ignored because no stone has them."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(422, "file: attach the CSV as the form field 'file'")
        label = _printable(str(form.get("source") or ""), fallback="")
        return await upload.read(), label, _printable(upload.filename or "upload.csv"), []
    if kind == "application/json":
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError) as exc:  # deep nesting is a client's mistake too
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise HTTPException(422, f"body: not valid JSON ({reason})") from exc
        stones = body.get("diamonds") if isinstance(body, dict) else None
        if not isinstance(stones, list) or not all(isinstance(s, dict) for s in stones):
            raise HTTPException(422, 'diamonds: send {"diamonds": [{...stone with price...}, ...]}')
        if not stones:
            raise HTTPException(422, "diamonds: send at least one stone")
        import pandas as pd

        # only the stone's columns: one made-up key per row would otherwise make a table of
        # rows x distinct keys (10,000 x 10,000 cells from a 1 MB body)
        columns = [*schema.COLUMNS, *schema.OPTIONAL_COLUMNS]  # appraised_at checked as in a file
        known = set(columns)
        unknown: set[str] = set()
        rows = []
        for i, stone in enumerate(stones):
            unknown.update(k for k in stone if k not in known)
            day = stone.get(schema.APPRAISED_AT)
            if day is not None and not isinstance(day, str):  # JSON has no date type: text
                raise HTTPException(
                    422, f"diamonds[{i}].{schema.APPRAISED_AT}: {schema.APPRAISED_AT_RULE}"
                )
            rows.append({c: stone.get(c) for c in columns})
        frame = pd.DataFrame(rows, columns=columns)
        if frame[schema.APPRAISED_AT].isna().all():
            frame = frame.drop(columns=schema.APPRAISED_AT)  # the file as before: no dates
        label = _printable(str(body.get("source") or ""), fallback="")
        ignored = sorted(_printable(str(k), 40) for k in unknown)[:MAX_UNKNOWN_SHOWN]
        return frame.to_csv(index=False).encode(), label, "JSON request", ignored
    raise HTTPException(
        415, "send application/json ({'diamonds': [...]}) or multipart/form-data with a CSV 'file'"
    )


def _printable(text: str, limit: int = 200, fallback: str = "api") -> str:
    """A client's label as stored: printable characters only (no NUL, which PostgreSQL refuses)."""
    return "".join(c for c in text if c.isprintable())[:limit] or fallback


def _ingest_bytes(content: bytes, source: str, name: str, actor: str) -> dict[str, Any]:
    """Ingest the upload; its audit row (`upload` by `actor`) commits with the batch."""
    from appraiser import data, ingest

    with tempfile.TemporaryDirectory(prefix="appraiser-upload-") as folder:
        path = Path(folder) / "upload.csv"
        path.write_bytes(content)
        try:
            report = ingest.ingest_file(
                path, source=source, name=name[:200], actor=actor, action="upload"
            )
        except data.DataError as exc:
            raise HTTPException(422, str(exc).replace(str(path), "the upload")) from exc
    rejected = []
    if report.rows_rejected and report.batch_id is not None:
        rows = ingest.rejected(report.batch_id).head(100)
        rejected = json.loads(rows.to_json(orient="records", date_format="iso"))
    return {
        "batch_id": report.batch_id,
        "already_ingested": report.already_ingested,
        "rows_read": report.rows_read,
        "rows_accepted": report.rows_accepted,
        "rows_rejected": report.rows_rejected,
        "rejected_by_reason": dict(report.reasons),
        "rejected_rows": rejected,
        "held": report.held,
        "screening": report.screening.to_dict() if report.screening else None,
        "message": report.summary(),
    }
