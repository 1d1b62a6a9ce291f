"""A day of the store as Parquet files, and the retention rule for served appraisals.

`export_day` writes one UTC day's appraisals and the expert prices reviewed that day to any fsspec
URL (a folder, `gs://bucket/prefix` with gcsfs installed, `memory://` in tests), one Parquet file
per table under `appraisals/day=YYYY-MM-DD/` and `feedback/day=YYYY-MM-DD/`: the layout BigQuery
and Spark read as a date-partitioned table. Each feedback row carries its stone's nine features,
so the archive holds every labelled stone whole. With a BigQuery dataset named
(APPRAISER_BIGQUERY_DATASET), files written to gs:// are then loaded into its tables
`appraisals` and `feedback`, one ingestion-time partition per day, replaced on a re-export (load
jobs are free; the dataset's partition expiry is the warehouse's retention).

`prune_appraisals` deletes served appraisals older than a window, never one that an expert priced:
the feedback table points at its appraisal, and training reads a labelled stone from that
appraisal's `input` (docs/cloud-architecture.md, section 13). Run it after the export of the days
it removes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import delete, func, select

from appraiser import audit, clock, schema, store
from appraiser.store import Appraisal, Feedback

REVIEWED = ("approved", "rejected")


@dataclass
class Exported:
    day: date
    appraisals: int
    feedback: int
    files: list[str]
    loaded: list[str] | None = None  # BigQuery partitions written, when a dataset was named


@dataclass
class Pruned:
    cutoff: datetime
    deleted: int
    kept_labelled: int  # appraisals past the window kept because an expert priced them
    dry_run: bool


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


def _stone_columns(inputs: list[str]) -> dict[str, pa.Array]:
    """The nine features as typed columns (the same types on an empty day: a warehouse merges
    the days' files by schema)."""
    stones = [json.loads(text) for text in inputs]
    return {
        name: pa.array(
            [stone.get(name) for stone in stones],
            pa.string() if name in schema.GRADES else pa.float64(),
        )
        for name in schema.FEATURES
    }


def _write(table: pa.Table, target: str, kind: str, day: date) -> str:
    import fsspec

    path = f"{target.rstrip('/')}/{kind}/day={day.isoformat()}/{kind}.parquet"
    fs, inner = fsspec.core.url_to_fs(path)
    fs.makedirs(inner.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(inner, "wb") as out:
        pq.write_table(table, out)
    return path


def export_day(
    day: date,
    target: str,
    url: str | None = None,
    bigquery: str | None = None,
    *,
    actor: str | None = None,
) -> Exported:
    """Write `day`'s appraisals and the feedback reviewed that day (UTC) under `target`, then
    load them into the BigQuery dataset `bigquery` (PROJECT.DATASET) when one is named; audited
    as `export` by `actor` (default: the command line's user) once the files are written."""
    if bigquery and not target.startswith("gs://"):
        raise ValueError(f"BigQuery loads files from gs:// only; the export goes to {target}")
    start, end = day_bounds(day)
    store.ready(url)
    with store.session(url) as s:
        served = s.execute(
            select(
                Appraisal.uid,
                Appraisal.created_at,
                Appraisal.input,
                Appraisal.price,
                Appraisal.price_low,
                Appraisal.price_high,
                Appraisal.model_version,
                Appraisal.latency_ms,
                Appraisal.warnings,
            )
            .where(Appraisal.created_at >= start, Appraisal.created_at < end)
            .order_by(Appraisal.id)
        ).all()
        reviewed = s.execute(
            select(
                Appraisal.uid,
                Appraisal.input,
                Feedback.price,
                Feedback.status,
                Feedback.actor,
                Feedback.stone_key,
                Feedback.flag,
                Feedback.created_at,
                Feedback.reviewed_by,
                Feedback.reviewed_at,
                Feedback.review_note,
            )
            .join(Appraisal, Feedback.appraisal_id == Appraisal.id)
            .where(
                Feedback.status.in_(REVIEWED),
                Feedback.reviewed_at >= start,
                Feedback.reviewed_at < end,
            )
            .order_by(Feedback.id)
        ).all()
    when = pa.timestamp("us", tz="UTC")
    appraisals = pa.table(
        {
            "id": pa.array([r.uid for r in served], pa.string()),
            "created_at": pa.array([clock.utc(r.created_at) for r in served], when),
            **_stone_columns([r.input for r in served]),
            "price": pa.array([r.price for r in served], pa.float64()),
            "price_low": pa.array([r.price_low for r in served], pa.float64()),
            "price_high": pa.array([r.price_high for r in served], pa.float64()),
            "model_version": pa.array([r.model_version for r in served], pa.string()),
            "latency_ms": pa.array([r.latency_ms for r in served], pa.float64()),
            "warnings": pa.array([r.warnings or "[]" for r in served], pa.string()),
        }
    )
    feedback = pa.table(
        {
            "appraisal_id": pa.array([r.uid for r in reviewed], pa.string()),
            **_stone_columns([r.input for r in reviewed]),
            "expert_price": pa.array([r.price for r in reviewed], pa.float64()),
            "status": pa.array([r.status for r in reviewed], pa.string()),
            "actor": pa.array([r.actor for r in reviewed], pa.string()),
            "stone_key": pa.array([r.stone_key for r in reviewed], pa.string()),
            "flag": pa.array([r.flag for r in reviewed], pa.string()),
            "sent_at": pa.array([clock.utc(r.created_at) for r in reviewed], when),
            "reviewed_by": pa.array([r.reviewed_by for r in reviewed], pa.string()),
            "reviewed_at": pa.array([clock.utc(r.reviewed_at) for r in reviewed], when),
            "review_note": pa.array([r.review_note for r in reviewed], pa.string()),
        }
    )
    files = [
        _write(appraisals, target, "appraisals", day),
        _write(feedback, target, "feedback", day),
    ]
    loaded = load_into_bigquery(files, day, bigquery) if bigquery else None
    with store.session(url) as s, s.begin():
        audit.record(
            actor or audit.cli_actor(),
            "export",
            session=s,
            day=day.isoformat(),
            appraisals=len(served),
            feedback=len(reviewed),
            files=files,
            loaded=loaded,
        )
    return Exported(day, len(served), len(reviewed), files, loaded)


def load_into_bigquery(files: list[str], day: date, dataset: str) -> list[str]:
    """Load each exported file into `dataset.<kind>$YYYYMMDD`, replacing that day's partition,
    so exporting a day twice leaves it once. Returns the partitions written."""
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import bigquery

    config = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.PARQUET,
        write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
        time_partitioning=bigquery.TimePartitioning(type_=bigquery.TimePartitioningType.DAY),
        # a column added to the export (a migration) joins the table instead of failing the load
        schema_update_options=[bigquery.SchemaUpdateOption.ALLOW_FIELD_ADDITION],
    )
    written = []
    client = None
    for uri in files:
        kind = uri.rsplit("/", 3)[-3]  # .../<kind>/day=YYYY-MM-DD/<kind>.parquet
        partition = f"{dataset}.{kind}${day:%Y%m%d}"
        try:
            client = client or bigquery.Client(project=dataset.split(".", 1)[0])
            client.load_table_from_uri(uri, partition, job_config=config).result()
        except (GoogleAPIError, DefaultCredentialsError) as exc:  # the CLI reports OSError
            raise OSError(f"BigQuery load of {uri} into {partition}: {exc}") from exc
        written.append(partition)
    return written


def prune_appraisals(
    older_than_days: int,
    url: str | None = None,
    *,
    dry_run: bool = False,
    actor: str | None = None,
) -> Pruned:
    """Delete appraisals served more than `older_than_days` days ago, except those an expert
    priced (any feedback, whatever its status: the stone is the label's other half). The
    deletion is audited as `retention` by `actor` (default: the command line's user) in its
    transaction; the audit trail itself is never pruned."""
    if older_than_days < 1:
        raise ValueError("older_than_days: keep at least one day")
    cutoff = clock.now() - timedelta(days=older_than_days)
    labelled = select(Feedback.appraisal_id)
    old = Appraisal.created_at < cutoff
    store.ready(url)
    with store.session(url) as s, s.begin():
        deletable = s.scalar(
            select(func.count()).select_from(Appraisal).where(old, Appraisal.id.not_in(labelled))
        )
        kept = s.scalar(
            select(func.count()).select_from(Appraisal).where(old, Appraisal.id.in_(labelled))
        )
        if not dry_run:
            audit.record(
                actor or audit.cli_actor(),
                "retention",
                session=s,
                older_than_days=older_than_days,
                cutoff=cutoff.isoformat(),
                deleted=int(deletable or 0),
                kept_labelled=int(kept or 0),
            )
            s.execute(delete(Appraisal).where(old, Appraisal.id.not_in(labelled)))
    return Pruned(cutoff, int(deletable or 0), int(kept or 0), dry_run)
