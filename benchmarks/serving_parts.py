"""Where a served price's time goes, part by part, before and after each speed-up of issue 12.

    python benchmarks/serving_parts.py [--home DIR] [--repeats N] [--shapes 600x15 322x45 ...]

In this process, on 1,000 real public stones and on one, with the champion of --home (default
.appraiser, the one `make run` trains; see benchmarks/serving.py for training one):
1. the champion's LightGBM forests (price and spread) by LightGBM, then compiled for this machine
   (native.py, lleaves); the largest difference between the two in log price, and how long one
   compile takes;
2. the sparse-region check: the full 10-neighbour k-d tree query against the shortcut
   (ReferenceIndex.sparse), and whether their answers agree;
3. the price model's exact contributions (TreeSHAP) for 64 stones, 8 (a micro-batch of explained
   requests) and one: LightGBM's against the tables of fast/tables.py, their largest
   difference, their size, and how long making and checking them takes; then the tables as each
   tree's own groups against the tables served (consecutive groups joined: `_packed`); with
   --shapes, only this part, on LightGBM members of those shapes (trees x leaves) fitted on the
   public stones with the candidate's defaults otherwise, in place of the champion's;
4. storing 1,000 appraisal rows in a fresh SQLite store: SQLAlchemy's executemany against
   store.bulk_insert;
5. one batch of 1,000 stones through the steps of POST /v1/appraisals/batch in process (no HTTP,
   the storing in 4), beside the bare endpoint's /batch steps (its booster is the one
   benchmarks/serving.py saves in the home as bare-xgboost-500.json).
6. the XGBoost trees of a small call (issue 22), the champion's XGBoost member or, when it has
   none, one fitted with the candidate's defaults on the 1,000 stones: for 1 and 4 stones,
   XGBoost against treelite's GTIL (boosters.SMALL_CALL_ROWS); for 8, the booster as loaded
   (every core) against the copy set to the threads the call gets (XGBoostMember._for).
Each figure is the median of --repeats runs, the methods interleaved so drift hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _bench import REPO, format_table, use_home

from appraiser import data, explain, features, schema
from appraiser.fast import compiled as native
from appraiser.fast import tables as treeshap


def print_parts(rows: list[tuple[str, float, float]]) -> None:
    """Each part's median before and after, and the speed-up."""
    print(
        format_table(
            ["part", "before ms", "after ms", "speed-up"],
            [[name, f"{a:.2f}", f"{b:.2f}", f"{a / b:.1f}x"] for name, a, b in rows],
            title="Median milliseconds per call",
        )
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=REPO / ".appraiser", help="APPRAISER_HOME")
    parser.add_argument("--repeats", type=int, default=30, help="runs of each method")
    parser.add_argument(
        "--shapes",
        nargs="+",
        metavar="TREESxLEAVES",
        help="only the explanations (item 3), on LightGBM members of these shapes",
    )
    return parser.parse_args(argv)


def medians(methods: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Milliseconds per call, median over `repeats` interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for method in methods.values():
        method()  # warm
    for _ in range(repeats):
        for name, method in methods.items():
            started = time.perf_counter()
            method()
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.shapes:
        shapes_only(args.shapes, args.repeats)
        return
    use_home(args.home.expanduser().resolve())
    from appraiser.predict import Appraiser

    appraiser = Appraiser.for_scoring()  # compiles the forests when this machine has none yet
    model = appraiser.model
    stones = data.load(None).clean.sample(1000, random_state=0)
    matrix = features.encode(stones).to_numpy()
    one = matrix[:1]
    rows: list[tuple[str, float, float]] = []

    for forest in native.forests(model):
        fast, booster = forest.holder.accelerated, forest.booster
        compiled = fast.compiled if fast is not None else None
        if compiled is None:
            print(f"{forest.role}: not compiled on this machine (APPRAISER_NATIVE_TREES?)")
            continue
        gap = np.abs(compiled.predict(matrix, n_jobs=1) - booster.predict(matrix)).max()
        for label, rows_in in (("1,000 stones", matrix), ("1 stone", one)):

            def by_lightgbm(m: np.ndarray = rows_in, b: Any = booster) -> Any:
                return b.predict(m, num_threads=1)

            def by_compiled(m: np.ndarray = rows_in, c: Any = compiled) -> Any:
                return c.predict(m, n_jobs=1)

            took = medians({"lightgbm": by_lightgbm, "compiled": by_compiled}, args.repeats)
            rows.append(
                (f"{forest.role} trees, {label} (1 thread)", took["lightgbm"], took["compiled"])
            )
        print(f"{forest.role}: largest difference in log price {gap:.1e}")
        text = native._model_text(booster)
        with tempfile.TemporaryDirectory() as scratch:  # once more, from scratch, timed
            source = Path(scratch) / "trees.txt"
            source.write_text(text)
            started = time.perf_counter()
            native.compile_forest(source, Path(scratch) / "code.o", Path(scratch) / "code.sha256")
            took_s = time.perf_counter() - started
        print(f"{forest.role}: compiled in {took_s:.1f} s ({native._leaves(text):,} leaves)")

    from appraiser.models import LightGBMMember

    members = [m for m in model.members if isinstance(m, LightGBMMember)]
    rows.extend(explanation_rows(members, matrix, args.repeats))

    index = appraiser.index
    points = index._points(matrix) / index._scale

    def full() -> np.ndarray:
        distances, _ = index._tree.query(points, k=explain.SPARSE_K)
        return np.asarray(distances[:, -1] > index.sparse_distance)

    same = bool((full() == index.sparse(matrix)).all())
    took = medians({"full": full, "shortcut": lambda: index.sparse(matrix)}, args.repeats)
    rows.append(("sparse-region check, 1,000 stones", took["full"], took["shortcut"]))
    print(f"sparse-region check: the shortcut gives the full query's answers: {same}")

    rows.append(("store 1,000 appraisals (SQLite)", *store_rows(args.repeats)))
    rows.extend(xgboost_rows(model, stones, args.repeats))
    print()
    print_parts(rows)
    print()
    steps = batch_steps(appraiser, stones, args.repeats, args.home.expanduser().resolve())
    print(format_table(["step", "ms"], steps, title="One batch of 1,000 stones, in process"))


def explanation_rows(
    members: list[Any], matrix: np.ndarray, repeats: int
) -> list[tuple[str, float, float]]:
    """Item 3 for each LightGBM member: LightGBM's TreeSHAP against the tables."""
    rows = []
    for member in members:
        booster = member._fitted()
        trees = booster.num_trees()
        started = time.perf_counter()
        tables = treeshap.LeafTables.build(booster)
        built_s = time.perf_counter() - started
        if tables is None:
            print(f"{member.kind} ({trees} trees): no TreeSHAP tables (a split they do not model, "
                  f"or past the memory bounds; declined in {built_s:.1f} s)")  # fmt: skip
            continue
        shap_gap = np.abs(tables.contributions(matrix) - booster.predict(matrix, pred_contrib=True))
        megabytes = (tables.table.nbytes + sum(x.nbytes for x in tables.lookup)) / 1e6
        print(
            f"{member.kind} TreeSHAP tables: {trees} trees as {len(tables.lookup[0]):,} groups, "
            f"{len(tables.table):,} rows, {megabytes:.0f} MB; made and checked in {built_s:.1f} s; "
            f"largest difference from LightGBM's contributions on the 1,000 stones "
            f"{shap_gap.max():.1e}"
        )
        # one stone, 8 (a micro-batch of explained requests), and 64 different ones: repeating a
        # call keeps its few table rows in the cache, which 64 stones' rows no longer fit
        for label, rows_in in (("64 stones", matrix[:64]), ("8 stones", matrix[:8]),
                               ("1 stone", matrix[:1])):  # fmt: skip

            def by_treeshap(m: np.ndarray = rows_in, b: Any = booster) -> Any:
                return b.predict(m, pred_contrib=True, num_threads=1)

            def by_tables(m: np.ndarray = rows_in, t: Any = tables) -> Any:
                return t.contributions(m)

            took = medians({"lightgbm": by_treeshap, "tables": by_tables}, repeats)
            rows.append(
                (f"explanation, {label}, {trees} trees (LightGBM's TreeSHAP, 1 thread)",
                 took["lightgbm"], took["tables"])
            )  # fmt: skip
        rows.extend(packing_rows(booster, tables, matrix, repeats))
    return rows


def packing_rows(
    booster: Any, tables: Any, matrix: np.ndarray, repeats: int
) -> list[tuple[str, float, float]]:
    """The tables as each tree's own groups (before tables._packed joined them) against the
    tables served: what the joining pays for."""
    dump = booster.dump_model()
    alone = []
    for tree in dump["tree_info"]:
        leaves = treeshap._leaves(tree)
        assert leaves is not None  # the tables were made: they model every split
        alone += treeshap._groups(leaves)[1]
    unpacked = treeshap.LeafTables(alone, int(dump["max_feature_idx"]) + 1)
    gap = np.abs(unpacked.contributions(matrix) - tables.contributions(matrix)).max()
    print(
        f"  unpacked: {len(alone):,} groups, {len(unpacked.table):,} rows; packed: "
        f"{len(tables.lookup[0]):,} groups, {len(tables.table):,} rows; "
        f"largest difference {gap:.1e}"
    )
    rows = []
    for label, rows_in in (("8 stones", matrix[:8]), ("1 stone", matrix[:1])):

        def before(m: np.ndarray = rows_in) -> Any:
            return unpacked.contributions(m)

        def after(m: np.ndarray = rows_in) -> Any:
            return tables.contributions(m)

        took = medians({"unpacked": before, "packed": after}, repeats)
        rows.append(
            (f"explanation, {label}: tables unpacked -> packed", took["unpacked"], took["packed"])
        )
    return rows


def shapes_only(shapes: list[str], repeats: int) -> None:
    """Item 3 alone, on LightGBM members of the given shapes fitted on the public stones."""
    from appraiser.models import CANDIDATES

    stones = data.load(None).clean
    matrix = features.encode(stones.sample(1000, random_state=0)).to_numpy()
    members = []
    for shape in shapes:
        trees, leaves = (int(n) for n in shape.lower().split("x"))
        params = {"n_estimators": trees, "num_leaves": leaves}
        started = time.perf_counter()
        members.append(CANDIDATES["lightgbm"].build(params).fit(stones, np.log(stones["price"])))
        print(f"{shape}: fitted on {len(stones):,} stones in {time.perf_counter() - started:.0f} s")
    rows = explanation_rows(members, matrix, repeats)
    print()
    print_parts(rows)


def batch_steps(appraiser: Any, stones: Any, repeats: int, home: Path) -> list[list[str]]:
    """Where POST /v1/appraisals/batch spends its CPU on 1,000 stones, without HTTP (the steps of
    routers.appraisals.appraise_batch and price_and_store), beside the bare endpoint's /batch."""
    import json

    import bare_endpoint
    import xgboost as xgb
    from pydantic_core import to_json

    from appraiser import clock, store
    from appraiser.api import batch_input

    body = json.dumps({"diamonds": stones[list(schema.FEATURES)].to_dict("records")}).encode()
    valid = batch_input.valid_stones(body)
    assert valid is not None
    for stone in valid:
        stone.pop("asking_price", None)  # present only when a batch is rebuilt
    answers = appraiser.appraise(valid)

    def rows() -> list[dict[str, Any]]:
        now, uids = clock.now(), store.new_uids(len(valid))
        return [
            store.appraisal_row(s, a["price"], price_low=a["price_low"],
                                price_high=a["price_high"], model_version="1", latency_ms=0.1,
                                warnings=a["warnings"], created_at=now, uid=uid)
            for s, a, uid in zip(valid, answers, uids, strict=True)
        ]  # fmt: skip

    matrix = features.encode_stones(valid)
    booster = xgb.Booster()
    booster.load_model(str(home / "bare-xgboost-500.json"))  # saved there by serving.py
    booster.set_param({"nthread": 1})
    bare_batch = bare_endpoint.Batch.model_validate_json(body)
    bare_matrix = np.asarray([bare_endpoint.row(d) for d in bare_batch.diamonds], np.float32)
    took = medians(
        {
            "appraiser: validate (column-wise)": lambda: batch_input.valid_stones(body),
            "appraiser: encode": lambda: features.encode_stones(valid),
            "appraiser: price and range": lambda: appraiser.model.predict_matrix(matrix),
            "appraiser: warnings": lambda: appraiser.index.warnings_all(matrix, valid),
            "appraiser: appraise (the three above and the answers)": lambda: appraiser.appraise(
                valid
            ),
            "appraiser: 1,000 stored rows built": rows,
            "appraiser: answers as JSON": lambda: to_json({"appraisals": answers}),
            "bare: validate (pydantic)": lambda: bare_endpoint.Batch.model_validate_json(body),
            "bare: rows": lambda: np.asarray(
                [bare_endpoint.row(d) for d in bare_batch.diamonds], np.float32
            ),
            "bare: one booster": lambda: booster.inplace_predict(bare_matrix),
        },
        repeats,
    )
    return [[name, f"{ms:.2f}"] for name, ms in took.items()]


def xgboost_rows(model: Any, stones: Any, repeats: int) -> list[tuple[str, float, float]]:
    """XGBoost's trees for a small call without and with each of its speed-ups (item 6)."""
    import numpy as np

    from appraiser.models import CANDIDATES, XGBoostMember, boosters

    found: Any = next((m for m in model.members if isinstance(m, XGBoostMember)), None)
    if found is None:  # fitted as `appraiser train` would with the defaults, and saved native
        fitted = CANDIDATES["xgboost"].build().fit(stones, np.log(stones["price"]))
        folder = Path(tempfile.mkdtemp())
        found = XGBoostMember.load(folder / fitted.save(folder), fitted.params, fitted.state())
    member = found
    assert isinstance(member, XGBoostMember)
    matrix = features.encode(stones).to_numpy()
    as_loaded = member._fitted()

    small = boosters.SMALL_CALL_ROWS

    def by(limit: int, rows: int) -> Callable[[], Any]:
        def call() -> Any:
            boosters.SMALL_CALL_ROWS = limit
            return member._trees(matrix[:rows])

        return call

    out = []
    for rows in (1, 4):
        took = medians({"xgboost": by(0, rows), "gtil": by(small, rows)}, repeats)
        out.append((f"XGBoost trees, {rows} stone(s): XGBoost vs GTIL", took["xgboost"],
                    took["gtil"]))  # fmt: skip
    boosters.SMALL_CALL_ROWS = small
    eight = matrix[:8]
    took = medians(
        {
            "as loaded": lambda: as_loaded.inplace_predict(eight),
            "copy": lambda: member._for(boosters.predict_threads(8)).inplace_predict(eight),
        },
        repeats,
    )
    out.append(("XGBoost trees, 8 stones: booster as loaded vs per-thread copy", took["as loaded"],
                took["copy"]))  # fmt: skip
    return out


def store_rows(repeats: int) -> tuple[float, float]:
    from sqlalchemy import insert

    from appraiser import clock, store

    url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'parts.db'}"
    store.upgrade(url)
    engine = store.engine(url)
    stone = schema.example_stone()

    def batch() -> list[dict[str, Any]]:
        now = clock.now()
        return [
            store.appraisal_row(stone, 1234.5, price_low=1000.0, price_high=1500.0,
                                model_version="1", latency_ms=0.1, created_at=now, uid=uid)
            for uid in store.new_uids(1000)
        ]  # fmt: skip

    def by_sqlalchemy() -> None:
        rows = batch()
        with engine.begin() as conn:
            conn.execute(insert(store.APPRAISALS), rows)

    def by_driver() -> None:
        rows = batch()
        with engine.begin() as conn:
            store.bulk_insert(conn, store.APPRAISALS, rows)

    took = medians({"sqlalchemy": by_sqlalchemy, "driver": by_driver}, repeats)
    building = medians({"rows": batch}, repeats)["rows"]  # the same in both: taken out
    return took["sqlalchemy"] - building, took["driver"] - building


if __name__ == "__main__":
    main()
