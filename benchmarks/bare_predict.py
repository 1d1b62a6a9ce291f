"""The yardstick of benchmarks/predict_throughput.py: the least a file-scoring script can do.

    python benchmarks/bare_predict.py INPUT.csv OUTPUT.csv --model BOOSTER.json

pandas reads the CSV, the grades become ordinal codes, one XGBoost booster of 500 trees
(benchmarks/_bare.py) prices every row, pyarrow writes the input columns plus `price`: no
validation, no `error` column, no range, in 100,000-row chunks as `appraiser predict` works.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _bare
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

CHUNK = 100_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--model", type=Path, required=True)
    args = parser.parse_args()
    model = _bare.booster(args.model)
    writer = None
    for chunk in pd.read_csv(args.input, chunksize=CHUNK):
        chunk["price"] = np.exp(model.inplace_predict(_bare.encode(chunk))).round(2)
        table = pa.Table.from_pandas(chunk, preserve_index=False)
        if writer is None:
            writer = pa_csv.CSVWriter(str(args.output), table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()


if __name__ == "__main__":
    main()
