"""What each start-up speed-up of `appraiser predict` saves (issue 22), each turned off in turn.

    python benchmarks/predict_startup.py [--home DIR] [--rounds N]

The real CLI prices a 10-row file in child processes, with the champion of --home (default
.appraiser, the one `make run` trains), the runs of every variant alternated (shuffled each
round) so the machine's drift hits all alike; each figure is the median wall time of --rounds runs.
The speed-ups, and how a child turns one off (a few lines run before the CLI):
- lazy LightGBM: models.LazyBooster and the LightGBM answers kept beside the compiled trees
  (fast/compiled.py): with the compiled trees cached, LightGBM is neither imported nor parsed;
- sqlite3 champion read: champion._stored_sqlite, off by naming the same file as
  APPRAISER_DATABASE_URL (then SQLAlchemy reads it);
- pandera skipped: data._breaks_no_rule lets a clean table skip pandera;
- no scikit-learn: predict.boosters_without_estimators. It acts only when a booster library is
  imported (an XGBoost member, or LightGBM without compiled trees), so it is also timed on
  `import xgboost, lightgbm` alone.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _bench import REPO, format_table, use_home

RUN_CLI = "import runpy; runpy.run_module('appraiser.cli', run_name='__main__')"
OFF = {  # code run before the CLI, environment
    "lazy LightGBM": (
        "from appraiser.fast import compiled\n"
        "from appraiser.models import boosters\n"
        "init, answers = boosters.LazyBooster.__init__, compiled._lightgbm_answers\n"
        "def eager(self, path):\n"
        "    init(self, path)\n"
        "    self.loaded\n"
        "boosters.LazyBooster.__init__ = eager\n"
        "compiled._lightgbm_answers = lambda f, p, a, fresh=False: answers(f, p, a, fresh=True)\n",
        {},
    ),
    "sqlite3 champion read": ("", {"APPRAISER_DATABASE_URL": "sqlite:///{home}/appraiser.db"}),
    "pandera skipped": (
        "from appraiser import data\ndata._breaks_no_rule = lambda *args: False\n",
        {},
    ),
    "no scikit-learn": (
        "import contextlib\nfrom appraiser import predict\n"
        "predict.boosters_without_estimators = contextlib.nullcontext\n",
        {},
    ),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=REPO / ".appraiser", help="APPRAISER_HOME")
    parser.add_argument("--rounds", type=int, default=9, help="runs of each variant")
    return parser.parse_args(argv)


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(command[:3])} failed:\n{done.stderr[-3000:]}")
    return seconds


def alternated(
    commands: dict[str, tuple[list[str], dict[str, str]]], rounds: int
) -> dict[str, float]:
    """Median seconds per command over `rounds` shuffled rounds (after one unmeasured run each)."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for command, env in commands.values():
        timed(command, env)
    order = list(commands)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            times[name].append(timed(*commands[name]))
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    home = args.home.expanduser().resolve()
    use_home(home)
    from appraiser import champion, data, schema

    if champion.current(registry=False) is None:
        sys.exit(f"error: {home} has no champion (train one: `appraiser train`)")
    scratch = Path(tempfile.mkdtemp(prefix="appraiser-startup-"))
    ten = scratch / "ten.csv"
    data.load(None).clean.sample(10, random_state=0)[list(schema.FEATURES)].to_csv(ten, index=False)
    env = {**os.environ, "APPRAISER_HOME": str(home)}
    env.pop("APPRAISER_DATABASE_URL", None)  # the default SQLite store
    commands: dict[str, tuple[list[str], dict[str, str]]] = {}
    for name, (code, extra) in {"all on": ("", {}), **OFF}.items():
        out = scratch / f"{len(commands)}.csv"
        more = {k: v.format(home=home) for k, v in extra.items()}
        command = [sys.executable, "-c", code + RUN_CLI, "predict", str(ten), "--output", str(out)]
        commands[name] = (command, {**env, **more})
    took = alternated(commands, args.rounds)
    outputs = {(scratch / f"{i}.csv").read_text() for i in range(len(commands))}
    print(f"The same prices with every speed-up off in turn: {len(outputs) == 1}")
    base = took.pop("all on")
    imports = "import xgboost, lightgbm"
    block = "import sys; sys.modules['sklearn'] = None; "
    blocked = alternated(
        {
            "with": ([sys.executable, "-c", block + imports], env),
            "without": ([sys.executable, "-c", imports], env),
        },
        args.rounds,
    )
    rows = [[name, f"{off:.2f}", f"{base:.2f}", f"{off - base:+.2f}"] for name, off in took.items()]
    saved = blocked["without"] - blocked["with"]
    rows.append(
        [
            f"no scikit-learn, `{imports}` alone",
            f"{blocked['without']:.2f}",
            f"{blocked['with']:.2f}",
            f"{saved:+.2f}",
        ]
    )
    print(
        format_table(
            ["speed-up", "off s", "on s", "saves s"],
            rows,
            title=f"`appraiser predict` on 10 rows, median of {args.rounds} runs each",
        )
    )


if __name__ == "__main__":
    main()
