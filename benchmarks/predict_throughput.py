"""Throughput benchmark: `appraiser predict` on a large CSV, timed with its peak memory.

    python benchmarks/predict_throughput.py [--rows N] [--home DIR] [--data CSV] [--json OUT]

Goals (issue 12): the whole `appraiser predict` command at least as fast as a bare script in the
same run (benchmarks/bare_predict.py: pandas read, encode, one 500-tree XGBoost booster, pyarrow
write; no validation, no error column), a start-up (a 10-row file, the median of 5 calls) of
at most 2 s, and peak memory below 1 GiB.

1. A champion: the one in --home if it has one, else the candidates' defaults (1 trial each)
   trained on Francesco's collection (or the public table when his file is absent) in a temp home.
2. An N-row input: validated public stones' feature columns sampled with replacement (seed 0),
   about 0.1% of rows spoiled (cut "Excellent", or carat -1) so the error path runs too.
3. The real CLI in a child process (`python -m appraiser.cli predict IN --output OUT`): wall time,
   and the child's peak resident memory (GNU time). The output is checked row by row.
4. The bare script on the same input, timed the same way.
5. In-process breakdown of one 100,000-row chunk: read, validate, predict, assemble, write CSV.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from _bench import Goal, environment, format_table, goals_table, resolve_data, use_home, write_json

from appraiser import champion, data, features, registry, schema
from appraiser.models import PriceModel
from appraiser.predict import CHUNK_ROWS, score_frame
from appraiser.train import train

GOAL_VS_BARE = 1.0  # bare script's seconds / the command's seconds, at least
GOAL_STARTUP_SECONDS = 2.0
GOAL_PEAK_MIB = 1024.0  # strictly below 1 GiB

BAD_CUT = "Excellent"  # not a grade of the schema
BAD_CARAT = -1.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the input CSV")
    parser.add_argument("--home", type=Path, help="an APPRAISER_HOME with a champion to use")
    parser.add_argument("--data", type=Path, help="Francesco's CSV, to train the quick model on")
    parser.add_argument("--bad-share", type=float, default=0.001, help="share of spoiled rows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the row sampling")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the chunk breakdown")
    parser.add_argument(
        "--workdir", type=Path, help="where to write the CSVs (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated CSVs")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    return args


# --- the champion -------------------------------------------------------------------------------


def champion_home(given: Path | None, data_arg: Path | None) -> tuple[Path, str, dict[str, Any]]:
    """A home with a champion: --home when it has one, else a quick model in a temporary home."""
    if given is not None:
        home = given.expanduser().resolve()
        # asking an empty folder for its champion would create a store in it: look first
        if (home / "mlflow.db").exists():
            use_home(home)
            version = champion.current()
            if version is not None:
                return home, version, {"trained": False}
        print(f"note: {home} has no champion; training a quick model in a temporary home")
    home = Path(tempfile.mkdtemp(prefix="appraiser-bench-"))
    use_home(home)
    source = resolve_data(data_arg, required=False)
    # the candidates' default settings (one trial each): the model `appraiser train` would pick
    print(f"Training a champion (default settings) on {source or data.PUBLIC_TABLE} ...")
    started = time.perf_counter()
    result = train(source, trials=1, timeout=1, show_progress=False)
    seconds = time.perf_counter() - started
    print(f"  v{result.version} in {seconds:.1f} s (holdout MAPE {result.holdout['mape']:.2f}%)")
    info = {"trained": True, "source": str(source or data.PUBLIC_TABLE), "seconds": seconds}
    return home, result.version, info


# --- the input ----------------------------------------------------------------------------------


@dataclass
class Input:
    path: Path
    frame: pd.DataFrame  # what was written, as typed values
    bad_cut: np.ndarray  # row positions (0-based) with an unknown cut
    bad_carat: np.ndarray  # row positions with a negative carat

    @property
    def bad(self) -> np.ndarray:
        return np.sort(np.concatenate([self.bad_cut, self.bad_carat]))


def make_input(path: Path, rows: int, bad_share: float, seed: int) -> Input:
    """Public stones' features sampled with replacement, a few rows spoiled, written as CSV."""
    public = data.load(None).clean
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(public), size=rows, replace=True)
    frame = public.iloc[picks][list(schema.FEATURES)].reset_index(drop=True)
    n_bad = min(rows, max(1, round(rows * bad_share))) if bad_share > 0 else 0
    bad = rng.choice(rows, size=n_bad, replace=False)
    bad_cut, bad_carat = np.sort(bad[: n_bad // 2]), np.sort(bad[n_bad // 2 :])
    frame.loc[bad_cut, "cut"] = BAD_CUT
    frame.loc[bad_carat, "carat"] = BAD_CARAT
    frame.to_csv(path, index=False)
    return Input(path=path, frame=frame, bad_cut=bad_cut, bad_carat=bad_carat)


# --- the CLI in a child process -----------------------------------------------------------------


@dataclass
class ChildRun:
    command: list[str]
    returncode: int
    seconds: float
    peak_mib: float
    rss_tool: str
    stdout: str
    stderr: str


# A child's ru_maxrss is not its own peak alone: when the child is spawned (vfork + exec), Linux
# carries the parent's high-water RSS over into it, so wait4() on a child of this large benchmark
# process reports at least this process's own RSS. The child is therefore started by a small
# process that waits for it: GNU time when present, else this minimal Python runner.
GNU_TIME = Path("/usr/bin/time")
RUNNER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
proc.returncode = 0
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss // 1024 if sys.platform == "darwin" else usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


@cache
def _gnu_time_works() -> bool:
    if not GNU_TIME.exists():
        return False
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as report:
        probe = [str(GNU_TIME), "-f", "%M", "-o", report.name, sys.executable, "-c", "pass"]
        done = subprocess.run(probe, capture_output=True, check=False)
        return done.returncode == 0 and report.read().strip().isdigit()


def rss_wrapper(report: Path) -> tuple[str, list[str]]:
    """The tool measuring the child's peak RSS, and the prefix that writes it (KiB) to report."""
    if _gnu_time_works():
        return "GNU time", [str(GNU_TIME), "-f", "%M", "-o", str(report)]
    return "wait4 in a small runner", [sys.executable, "-c", RUNNER, str(report)]


STARTUP_CALLS = 5


def run_child(command: list[str], env: dict[str, str], logs: Path) -> ChildRun:
    """Run a command to completion: its wall time and its own peak resident set size."""
    out_path, err_path = logs.with_suffix(".stdout"), logs.with_suffix(".stderr")
    report = logs.with_suffix(".rss")
    report.unlink(missing_ok=True)
    tool, prefix = rss_wrapper(report)
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        done = subprocess.run(
            [*prefix, *command], env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL
        )
        seconds = time.perf_counter() - started
    lines = report.read_text().split() if report.exists() else []
    # GNU time writes a "Command exited with non-zero status" line before the figure
    peak_kib = int(lines[-1]) if lines and lines[-1].isdigit() else -1
    return ChildRun(
        command=command,
        returncode=done.returncode,
        seconds=seconds,
        peak_mib=peak_kib / 2**10 if peak_kib >= 0 else float("nan"),
        rss_tool=tool,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )


def cli_command(env: dict[str, str], logs: Path) -> list[str]:
    """`python -m appraiser.cli` if it runs, else the `appraiser` script beside the interpreter."""
    module = [sys.executable, "-m", "appraiser.cli"]
    if run_child([*module, "--help"], env, logs).returncode == 0:
        return module
    script = Path(sys.executable).with_name("appraiser")
    if script.exists():
        return [str(script)]
    sys.exit(f"error: neither `{' '.join(module)}` nor {script} runs")


# --- checking the output ------------------------------------------------------------------------


def check_output(path: Path, given: Input) -> tuple[list[str], dict[str, int]]:
    """Problems with the scored file (empty list: all good) and its counts."""
    problems: list[str] = []
    out = pd.read_csv(
        path,
        usecols=["carat", "cut", "price", "price_low", "price_high", "error"],
        dtype={"cut": str, "error": str},
        keep_default_na=False,
        na_values={"price": [""], "price_low": [""], "price_high": [""]},
    )
    expected_rows = len(given.frame)
    counts = {"rows": len(out), "error_rows": int(out["error"].ne("").sum())}
    if len(out) != expected_rows:
        return [f"output has {len(out):,} rows, expected {expected_rows:,}"], counts
    failed = np.flatnonzero(out["error"].ne("").to_numpy())
    if not np.array_equal(failed, given.bad):
        problems.append(
            f"{len(failed):,} error rows, expected {len(given.bad):,} at the spoiled rows"
        )
    if not out["error"].iloc[given.bad_cut].str.contains("cut must be one of").all():
        problems.append("an unknown cut is not reported as such")
    if not out["error"].iloc[given.bad_carat].str.contains("carat must be").all():
        problems.append("a negative carat is not reported as such")
    good = np.ones(len(out), dtype=bool)
    good[given.bad] = False
    price, low, high = (out[c].to_numpy(dtype=float) for c in ("price", "price_low", "price_high"))
    if np.isnan(price[good]).any() or (price[good] <= 0).any():
        problems.append("a valid row has no positive price")
    if not np.isnan(price[~good]).all():
        problems.append("a rejected row has a price")
    if ((low[good] > price[good]) | (price[good] > high[good])).any():
        problems.append("a price lies outside its own range")
    same_order = np.array_equal(
        out["carat"].to_numpy(dtype=float), given.frame["carat"].to_numpy(dtype=float)
    ) and out["cut"].equals(given.frame["cut"].astype(str))
    if not same_order:
        problems.append("output rows are not the input rows in the same order")
    return problems, counts


# --- where the time goes, in process ------------------------------------------------------------


def _timed(step: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median seconds over `repeats` runs, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = step()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


class _FixedPrices:
    """Stands in for the model with prices computed beforehand: score_frame minus the model."""

    def __init__(self, prices: pd.DataFrame) -> None:
        self.prices = prices

    def predict(self, stones: pd.DataFrame) -> pd.DataFrame:
        return self.prices


def chunk_breakdown(
    model: PriceModel, source: Path, scratch: Path, repeats: int
) -> dict[str, float]:
    """Seconds per step for the first CHUNK_ROWS rows, as `score_file` processes one chunk."""

    def read() -> pd.DataFrame:
        return pd.read_csv(source, keep_default_na=False, na_values=[""], nrows=CHUNK_ROWS)

    read_s, raw = _timed(read, repeats)
    validate_s, checked = _timed(lambda: data.validate(raw, labelled=False, dedupe=False), repeats)
    encode_s, _ = _timed(lambda: features.encode(checked.clean), repeats)
    predict_s, prices = _timed(lambda: model.predict(checked.clean), repeats)
    # score_frame with the prices ready: validation plus assembling the output frame
    stub = cast(PriceModel, _FixedPrices(prices))
    no_model_s, scored = _timed(lambda: score_frame(stub, raw), repeats)

    def write() -> None:  # as score_file writes: pyarrow's CSV writer
        options = pa_csv.WriteOptions(include_header=True, quoting_style="needed")
        with scratch.open("wb") as out:
            pa_csv.write_csv(pa.Table.from_pandas(scored, preserve_index=False), out, options)

    write_s, _ = _timed(write, repeats)
    scratch.unlink(missing_ok=True)
    assemble_s = max(no_model_s - validate_s, 0.0)
    return {
        "rows": float(len(raw)),
        "read_csv": read_s,
        "validate": validate_s,
        "model_predict": predict_s,
        "of_which_encode": encode_s,
        "assemble": assemble_s,
        "write_csv": write_s,
        "total": read_s + validate_s + predict_s + assemble_s + write_s,
    }


def breakdown_table(steps: dict[str, float]) -> str:
    rows_in_chunk, total = steps["rows"], steps["total"]
    labels = [
        ("read_csv", "read CSV chunk (pd.read_csv)"),
        ("validate", "validate (data.validate, labelled=False)"),
        ("model_predict", "model.predict (clean rows)"),
        ("of_which_encode", "  of which features.encode"),
        ("assemble", "assemble output (rest of score_frame)"),
        ("write_csv", "write CSV (pyarrow)"),
        ("total", "total of the steps"),
    ]
    rows = []
    for key, label in labels:
        seconds = steps[key]
        share = "" if key == "total" else f"{100 * seconds / total:.0f}%"
        alone = f"{rows_in_chunk / seconds:,.0f}" if seconds >= 1e-3 else ""
        rows.append((label, f"{1000 * seconds:,.0f}", share, alone))
    title = f"Where the time goes: one {int(rows_in_chunk):,}-row chunk in process (median)"
    return format_table(("step", "ms", "share", "rows/s alone"), rows, title)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    home, version, champion_info = champion_home(args.home, args.data)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="appraiser-throughput-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"APPRAISER_HOME: {home} (champion v{version})")
    print(f"Work folder:    {workdir}")

    started = time.perf_counter()
    _, model = registry.load_version(version)  # also fills the home's model cache for the CLI
    load_seconds = time.perf_counter() - started
    print(f"Model {model.name} loaded in process in {load_seconds:.2f} s")

    print(f"Writing a {args.rows:,}-row input CSV ...")
    started = time.perf_counter()
    given = make_input(workdir / "stones.csv", args.rows, args.bad_share, args.seed)
    input_mib = given.path.stat().st_size / 2**20
    print(
        f"  {input_mib:,.1f} MiB, {len(given.bad):,} spoiled rows, "
        f"in {time.perf_counter() - started:.1f} s"
    )

    env = {**os.environ, "APPRAISER_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = cli_command(env, workdir / "help")

    # the fixed cost of one call (imports, registry lookup, model load) on a 10-row file
    tiny = workdir / "tiny.csv"
    given.frame.head(10).to_csv(tiny, index=False)
    # the median of STARTUP_CALLS (one call on this machine varies by a few tenths of a second),
    # beside the time Python takes to import pandas alone, which the bare script pays too
    calls = sorted(
        (
            run_child(
                [*command, "predict", str(tiny), "--output", str(workdir / "tiny_out.csv")],
                env,
                workdir / f"tiny{i}",
            )
            for i in range(STARTUP_CALLS)
        ),
        key=lambda call: call.seconds,
    )
    startup = calls[len(calls) // 2]
    pandas_alone = run_child([sys.executable, "-c", "import pandas"], env, workdir / "pandas")
    print(
        "  start-up calls: "
        + ", ".join(f"{c.seconds:.2f}" for c in calls)
        + f" s; `python -c 'import pandas'` alone: {pandas_alone.seconds:.2f} s"
    )

    output = workdir / "priced.csv"
    print(
        f"Running: APPRAISER_HOME={home} {' '.join(command)} predict {given.path} --output {output}"
    )
    run = run_child(
        [*command, "predict", str(given.path), "--output", str(output)], env, workdir / "predict"
    )
    if run.returncode != 0 or startup.returncode != 0:
        failed = run if run.returncode != 0 else startup
        print(failed.stdout + failed.stderr, file=sys.stderr)
        sys.exit(f"error: `appraiser predict` exited with {failed.returncode}")
    print(f"  {' '.join(run.stdout.split())}")
    problems, counts = check_output(output, given)
    output_mib = output.stat().st_size / 2**20

    import _bare

    bare_model = home / "bare-xgboost-500.json"
    _bare.booster(bare_model)  # trained once (not timed), then loaded by the script
    bare_script = Path(__file__).with_name("bare_predict.py")
    print(f"Running the bare script: {bare_script.name} {given.path.name}")
    bare_out = workdir / "bare_out.csv"
    bare = run_child(
        [sys.executable, str(bare_script), str(given.path), str(bare_out), f"--model={bare_model}"],
        env,
        workdir / "bare",
    )
    if bare.returncode != 0:
        print(bare.stdout + bare.stderr, file=sys.stderr)
        sys.exit(f"error: the bare script exited with {bare.returncode}")
    vs_bare = bare.seconds / run.seconds

    print("Timing one chunk in process ...")
    steps = chunk_breakdown(model, given.path, workdir / "chunk_out.csv", args.repeats)

    rows_per_second = args.rows / run.seconds
    # the command minus a 10-row call's time: what the rows themselves cost
    busy = run.seconds - startup.seconds
    steady = args.rows / busy if busy > 0.1 * run.seconds else float("nan")
    print()
    print(
        format_table(
            ("figure", "value"),
            [
                ("rows (input)", f"{args.rows:,}"),
                ("rows (output)", f"{counts['rows']:,}"),
                (
                    "error rows (output / expected)",
                    f"{counts['error_rows']:,} / {len(given.bad):,}",
                ),
                ("input / output size", f"{input_mib:,.1f} / {output_mib:,.1f} MiB"),
                ("wall time, whole command", f"{run.seconds:.2f} s"),
                ("python -c 'import pandas' alone", f"{pandas_alone.seconds:.2f} s"),
                (
                    f"fixed cost (10-row call, median of {STARTUP_CALLS})",
                    f"{startup.seconds:.2f} s, peak {startup.peak_mib:,.0f} MiB",
                ),
                ("rows/s, whole command", f"{rows_per_second:,.0f}"),
                ("rows/s, minus fixed cost", "n/a" if np.isnan(steady) else f"{steady:,.0f}"),
                ("peak RSS of the command", f"{run.peak_mib:,.0f} MiB ({run.rss_tool})"),
                ("bare script, whole run", f"{bare.seconds:.2f} s, peak {bare.peak_mib:,.0f} MiB"),
                ("speed vs the bare script", f"{vs_bare:.2f}x"),
                ("output check", "ok" if not problems else "; ".join(problems)),
            ],
            f"`appraiser predict` on {args.rows:,} rows (model v{version}, {model.name})",
        )
    )
    print()
    print(breakdown_table(steps))
    print()
    goals = [
        Goal("speed, x the bare script (same run)", vs_bare, "x", low=GOAL_VS_BARE),
        Goal("start-up (10-row file)", startup.seconds, "s", high=GOAL_STARTUP_SECONDS),
        Goal("peak memory", run.peak_mib, "MiB", high=GOAL_PEAK_MIB, strict_high=True, digits=0),
    ]
    print(goals_table(goals, "Throughput goals"))
    if problems:
        print("\nOUTPUT CHECK FAILED: " + "; ".join(problems))

    payload: dict[str, Any] = {
        "benchmark": "predict_throughput",
        "environment": environment(),
        "home": str(home),
        "model_version": version,
        "model": model.name,
        "champion": champion_info,
        "model_load_seconds_in_process": load_seconds,
        "command": [*run.command],
        "rows": args.rows,
        "spoiled_rows": len(given.bad),
        "input_mib": input_mib,
        "output_mib": output_mib,
        "output_counts": counts,
        "output_problems": problems,
        "wall_seconds": run.seconds,
        "rows_per_second": rows_per_second,
        "rows_per_second_minus_fixed_cost": steady,
        "peak_rss_mib": run.peak_mib,
        "peak_rss_measured_with": run.rss_tool,
        "fixed_cost_seconds": startup.seconds,
        "bare_script_seconds": bare.seconds,
        "bare_script_peak_rss_mib": bare.peak_mib,
        "speed_vs_bare_script": vs_bare,
        "fixed_cost_peak_rss_mib": startup.peak_mib,
        "fixed_cost_calls_seconds": [c.seconds for c in calls],
        "import_pandas_seconds": pandas_alone.seconds,
        "chunk_breakdown_seconds": steps,
        "goals": [g.as_dict() for g in goals],
        "all_goals_met": all(g.met() for g in goals) and not problems,
    }
    write_json(args.json, payload)
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not args.keep:
        for name in ("stones.csv", "priced.csv", "tiny.csv", "tiny_out.csv", "bare_out.csv"):
            (workdir / name).unlink(missing_ok=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
