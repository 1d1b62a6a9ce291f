"""One picture of the running system, from what the store already keeps.

`overview` gathers, for the admin page (`GET /v1/monitoring`) and `appraiser monitor`:

- appraisals per hour over the window, by version, and the pricing time stored with each
  (`appraisals` table; the API adds request latency from its Prometheus histogram);
- the champion's history: every promotion and rollback, who and why (`promotions`);
- its accuracy per version: from approved expert prices (`feedback` joined to the appraisal
  they priced: MAPE, share inside the 90% range, median shift) and from each newly labelled batch
  (the label-shift guard's screening, `evaluations` kind=batch), plus the sealed set's;
- drift per feature, batch by batch (kept with each batch's screening, see screening.py);
- rejected rows by reason over the window (`rejected_rows`, reasons without their values);
- batches held for review (`batches`).

Reads only; every figure is JSON-ready (times as ISO 8601 UTC, percentages in percent).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select

from appraiser import clock, schema, store

DEFAULT_HOURS = 24
MAX_HOURS = 24 * 90
LATENCY_SAMPLE = 100_000  # the newest appraisals of the window whose pricing time is summarised
HISTORY = 100  # champion moves shown (the newest)
BATCHES = 60  # labelled batches shown in accuracy and drift (the newest)
NOMINAL_COVERAGE = 90.0  # the ranges' promise, in percent

_VALUE = re.compile(r"\s*\([^()]*\)$")  # "carat: not a number ('heavy')" -> "carat: not a number"


def _iso(moment: datetime | None) -> str | None:
    found = clock.utc(moment)
    return found.isoformat() if found is not None else None


def _round(value: float | None, digits: int = 3) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def percentiles(values: np.ndarray, qs: tuple[int, ...] = (50, 90, 99)) -> dict[str, float | None]:
    """p50/p90/p99 (keys `p50`...) of the values, None each when there are none."""
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return {f"p{q}": None for q in qs}
    found = np.percentile(values, qs)
    return {f"p{q}": _round(float(v)) for q, v in zip(qs, found, strict=True)}


def reason_kind(reason: str) -> str:
    """A rejection reason without the value that caused it, so like reasons count together."""
    return _VALUE.sub("", reason.strip()) or reason.strip()


# --- appraisals -----------------------------------------------------------------------------


def _hour_floor(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _hour_column(engine: Engine) -> Any:
    """The appraisal's hour (UTC), computed by the database (text on SQLite)."""
    created = store.Appraisal.created_at
    if engine.dialect.name == "postgresql":
        return func.date_trunc("hour", func.timezone("UTC", created))
    return func.strftime("%Y-%m-%d %H:00:00", created)


def _as_hour(value: Any) -> datetime:
    if isinstance(value, datetime):
        return _hour_floor(clock.utc(value))
    return clock.utc(datetime.fromisoformat(str(value)))


def appraisals(engine: Engine, since: datetime, now: datetime) -> dict[str, Any]:
    """Appraisals per hour since `since` (every hour listed, zero or not), by model version, and
    the pricing time stored with each (per stone, server side)."""
    table = store.Appraisal
    window = table.created_at >= since
    hour = _hour_column(engine)
    with engine.connect() as conn:
        per_hour = conn.execute(
            select(hour.label("hour"), func.count()).where(window).group_by(hour)
        ).all()
        by_version = conn.execute(
            select(table.model_version, func.count()).where(window).group_by(table.model_version)
        ).all()
        latency = conn.execute(
            select(table.latency_ms)
            .where(window, table.latency_ms.is_not(None))
            .order_by(table.id.desc())
            .limit(LATENCY_SAMPLE)
        ).scalars()
        pricing = np.array([v for v in latency if v is not None], dtype=float)
    counts: Counter[datetime] = Counter()
    for moment, n in per_hour:
        counts[_as_hour(moment)] += int(n)
    hours = []
    slot = _hour_floor(since)
    while slot <= now:
        hours.append({"hour": _iso(slot), "count": counts.get(slot, 0)})
        slot += timedelta(hours=1)
    return {
        "total": sum(counts.values()),
        "per_hour": hours,
        "by_version": sorted(
            ({"version": v, "count": int(n)} for v, n in by_version),
            key=lambda r: (r["version"] is None, str(r["version"])),
        ),
        "pricing_ms": {**percentiles(pricing), "n": len(pricing)},
    }


# --- the champion ---------------------------------------------------------------------------


def champion_history(engine: Engine) -> list[dict[str, Any]]:
    """The champion's moves, oldest first (the newest HISTORY): promotions by the gate or a
    person, and rollbacks, with who and why."""
    table = store.Promotion
    with engine.connect() as conn:
        rows = conn.execute(select(table).order_by(table.id.desc()).limit(HISTORY)).all()
    return [
        {
            "at": _iso(r.created_at),
            "kind": r.kind,
            "version": r.version,
            "previous": r.previous,
            "actor": r.actor,
            "reason": r.reason,
        }
        for r in reversed(rows)
    ]


# --- accuracy -------------------------------------------------------------------------------


def feedback_accuracy(engine: Engine) -> list[dict[str, Any]]:
    """Per model version, its appraisals against the expert prices an admin approved for them:
    MAPE (of the expert's price), share of expert prices inside the 90% range, median shift
    (log of expert over model, in percent), how many."""
    query = (
        select(
            store.Appraisal.model_version,
            store.Appraisal.price,
            store.Appraisal.price_low,
            store.Appraisal.price_high,
            store.Feedback.price,
            store.Feedback.reviewed_at,
        )
        .join(store.Feedback, store.Feedback.appraisal_id == store.Appraisal.id)
        .where(store.Feedback.status == "approved")
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    grouped: dict[str | None, list[tuple[Any, ...]]] = defaultdict(list)
    for row in rows:
        grouped[row[0]].append(tuple(row))
    out = []
    for version, items in grouped.items():
        model = np.array([r[1] for r in items], dtype=float)
        expert = np.array([r[4] for r in items], dtype=float)
        ranged = [r for r in items if r[2] is not None and r[3] is not None]
        inside = [r[2] <= r[4] <= r[3] for r in ranged]
        reviewed = [moment for r in items if (moment := clock.utc(r[5])) is not None]
        latest = max(reviewed, default=None)
        out.append(
            {
                "version": version,
                "n": len(items),
                "mape": _round(float(100 * np.mean(np.abs(model - expert) / expert))),
                "coverage": _round(100 * float(np.mean(inside))) if inside else None,
                "with_range": len(ranged),
                "bias": _round(float(100 * np.expm1(np.median(np.log(expert / model))))),
                "last_reviewed": _iso(latest),
            }
        )
    return sorted(out, key=_version_order)


def _version_order(row: dict[str, Any]) -> tuple[int, str]:
    version = row.get("version")
    text = "" if version is None else str(version)
    return (int(text) if text.isdigit() else -1, text)


def evaluations(engine: Engine) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(labelled batches, sealed measures), oldest first: the champion's MAPE, range coverage
    and median shift on each newly labelled batch (as screened at ingestion, with the batch's
    status and its drift per feature), and on the sealed stones after each promotion."""
    table = store.Evaluation
    with engine.connect() as conn:
        batch_rows = conn.execute(
            select(table, store.Batch.status, store.Batch.file_name)
            .join(store.Batch, store.Batch.id == table.batch_id, isouter=True)
            .where(table.kind == "batch")
            .order_by(table.id.desc())
            .limit(BATCHES)
        ).all()
        sealed_rows = conn.execute(
            select(table).where(table.kind == "sealed").order_by(table.id.desc()).limit(BATCHES)
        ).all()
    batches = []
    for r in reversed(batch_rows):
        details = json.loads(r.details or "{}")
        batches.append(
            {
                "batch_id": r.batch_id,
                "at": _iso(r.created_at),
                "version": r.model_version,
                "stones": r.stones,
                # stones the champion trained on, left out of these figures (screening.py)
                "excluded": int(details.get("excluded") or 0),
                "mape": _round(r.mape),
                "coverage": _round(r.coverage),
                "bias": _round(100 * math.expm1(r.bias)) if r.bias is not None else None,
                "status": r.status,
                "file_name": r.file_name,
                "held": bool(details.get("held")),
                "worse": list(details.get("worse") or []),
                "drift": list(details.get("drift") or []),
            }
        )
    sealed = [
        {
            "at": _iso(r.created_at),
            "version": r.model_version,
            "stones": r.stones,
            "mape": _round(r.mape),
            "coverage": _round(r.coverage),
        }
        for r in reversed(sealed_rows)
    ]
    return batches, sealed


def batch_accuracy_by_version(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per champion version, its screenings pooled (weighted by stones), batches held or dropped
    for their prices left out (their labels, not the champion, are in doubt)."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for b in batches:
        if b["stones"] and b["mape"] is not None and b["status"] not in ("held", "dropped"):
            grouped[b["version"]].append(b)
    out = []
    for version, items in grouped.items():
        weights = np.array([b["stones"] for b in items], dtype=float)
        covered = [b for b in items if b["coverage"] is not None]
        cover_weights = np.array([b["stones"] for b in covered], dtype=float)
        out.append(
            {
                "version": version,
                "batches": len(items),
                "stones": int(weights.sum()),
                "mape": _round(float(np.average([b["mape"] for b in items], weights=weights))),
                "coverage": _round(
                    float(np.average([b["coverage"] for b in covered], weights=cover_weights))
                )
                if covered
                else None,
            }
        )
    return sorted(out, key=_version_order)


def drift_series(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Drift per feature over time: for each screened batch (oldest first) each feature's
    effect (KS statistic for numbers, total variation distance for grades), p-value and flag."""
    from appraiser import drift

    series = []
    for b in batches:
        if not b["drift"]:
            continue
        series.append(
            {
                "batch_id": b["batch_id"],
                "at": b["at"],
                "version": b["version"],
                "stones": b["stones"],
                "judged": bool(b["stones"] and b["stones"] >= drift.MIN_STONES),
                "features": {
                    str(f["feature"]): {
                        "test": f.get("test"),
                        "effect": _round(f.get("effect"), 4),
                        "p_value": f.get("p_value"),
                        "drift": bool(f.get("drift")),
                    }
                    for f in b["drift"]
                },
            }
        )
    return {
        "features": list(schema.FEATURES),
        "thresholds": {"numbers": drift.KS_EFFECT, "grades": drift.TVD_EFFECT},
        "batches": series,
    }


# --- data -----------------------------------------------------------------------------------


def rejected_by_reason(engine: Engine, since: datetime) -> dict[str, Any]:
    """Rows refused in batches received since `since`, by reason (a row may have several)."""
    query = (
        select(store.RejectedRow.reasons)
        .join(store.Batch, store.Batch.id == store.RejectedRow.batch_id)
        .where(store.Batch.received_at >= since)
    )
    reasons: Counter[str] = Counter()
    rows = 0
    with engine.connect() as conn:
        for (text,) in conn.execute(query):
            rows += 1
            reasons.update({reason_kind(r) for r in str(text).split("; ") if r.strip()})
    return {
        "rows": rows,
        "by_reason": [
            {"reason": r, "rows": n}
            for r, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
    }


def held_batches(engine: Engine) -> list[dict[str, Any]]:
    """Batches the label-shift guard held, newest first: they train nothing until an admin
    releases (or drops) them."""
    from appraiser import batches

    return [
        {
            "batch_id": b["id"],
            "source": b["source"],
            "file_name": b["file_name"],
            "received_at": _iso(b["received_at"]),
            "rows_accepted": b["rows_accepted"],
            "reason": b["status_reason"],
            "summary": (b["screening"] or {}).get("summary"),
        }
        for b in batches.listed(status="held", engine=engine)
    ]


# --- all of it ------------------------------------------------------------------------------


def overview(
    since_hours: int = DEFAULT_HOURS,
    *,
    champion: str | None = None,
    now: datetime | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    """Every figure of the monitoring view. `since_hours` bounds appraisals and rejected rows;
    histories are the newest entries whatever their age. `champion`: the version being served,
    when the caller knows it (else the last move on record)."""
    hours = max(1, min(int(since_hours), MAX_HOURS))
    moment = clock.utc(now or clock.now())
    since = _hour_floor(moment) - timedelta(hours=hours - 1)
    engine = store.ready(url)
    history = champion_history(engine)
    batches, sealed = evaluations(engine)
    current = champion or (history[-1]["version"] if history else None)
    return {
        "generated_at": _iso(moment),
        "since": _iso(since),
        "hours": hours,
        "champion": current,
        "appraisals": appraisals(engine, since, moment),
        "requests": None,  # the API fills in its request latency (see routers/monitoring.py)
        "champion_history": history,
        "accuracy": {
            "nominal_coverage": NOMINAL_COVERAGE,
            "feedback": feedback_accuracy(engine),
            "batches": [{k: v for k, v in b.items() if k != "drift"} for b in batches],
            "batches_by_version": batch_accuracy_by_version(batches),
            "sealed": sealed,
        },
        "drift": drift_series(batches),
        "rejected": rejected_by_reason(engine, since),
        "held_batches": held_batches(engine),
    }


def summary(figures: dict[str, Any]) -> list[str]:
    """A few lines for people (`appraiser monitor`)."""
    lines = []
    a = figures["appraisals"]
    busiest = max(a["per_hour"], key=lambda h: h["count"], default=None)
    p = a["pricing_ms"]
    said = f"Appraisals in the last {figures['hours']} h: {a['total']:,}"
    if busiest and a["total"]:
        said += f" (busiest hour {busiest['hour']}: {busiest['count']:,})"
    if p["n"]:
        said += f"; pricing p50 {p['p50']} ms, p99 {p['p99']} ms per stone"
    lines.append(said)
    history = figures["champion_history"]
    lines.append(f"Champion: v{figures['champion']}" if figures["champion"] else "No champion yet")
    for move in history[-5:]:
        lines.append(
            f"  {move['at']}  {move['kind']:<8} v{move['version']} (from "
            f"{'v' + move['previous'] if move['previous'] else 'none'}) by {move['actor']}: "
            f"{move['reason']}"
        )
    accuracy = figures["accuracy"]
    if accuracy["feedback"]:
        for row in accuracy["feedback"]:
            coverage = "" if row["coverage"] is None else f", {row['coverage']}% in range"
            lines.append(
                f"Expert prices, v{row['version']}: {row['n']} approved, MAPE {row['mape']}%"
                f"{coverage}"
            )
    else:
        lines.append("Expert prices: no reviewed expert prices yet")
    if accuracy["batches_by_version"]:
        for row in accuracy["batches_by_version"]:
            coverage = "" if row["coverage"] is None else f", {row['coverage']}% in range"
            lines.append(
                f"Labelled batches, v{row['version']}: {row['batches']} batches, "
                f"{row['stones']:,} stones, MAPE {row['mape']}%{coverage}"
            )
    else:
        lines.append("Labelled batches: none screened by a champion yet")
    drifting = [
        f"batch {b['batch_id']}: {', '.join(f for f, v in b['features'].items() if v['drift'])}"
        for b in figures["drift"]["batches"]
        if any(v["drift"] for v in b["features"].values())
    ]
    lines.append("Drift: " + ("; ".join(drifting[-5:]) if drifting else "none flagged"))
    rejected = figures["rejected"]
    top = ", ".join(f"{r['reason']} ({r['rows']:,})" for r in rejected["by_reason"][:3])
    lines.append(f"Rejected rows: {rejected['rows']:,}" + (f"; most: {top}" if top else ""))
    held = figures["held_batches"]
    lines.append(
        "Held batches: "
        + (", ".join(str(b["batch_id"]) for b in held) if held else "none waiting for review")
    )
    return lines
