"""Spark benchmark: when does a local Spark job beat `appraiser predict` at scoring a CSV?

    python benchmarks/spark_scoring.py [--rows 100000,1000000,5000000] [--home DIR]
                                       [--master local[*]] [--format csv|parquet] [--json OUT]

For each size N, the same N-row CSV is priced twice, each in a fresh child process, timed from
start to finish (imports, JVM and session start-up, model load, reading, scoring, writing):

1. `appraiser predict IN --output OUT` (one process, chunks of 100,000 rows);
2. a Spark job on this machine (`--master`, default local[*]): `spark.read.csv` with an explicit
   schema, the registered model applied with `mlflow.pyfunc.spark_udf(env_manager="local")`,
   written as CSV (or Parquet) by Spark. Its phases are timed inside the child too.

Spark's output is checked against the CLI's: the same prices to the cent, NaN on the same
(spoiled) rows. A line t = a + b*N is fitted to each tool's times to find the crossover.

The champion is the one in --home (default: .appraiser, the home `make run` uses); it is read,
never retrained (only its model cache may be filled). A home without one gets a quick model in a
temporary home, as predict_throughput.py does. Inputs are made as predict_throughput.py makes them:
validated public stones sampled with replacement, about 0.1% spoiled.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from _bench import REPO, environment, format_table, write_json

PHASES_TAG = "SPARK_PHASES "
PRICES = ("price", "price_low", "price_high")
TEXT_COLUMNS = ("cut", "color", "clarity")
DEFAULT_ROWS = (100_000, 1_000_000, 5_000_000)
R = TypeVar("R")


def _sizes(text: str) -> list[int]:
    sizes = [int(float(s.replace("_", ""))) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("--rows takes a comma-separated list of positive sizes")
    return sorted(set(sizes))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--rows",
        type=_sizes,
        default=list(DEFAULT_ROWS),
        help="comma-separated input sizes (default: 100000,1000000,5000000)",
    )
    parser.add_argument(
        "--home", type=Path, default=REPO / ".appraiser", help="an APPRAISER_HOME with a champion"
    )
    parser.add_argument("--data", type=Path, help="CSV to train a quick model on, if needed")
    parser.add_argument("--master", default="local[*]", help="Spark master (default: local[*])")
    parser.add_argument("--driver-memory", default="1g", help="spark.driver.memory")
    parser.add_argument(
        "--arrow-batch",
        type=int,
        default=100_000,
        help="rows per Arrow batch handed to the model (as the CLI's chunks)",
    )
    parser.add_argument(
        "--format", choices=("csv", "parquet"), default="csv", help="what Spark writes"
    )
    parser.add_argument("--bad-share", type=float, default=0.001, help="share of spoiled rows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the row sampling")
    parser.add_argument("--workdir", type=Path, help="where to write files (default: temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    # internal: the Spark job itself, run in a child process by the benchmark
    parser.add_argument("--spark-job", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--model-version", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- the Spark job (runs in its own process) ----------------------------------------------------


def spark_job(args: argparse.Namespace) -> int:
    """Read a CSV, price it with the registered model through spark_udf, write it; print phases."""
    started = time.perf_counter()
    source, target = Path(args.spark_job[0]), Path(args.spark_job[1])
    os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers run this venv's Python
    import mlflow.pyfunc
    from pyspark.sql import SparkSession
    from pyspark.sql import types as T

    from appraiser import registry, schema
    from appraiser.config import REGISTERED_MODEL

    registry.client()  # points MLflow's registry at APPRAISER_HOME's store
    imported = time.perf_counter()
    spark = (
        SparkSession.builder.master(args.master)
        .appName("appraiser-spark-benchmark")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", args.driver_memory)
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.arrow_batch))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    session = time.perf_counter()
    pricer = mlflow.pyfunc.spark_udf(
        spark,
        model_uri=f"models:/{REGISTERED_MODEL}/{args.model_version}",
        result_type="price double, price_low double, price_high double, error string",
        env_manager="local",
    )
    udf_ready = time.perf_counter()
    columns = T.StructType(
        [
            T.StructField(c, T.StringType() if c in TEXT_COLUMNS else T.DoubleType())
            for c in schema.FEATURES
        ]
    )
    frame = spark.read.csv(str(source), header=True, schema=columns)
    partitions = frame.rdd.getNumPartitions()
    scored = frame.withColumn("out", pricer(*schema.FEATURES)).select("*", "out.*").drop("out")
    writer = scored.write.mode("overwrite")
    if args.format == "csv":
        writer.option("header", True).csv(str(target))
    else:
        writer.parquet(str(target))
    done = time.perf_counter()
    cpu = tree_cpu_seconds(os.getpid())  # before stopping: the JVM and workers still exist
    stop_jvm(spark)
    stopped = time.perf_counter()
    phases = {
        "imports": imported - started,
        "session_start": session - imported,
        "udf_model_download": udf_ready - session,
        "read_score_write": done - udf_ready,
        "stop": stopped - done,
        "cpu_seconds": cpu,
        "partitions": float(partitions),
        "cores": float(spark_cores(args.master)),
    }
    print(PHASES_TAG + json.dumps(phases), flush=True)
    return 0


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) used so far by a process and all its descendants, the
    reaped ones included, from /proc (Linux); NaN elsewhere. The Python workers are children of
    the JVM's daemon, not of this process: rusage alone would miss them."""
    proc = Path("/proc")
    if not (proc / str(root) / "stat").exists():
        return float("nan")
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, ticks of itself + reaped children)
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces
        # fields[1] is the parent; [11:15] utime, stime, cutime, cstime (see proc(5))
        stats[int(entry.name)] = (int(fields[1]), sum(float(f) for f in fields[11:15]))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(p for p, (parent, _) in stats.items() if parent == pid and p not in tree)
    return sum(stats[p][1] for p in tree if p in stats) / os.sysconf("SC_CLK_TCK")


def stop_jvm(spark: Any) -> None:
    """Stop the session and wait for its JVM to exit, so the JVM's CPU time and memory count
    in this process's children (left alone, it outlives this process and is never measured)."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    spark.stop()
    proc = getattr(gateway, "proc", None) if gateway is not None else None
    if gateway is not None:
        gateway.shutdown()
    if proc is not None:
        if proc.stdin is not None:
            proc.stdin.close()  # the JVM exits when its stdin closes
        try:
            proc.wait(timeout=60)
        except Exception:
            proc.kill()
            proc.wait()


def spark_cores(master: str) -> int:
    """Cores a local master uses (local, local[N], local[*], local[N,F]); 0 for a cluster."""
    if not master.startswith("local"):
        return 0
    inside = master.removeprefix("local").strip("[]").split(",")[0]
    if inside == "":
        return 1
    if inside == "*":
        return os.cpu_count() or 1
    return int(inside)


# --- the benchmark ------------------------------------------------------------------------------


@dataclass
class Measure:
    rows: int
    input_mib: float
    cli_seconds: float
    cli_cpu_seconds: float
    cli_peak_mib: float
    spark_seconds: float
    spark_cpu_seconds: float
    spark_peak_mib: float
    spark_phases: dict[str, float]
    problems: list[str]


def with_cpu(run: Callable[..., R], *args: Any) -> tuple[R, float]:
    """run(*args) and the CPU seconds (user + system) its child processes used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = run(*args)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result, cpu


def read_spark_prices(target: Path, fmt: str) -> Any:
    """Spark's output columns price/price_low/price_high/error, in file (= input) order."""
    import pandas as pd

    parts = sorted(target.glob(f"part-*.{fmt}" if fmt == "csv" else "part-*.parquet"))
    if fmt == "csv":
        frames = [
            pd.read_csv(
                p,
                usecols=[*PRICES, "error"],
                dtype={"error": str},
                keep_default_na=False,
                na_values={c: [""] for c in PRICES},
            )
            for p in parts
        ]
    else:
        frames = [pd.read_parquet(p, columns=[*PRICES, "error"]) for p in parts]
    out = pd.concat(frames, ignore_index=True)
    out["error"] = out["error"].fillna("")
    return out


def compare(cli_out: Path, spark_out: Path, fmt: str) -> list[str]:
    """Differences between the CLI's and Spark's prices (empty list: identical to the cent)."""
    import numpy as np
    import pandas as pd

    cli = pd.read_csv(
        cli_out,
        usecols=[*PRICES, "error"],
        dtype={"error": str},
        keep_default_na=False,
        na_values={c: [""] for c in PRICES},
    )
    spark = read_spark_prices(spark_out, fmt)
    if len(cli) != len(spark):
        return [f"Spark wrote {len(spark):,} rows, the CLI {len(cli):,}"]
    problems = []
    for column in PRICES:
        a, b = cli[column].to_numpy(float), spark[column].to_numpy(float)
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            problems.append(f"{column}: priced rows differ")
            continue
        good = ~np.isnan(a)
        differ = int((np.round(a[good] * 100) != np.round(b[good] * 100)).sum())
        if differ:
            problems.append(f"{column}: {differ:,} rows differ by a cent or more")
    if not cli["error"].astype(str).equals(spark["error"].astype(str)):
        problems.append("error messages differ")
    return problems


def fit(rows: Sequence[int], seconds: Sequence[float]) -> tuple[float, float]:
    """Least-squares t = a + b*N: (a seconds, b seconds per row); b only when one size."""
    if len(rows) == 1:
        return 0.0, seconds[0] / rows[0]
    n = len(rows)
    mean_x, mean_y = sum(rows) / n, sum(seconds) / n
    sxx = sum((x - mean_x) ** 2 for x in rows)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(rows, seconds, strict=True))
    b = sxy / sxx
    return mean_y - b * mean_x, b


def crossover(cli: tuple[float, float], spark: tuple[float, float]) -> float | None:
    """Rows beyond which Spark's fitted time is below the CLI's; None if never (per-row cost)."""
    (a_c, b_c), (a_s, b_s) = cli, spark
    if b_s >= b_c:
        return None if a_s >= a_c else 0.0
    return max((a_s - a_c) / (b_c - b_s), 0.0)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.spark_job:
        return spark_job(args)

    from predict_throughput import champion_home, cli_command, make_input, run_child

    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        sys.exit("error: Spark needs a Java runtime (java on PATH or JAVA_HOME)")
    home, version, champion_info = champion_home(args.home, args.data)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="appraiser-spark-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"APPRAISER_HOME: {home} (champion v{version})")
    print(f"Work folder:    {workdir}")
    print(
        f"Load average:   {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores"
    )

    env = {**os.environ, "APPRAISER_HOME": str(home), "PYSPARK_PYTHON": sys.executable}
    env.pop("MLFLOW_TRACKING_URI", None)
    cli = cli_command(env, workdir / "help")
    spark_cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--master",
        args.master,
        "--driver-memory",
        args.driver_memory,
        "--arrow-batch",
        str(args.arrow_batch),
        "--format",
        args.format,
        "--model-version",
        version,
    ]

    measures: list[Measure] = []
    for rows in args.rows:
        source = workdir / f"stones_{rows}.csv"
        print(f"\n{rows:,} rows: writing the input CSV ...")
        make_input(source, rows, args.bad_share, args.seed)
        input_mib = source.stat().st_size / 2**20
        cli_out, spark_out = workdir / f"priced_{rows}.csv", workdir / f"spark_{rows}"

        command = [*cli, "predict", str(source), "--output", str(cli_out)]
        print(f"  {' '.join(command)}")
        cli_run, cli_cpu = with_cpu(run_child, command, env, workdir / f"cli_{rows}")
        if cli_run.returncode != 0:
            print(cli_run.stdout + cli_run.stderr, file=sys.stderr)
            sys.exit(f"error: `appraiser predict` exited with {cli_run.returncode}")
        print(f"    {cli_run.seconds:.1f} s, {cli_cpu:.1f} CPU s")

        command = [*spark_cmd, "--spark-job", str(source), str(spark_out)]
        print(f"  {' '.join(command)}")
        spark_run, spark_rusage_cpu = with_cpu(run_child, command, env, workdir / f"spark_{rows}")
        if spark_run.returncode != 0:
            print(spark_run.stdout[-4000:] + spark_run.stderr[-4000:], file=sys.stderr)
            sys.exit(f"error: the Spark job exited with {spark_run.returncode}")
        tagged = [ln for ln in spark_run.stdout.splitlines() if ln.startswith(PHASES_TAG)]
        phases = json.loads(tagged[-1].removeprefix(PHASES_TAG)) if tagged else {}
        # the whole tree as the job saw it (workers included), else what rusage saw
        spark_cpu = phases.get("cpu_seconds", float("nan"))
        if spark_cpu != spark_cpu:
            spark_cpu = spark_rusage_cpu
        print(f"    {spark_run.seconds:.1f} s, {spark_cpu:.1f} CPU s")

        problems = compare(cli_out, spark_out, args.format)
        measures.append(
            Measure(
                rows=rows,
                input_mib=input_mib,
                cli_seconds=cli_run.seconds,
                cli_cpu_seconds=cli_cpu,
                cli_peak_mib=cli_run.peak_mib,
                spark_seconds=spark_run.seconds,
                spark_cpu_seconds=spark_cpu,
                spark_peak_mib=spark_run.peak_mib,
                spark_phases=phases,
                problems=problems,
            )
        )
        if not args.keep:
            source.unlink(missing_ok=True)
            cli_out.unlink(missing_ok=True)
            shutil.rmtree(spark_out, ignore_errors=True)

    cores = spark_cores(args.master)
    print()
    print(
        format_table(
            (
                "rows",
                "input MiB",
                "CLI s",
                "CLI rows/s",
                "Spark s",
                "Spark rows/s",
                "Spark / CLI",
                "Spark start-up s",
                "Spark job s",
                "CLI CPU s",
                "Spark CPU s",
                "same prices",
            ),
            [
                (
                    f"{m.rows:,}",
                    f"{m.input_mib:,.0f}",
                    f"{m.cli_seconds:.1f}",
                    f"{m.rows / m.cli_seconds:,.0f}",
                    f"{m.spark_seconds:.1f}",
                    f"{m.rows / m.spark_seconds:,.0f}",
                    f"{m.spark_seconds / m.cli_seconds:.2f}x",
                    f"{startup_seconds(m.spark_phases):.1f}",
                    f"{m.spark_phases.get('read_score_write', float('nan')):.1f}",
                    f"{m.cli_cpu_seconds:.1f}",
                    f"{m.spark_cpu_seconds:.1f}",
                    "yes" if not m.problems else "NO: " + "; ".join(m.problems),
                )
                for m in measures
            ],
            f"`appraiser predict` vs a Spark job ({args.master}, {cores} cores, "
            f"writing {args.format}), model v{version}",
        )
    )
    print(
        "Times are wall times of a fresh process each. Spark start-up = imports + session + "
        "model download (the rest of its time is reading, scoring and writing)."
    )
    print(
        "CPU s: user + system seconds of the whole process tree (for Spark: driver, JVM and "
        "Python workers, up to the end of the write). On a busy machine wall times move; CPU "
        "seconds much less."
    )
    peaks = ", ".join(
        f"{m.rows:,} rows: CLI {m.cli_peak_mib:,.0f} / Spark {m.spark_peak_mib:,.0f} MiB"
        for m in measures
    )
    print(f"Peak RSS of the largest process (for Spark: the driver or the JVM): {peaks}")

    sizes = [m.rows for m in measures]
    cli_fit = fit(sizes, [m.cli_seconds for m in measures])
    spark_fit = fit(sizes, [m.spark_seconds for m in measures])
    cross = crossover(cli_fit, spark_fit) if len(sizes) > 1 else None
    cpu_cli = fit(sizes, [m.cli_cpu_seconds for m in measures])
    cpu_spark = fit(sizes, [m.spark_cpu_seconds for m in measures])
    print()
    if len(sizes) > 1:
        print(
            f"Fitted wall time: CLI {cli_fit[0]:.1f} s + {1e6 * cli_fit[1]:.1f} s per million "
            f"rows; Spark {spark_fit[0]:.1f} s + {1e6 * spark_fit[1]:.1f} s per million rows."
        )
        print(
            f"Fitted CPU time:  CLI {cpu_cli[0]:.1f} s + {1e6 * cpu_cli[1]:.1f} s per million "
            f"rows; Spark {cpu_spark[0]:.1f} s + {1e6 * cpu_spark[1]:.1f} s per million rows."
        )
    verdict = conclusion(cross, cli_fit, spark_fit, cores, len(sizes))
    print(verdict)

    payload: dict[str, Any] = {
        "benchmark": "spark_scoring",
        "environment": environment(),
        "home": str(home),
        "model_version": version,
        "champion": champion_info,
        "master": args.master,
        "cores": cores,
        "output_format": args.format,
        "arrow_batch_rows": args.arrow_batch,
        "measures": [m.__dict__ for m in measures],
        "fit_cli_seconds": {"fixed": cli_fit[0], "per_row": cli_fit[1]},
        "fit_spark_seconds": {"fixed": spark_fit[0], "per_row": spark_fit[1]},
        "fit_cli_cpu_seconds": {"fixed": cpu_cli[0], "per_row": cpu_cli[1]},
        "fit_spark_cpu_seconds": {"fixed": cpu_spark[0], "per_row": cpu_spark[1]},
        "crossover_rows": cross,
        "conclusion": verdict,
        "all_outputs_match": all(not m.problems for m in measures),
    }
    write_json(args.json, payload)
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(not m.problems for m in measures) else 1


def startup_seconds(phases: dict[str, float]) -> float:
    keys = ("imports", "session_start", "udf_model_download")
    return sum(phases.get(k, float("nan")) for k in keys)


def conclusion(
    cross: float | None,
    cli_fit: tuple[float, float],
    spark_fit: tuple[float, float],
    cores: int,
    sizes: int,
) -> str:
    if sizes < 2:
        head = "One size measured: no crossover can be fitted (pass two or more --rows)."
    elif cross is None:
        head = (
            f"No crossover on this machine: Spark's cost per row is not lower than the CLI's "
            f"({1e6 * spark_fit[1]:.2f} vs {1e6 * cli_fit[1]:.2f} s per million rows), so the "
            f"single-process CLI is faster at every size on {cores} cores."
        )
    elif cross == 0.0:
        head = "Spark was faster at every measured size on this machine."
    else:
        head = (
            f"Crossover near {cross:,.0f} rows on {cores} cores (extrapolated from the fitted "
            "lines): below it the CLI is faster, above it Spark is."
        )
    return (
        head + "\nOn one machine, Spark parallelises the same per-row work over the same cores "
        "and adds a JVM, Arrow transfers and a start-up cost; it pays off on a cluster (more "
        "cores than one machine has), when the stones already live in a Spark/lakehouse table, "
        "or when a batch outgrows one machine's memory or time budget."
    )


if __name__ == "__main__":
    sys.exit(main())
