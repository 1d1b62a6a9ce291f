"""Score the versions a pipeline.py run registered on its unseen public stones, side by side.

    python benchmarks/score_versions.py HOME --seed 1 --versions 2 3 4 [--data CSV]

HOME is the APPRAISER_HOME benchmarks/pipeline.py left (/tmp/appraiser-pipeline-*), --seed its
draw. The unseen stones are that run's: public stones not in the collection, shuffled with the
seed, past the fresh and "more" sets, without the last 1,000 (37,730 of them). Prints each
version's MAPE and, for each consecutive pair, the paired difference and its standard error:
what the gate's decisions between those versions were about.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from _bench import others_shuffled, resolve_data, unseen_stones


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("home", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--versions", nargs="+", required=True)
    parser.add_argument("--fresh", type=int, default=5000)
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args()
    path = resolve_data(args.data, required=True)
    os.environ["APPRAISER_HOME"] = str(args.home)
    os.environ["APPRAISER_NATIVE_TREES"] = "false"
    from appraiser import data, registry

    public, mine = data.load(None).clean, data.load(path).clean
    unseen = unseen_stones(others_shuffled(public, mine, args.seed), args.fresh)
    truth = unseen["price"].to_numpy(float)
    apes = {}
    for version in args.versions:
        priced = registry.load_version(version)[1].predict(unseen)["price"].to_numpy()
        apes[version] = np.abs(priced / truth - 1) * 100
        print(f"v{version}: MAPE {apes[version].mean():.3f}% on {len(unseen):,} unseen stones")
    for older, newer in zip(args.versions, args.versions[1:], strict=False):
        gain = apes[older] - apes[newer]
        se = gain.std(ddof=1) / np.sqrt(len(gain))
        print(f"v{newer} against v{older}: {gain.mean():+.3f} points better (SE {se:.3f})")


if __name__ == "__main__":
    main()
