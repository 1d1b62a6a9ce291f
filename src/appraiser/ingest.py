"""Ingestion: validate a file of priced stones and keep it in the store, atomically and once.

A file is identified by the sha256 of its bytes, so the same file twice adds nothing. Rows are
validated with the foundation's rules (`appraiser.data`) plus one more: a stone already in the store
is a duplicate. The batch, its accepted stones and its rejected rows are written in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from appraiser import audit, conflicts, data, schema, store
from appraiser.screening import Screening
from appraiser.store import Batch, RejectedRow

logger = logging.getLogger(__name__)

DUPLICATE_OF_STORE = "duplicate of a stone already in the store (batch {batch})"


@dataclass
class IngestReport:
    """What ingesting one file did: the batch it became (None when already ingested) and counts."""

    path: str
    file_hash: str
    batch_id: int | None = None
    rows_read: int = 0
    rows_accepted: int = 0
    rows_rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    already_ingested: bool = False
    duplicates_of_store: int = 0
    conflicts: int = 0  # stones known at a materially different price (conflicts.py), held
    conflict_batch: int | None = None  # the held batch keeping them
    seconds: float = 0.0
    screening: Screening | None = None  # the champion's errors on the batch (None: no champion)
    not_screened: str | None = None  # why the champion could not screen it (then it is held)
    released: list[int] = field(default_factory=list)  # held batches this one corroborated

    @property
    def hold_reasons(self) -> list[str]:
        """Why the batch waits for an admin (empty: it does not)."""
        reasons = list(self.screening.held) if self.screening is not None else []
        if self.not_screened:
            reasons.append(self.not_screened)
        return reasons

    @property
    def held(self) -> bool:
        """The batch waits for an admin: its prices disagree with everything known, or the
        champion could not check them."""
        return bool(self.hold_reasons)

    def summary(self) -> str:
        """One line for people: the counts, or that the file was already in the store."""
        if self.already_ingested:
            return f"{self.path}: already ingested (batch {self.batch_id}), nothing added"
        said = (
            f"{self.path}: batch {self.batch_id}, {self.rows_read:,} rows read, "
            f"{self.rows_accepted:,} accepted, {self.rows_rejected:,} rejected"
        )
        if self.held:
            said += (
                f"; HELD for review, not used for training until an admin releases it "
                f"(`appraiser batches release {self.batch_id}`)"
            )
        if self.conflicts:
            said += (
                f"; {self.conflicts:,} stones at prices conflicting with known ones HELD for "
                f"review as batch {self.conflict_batch}"
            )
        if self.released:
            shown = ", ".join(str(b) for b in self.released)
            said += f"; the market it shows released held batch(es) {shown}"
        return said


def file_hash(path: Path) -> str:
    """sha256 of the file's bytes, read in chunks (the batch's identity)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _batch_with_hash(engine: Engine, digest: str) -> int | None:
    with Session(engine) as s:
        return s.scalar(select(Batch.id).where(Batch.file_hash == digest))


def accepted_stones(
    engine: Engine | None = None, statuses: tuple[str, ...] | None = ("accepted",)
) -> pd.DataFrame:
    """The accepted stones of the store's batches with one of `statuses` (default: batches in
    use, not held or dropped; None: every batch): the 10 columns plus batch_id and line, by id."""
    engine = engine or store.ready()
    table = store.Base.metadata.tables["diamonds"]
    names = ("id", "batch_id", "line", *schema.COLUMNS)
    query = select(*(table.c[n] for n in names)).order_by(table.c.id)
    if statuses is not None:
        batches = store.Base.metadata.tables["batches"]
        query = query.where(
            table.c.batch_id.in_(select(batches.c.id).where(batches.c.status.in_(statuses)))
        )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    # column-wise construction: several times faster than a frame built from Row objects
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    frame = pd.DataFrame({n: list(c) for n, c in zip(names, columns, strict=True)})
    for name in schema.NUMERIC_COLUMNS:
        frame[name] = frame[name].astype(float)
    for name in ("id", "batch_id", "line"):
        frame[name] = frame[name].astype("int64")
    return frame


def rejected(batch_id: int | None = None, engine: Engine | None = None) -> pd.DataFrame:
    """Rejected rows (of one batch, or all): batch_id, line, reasons, then the raw values."""
    engine = engine or store.ready()
    query = select(RejectedRow.batch_id, RejectedRow.line, RejectedRow.reasons, RejectedRow.raw)
    if batch_id is not None:
        query = query.where(RejectedRow.batch_id == batch_id)
    query = query.order_by(RejectedRow.id)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    head = pd.DataFrame(
        [(r.batch_id, r.line, r.reasons) for r in rows], columns=["batch_id", "line", "reasons"]
    )
    raw = pd.DataFrame([json.loads(r.raw) for r in rows], index=head.index)
    return pd.concat([head, raw], axis=1)


def _duplicates_of_store(clean: pd.DataFrame, stored: pd.DataFrame) -> pd.Series:
    """For each clean row, the batch already holding the same stone (all 10 columns), else NA."""
    if stored.empty or clean.empty:
        return pd.Series(pd.NA, index=clean.index, dtype="Int64")
    keys = list(schema.COLUMNS)
    first = stored.drop_duplicates(keys)[[*keys, "batch_id"]]
    merged = clean[keys].merge(first, on=keys, how="left", validate="many_to_one")
    return pd.Series(merged["batch_id"].to_numpy(), index=clean.index).astype("Int64")


def _raw_json(rows: pd.DataFrame) -> list[str]:
    """Each row's raw values as a JSON object (missing values become null), vectorised."""
    if rows.empty:
        return [json.dumps({}) for _ in range(len(rows))]
    frame = rows.set_axis([str(c) for c in rows.columns], axis=1).reset_index(drop=True)
    text = frame.to_json(orient="records", lines=True, double_precision=15, date_format="iso")
    return text.rstrip("\n").split("\n")  # JSON escapes newlines inside strings


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts of plain Python values (several times faster than DataFrame.to_dict)."""
    columns = [str(c) for c in frame.columns]
    values = [frame[c].tolist() for c in frame.columns]
    return [dict(zip(columns, row, strict=True)) for row in zip(*values, strict=True)]


def _insert_diamonds(session: Session, rows: list[dict[str, Any]]) -> None:
    """Bulk insert of accepted stones: a Core executemany on the session's connection (the ORM's
    bulk path costs several times more per row)."""
    if rows:
        session.connection().execute(insert(store.Base.metadata.tables["diamonds"]), rows)


def _insert_rejected(session: Session, rows: list[dict[str, Any]]) -> None:
    """Bulk insert of rejected rows (Core executemany, as for the stones)."""
    if rows:
        session.connection().execute(insert(store.Base.metadata.tables["rejected_rows"]), rows)


def _evaluation(screening: Screening, batch_id: int) -> store.Evaluation:
    return store.Evaluation(
        kind="batch",
        model_version=screening.version,
        batch_id=batch_id,
        stones=screening.stones,
        mape=screening.mape,
        coverage=screening.coverage,
        bias=screening.bias,
        details=json.dumps(screening.to_dict(), default=float),
    )


def set_batch_status(
    batch_id: int,
    status: str,
    engine: Engine | None = None,
    *,
    actor: str = "unknown",
    note: str | None = None,
) -> str:
    """`batches.set_status`, then the market level refreshed and held batches screened again
    (market_loop.py): a release adds stones, a drop may take some away. Returns the batch's
    former status."""
    from appraiser import batches, champion, market_loop
    from appraiser.locking import exclusive

    engine = engine or store.ready()
    with exclusive():  # the release and what it sets off, with no retrain in between
        before = batches.set_status(batch_id, status, engine, actor=actor, note=note)
        market_loop.after_acceptance(champion.loaded, engine)
    return before


def is_url(location: str | Path) -> bool:
    """An fsspec URL (gs://, s3://, memory://...) rather than a local path."""
    return "://" in str(location) and not str(location).startswith("file://")


def ingest(
    location: str | Path, source: str = "file", *, url: str | None = None, actor: str | None = None
) -> IngestReport:
    """Ingest a local file or any fsspec URL (gs:// and s3:// need the `gcs`/`s3` extras)."""
    if not is_url(location):
        return ingest_file(str(location).removeprefix("file://"), source, url=url, actor=actor)
    import fsspec

    name = str(location)
    suffix = Path(name.split("?")[0]).suffix
    with tempfile.TemporaryDirectory(prefix="appraiser-ingest-") as folder:
        local = Path(folder) / f"download{suffix}"
        try:
            with fsspec.open(name, "rb") as remote, local.open("wb") as copy:
                shutil.copyfileobj(remote, copy)
        except (FileNotFoundError, ValueError, ImportError) as exc:
            raise data.DataError(f"{name}: cannot be read ({exc})") from exc
        return ingest_file(local, source, url=url, name=name, actor=actor)


def ingest_query(
    query: str,
    database: str,
    source: str = "sql",
    *,
    url: str | None = None,
    actor: str | None = None,
) -> IngestReport:
    """Ingest the result of a SQL query on any SQLAlchemy URL (BigQuery through its dialect)."""
    from sqlalchemy import create_engine, text

    try:
        with create_engine(database).connect() as conn:
            frame = pd.read_sql(text(query), conn)
    except Exception as exc:  # drivers raise their own types; the message names the problem
        raise data.DataError(f"query on {database.split('@')[-1]} failed: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="appraiser-ingest-") as folder:
        local = Path(folder) / "query.parquet"
        frame.astype(str).where(frame.notna(), None).to_parquet(local, index=False)
        return ingest_file(
            local, source, url=url, name=f"{database.split('@')[-1]}: {query}", actor=actor
        )


def ingest_file(
    path: str | Path,
    source: str = "file",
    *,
    url: str | None = None,
    name: str | None = None,
    screen: bool = True,
    actor: str | None = None,
    action: str = "ingest",
) -> IngestReport:
    """Validate a CSV/Parquet file of priced stones and store it as one batch, atomically.

    With `screen` (the default) the champion prices the accepted stones first; a batch whose
    prices disagree with everything known is stored `held` (see screening.py). The batch is
    audited as `action` by `actor` (default: the command line's user) in its own transaction.

    Returns `already_ingested=True` (adding nothing) when a file with the same bytes was ingested
    before. Raises DataError, storing nothing, when the file cannot be used as a whole (empty, a
    required column missing, wrong delimiter, not a table at all).
    """
    started = time.perf_counter()
    path = data.usable_file(path)
    engine = store.ready(url)
    digest = file_hash(path)
    shown = name or str(path)
    report = IngestReport(path=shown, file_hash=digest)

    existing = _batch_with_hash(engine, digest)
    if existing is not None:
        report.batch_id, report.already_ingested = existing, True
        return report

    raw = data.read_table(path)
    result = data.validate(raw, labelled=True, source=shown)
    # a duplicate's raw values are kept as validate keeps a bad row's: the schema's columns only
    # (a sender's own `line`, `batch_id` or `reasons` column would collide with ours)
    kept = (*schema.COLUMNS, *schema.OPTIONAL_COLUMNS)
    raw = raw[[c for c in raw.columns if c in kept]].reset_index(drop=True)
    bad_positions = result.rejected["line"].to_numpy(dtype=np.int64) - 2
    keep = np.ones(len(raw), dtype=bool)
    keep[bad_positions] = False
    clean = result.clean.copy()
    clean["line"] = np.flatnonzero(keep) + 2
    if result.dates is not None:  # stored as given; a row without one reads its batch's day
        clean[schema.APPRAISED_AT] = result.dates.to_numpy()

    rejected_frame = result.rejected
    reasons = Counter(result.reasons)
    # held batches count (their stones are stored); dropped ones do not (a corrected file may
    # bring the same stones again)
    stored = accepted_stones(engine, statuses=("accepted", "held"))
    dup_batch = _duplicates_of_store(clean, stored)
    is_dup = dup_batch.notna().to_numpy()
    if is_dup.any():
        dup_lines = clean.loc[is_dup, "line"].to_numpy()
        extra = raw.iloc[dup_lines - 2].copy()
        extra.insert(0, "line", dup_lines)
        extra["reasons"] = [DUPLICATE_OF_STORE.format(batch=b) for b in dup_batch[is_dup]]
        reasons.update(extra["reasons"])
        rejected_frame = pd.concat([rejected_frame, extra], ignore_index=True)
        rejected_frame = rejected_frame.sort_values("line", kind="stable", ignore_index=True)
        clean = clean.loc[~is_dup]
    conflicting = conflicts.find(clean, stored)
    in_conflict = conflicting.notna().to_numpy()
    held_rows, clean = clean.loc[in_conflict], clean.loc[~in_conflict]

    report.rows_read = result.total
    report.rows_accepted = len(clean)
    report.conflicts = len(held_rows)
    report.rows_rejected = len(rejected_frame)
    report.reasons = reasons
    report.duplicates_of_store = int(is_dup.sum())
    if screen and len(clean):
        from appraiser import champion
        from appraiser.screening import screen_with_champion

        try:
            report.screening = screen_with_champion(
                clean, champion=champion.loaded, source=source, engine=engine
            )
        except Exception as exc:  # registry down, model files broken: keep the batch, unchecked
            logger.warning("batch from %s not screened: %s", shown, exc)
            report.not_screened = (
                f"not screened: the champion could not be loaded ({type(exc).__name__}: "
                f"{str(exc)[:300]}); release it once the registry is back"
            )

    try:
        with Session(engine) as s, s.begin():
            batch = Batch(
                source=source,
                file_name=name or str(path.resolve()),
                file_hash=digest,
                rows_read=report.rows_read,
                rows_accepted=report.rows_accepted,
                rows_rejected=report.rows_rejected,
                status="held" if report.held else "accepted",
                status_reason="; ".join(report.hold_reasons) or None,
            )
            s.add(batch)
            s.flush()
            audit.record(
                actor or audit.cli_actor(),
                action,
                session=s,
                batch_id=batch.id,
                source=source,
                name=name or str(path.resolve()),
                rows_read=report.rows_read,
                rows_accepted=report.rows_accepted,
                held=report.held,
            )
            if report.screening is not None:
                s.add(_evaluation(report.screening, batch.id))
            stored = ["line", *schema.COLUMNS, *(c for c in schema.OPTIONAL_COLUMNS if c in clean)]
            stones = clean[stored].assign(batch_id=batch.id)
            _insert_diamonds(s, _records(stones))
            raw_columns = rejected_frame.drop(columns=["line", "reasons"])
            _insert_rejected(
                s,
                [
                    {"batch_id": batch.id, "line": int(line), "raw": values, "reasons": why}
                    for line, values, why in zip(
                        rejected_frame["line"],
                        _raw_json(raw_columns),
                        rejected_frame["reasons"],
                        strict=True,
                    )
                ],
            )
            report.batch_id = batch.id
            report.conflict_batch = conflicts.hold(s, held_rows, conflicting[in_conflict], of=batch)
    except IntegrityError:
        # another process ingested the same file meanwhile: its batch stands, ours is rolled back
        existing = _batch_with_hash(engine, digest)
        if existing is None:
            raise
        report = IngestReport(
            path=shown, file_hash=digest, batch_id=existing, already_ingested=True
        )
    if screen and not report.already_ingested and report.rows_accepted and not report.held:
        from appraiser import champion, market_loop

        report.released = market_loop.after_acceptance(champion.loaded, engine)
    report.seconds = time.perf_counter() - started
    return report
