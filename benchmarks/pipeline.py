"""Pipeline benchmark: Francesco's collection -> v1, 5,000 fresh public stones -> v2, both scored.

    python benchmarks/pipeline.py [--data CSV] [--fresh 5000]

1. In a fresh APPRAISER_HOME: ingest Francesco's collection, `retrain` -> v1.
2. Ingest 5,000 public stones that are not in his collection, `retrain` -> v2 (through the gate).
3. Score v1 and v2 on public stones in neither set; print MAPE and the timings.
4. Time one `pipeline run` pass (5,000 more stones through an inbox + retrain, default budget).
5. Ingestion rate: the whole public table into an empty store.
Goals (issue 3): v2's MAPE >= 0.25 points below v1's and <= 6.4%, promoted by the gate; ingestion
>= 50,000 rows/s; one pipeline pass <= 2 minutes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _bench import resolve_data


def fresh_home() -> Path:
    from appraiser.config import settings

    home = Path(tempfile.mkdtemp(prefix="appraiser-pipeline-"))
    os.environ["APPRAISER_HOME"] = str(home)
    os.environ.pop("APPRAISER_DATABASE_URL", None)
    settings.cache_clear()
    return home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--fresh", type=int, default=5000)
    args = parser.parse_args()
    path = resolve_data(args.data, required=True)
    assert path is not None

    from appraiser import data, evaluate, registry, schema
    from appraiser.ingest import ingest_file
    from appraiser.pipeline import retrain, run_pass

    fresh_home()
    public = data.load(None).clean
    mine = data.load(path).clean
    key = list(schema.COLUMNS)
    others = public.merge(mine.drop_duplicates(), on=key, how="left", indicator=True)
    others = others[others["_merge"] == "left_only"].drop(columns="_merge")
    others = others.sample(frac=1.0, random_state=0).reset_index(drop=True)
    fresh, more, test = (
        others.iloc[: args.fresh],
        others.iloc[args.fresh : 2 * args.fresh],
        others.iloc[2 * args.fresh :],
    )
    work = Path(tempfile.mkdtemp(prefix="appraiser-pipeline-files-"))
    fresh.to_csv(work / "fresh.csv", index=False)

    t = time.perf_counter()
    ingest_file(path, source="francesco")
    v1 = retrain(show_progress=False)
    v1_s = time.perf_counter() - t
    t = time.perf_counter()
    ingest_file(work / "fresh.csv", source="new expert")
    v2 = retrain(show_progress=False)
    v2_s = time.perf_counter() - t

    def score(version: str) -> float:
        _, model = registry.load_version(version)
        return evaluate.metrics(test["price"], model.predict(test)["price"])["mape"]

    m1, m2 = score(v1.version), score(v2.version)
    print(
        f"v1 (Francesco's {len(mine):,} stones): MAPE {m1:.2f}% on {len(test):,} unseen public "
        f"stones; retrain {v1_s:.0f} s"
    )
    print(
        f"v2 (+{len(fresh):,} fresh stones): MAPE {m2:.2f}% ; promoted: {v2.champion} "
        f"({v2.decision}); retrain {v2_s:.0f} s"
    )
    print(f"  improvement {m1 - m2:+.2f} points (goal >= 0.25, and v2 <= 6.4%)")

    inbox = work / "inbox"
    inbox.mkdir()
    more.to_csv(inbox / "more.csv", index=False)
    t = time.perf_counter()
    report = run_pass(inbox, show_progress=False)
    pass_s = time.perf_counter() - t
    print(
        f"one pipeline pass ({len(more):,} stones + retrain: {report.retrain_reason}): "
        f"{pass_s:.0f} s (goal <= 120 s)"
    )

    fresh_home()
    t = time.perf_counter()
    done = ingest_file(data.public_table_path(), source="public")
    rate = done.rows_read / (time.perf_counter() - t)
    print(
        f"ingestion: {done.rows_read:,} rows in an empty store at {rate:,.0f} rows/s "
        f"(goal >= 50,000)"
    )


if __name__ == "__main__":
    main()
