"""The bare yardstick's model, shared by bare_endpoint.py and bare_predict.py: one XGBoost booster
of 500 trees (depth 6) on log price, grades as ordinal codes, the nine columns as they come.

Not a benchmark itself. Kept light: what a bare script would import (numpy, pandas, xgboost).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb

from appraiser import schema

TREES = 500
COLUMNS = list(schema.FEATURES)
CODES = {grade: {g: i for i, g in enumerate(order)} for grade, order in schema.GRADES.items()}


def encode(frame: pd.DataFrame) -> np.ndarray:
    out = frame[COLUMNS].copy()
    for grade, codes in CODES.items():
        out[grade] = out[grade].map(codes)
    return out.to_numpy(dtype=np.float32)


def booster(path: Path | None) -> xgb.Booster:
    """Load the booster from `path`, or train it on the public table (and save it there)."""
    if path is not None and path.exists():
        model = xgb.Booster()
        model.load_model(str(path))
        return model
    from appraiser import data

    stones = data.load(None).clean
    matrix = xgb.DMatrix(encode(stones), label=np.log(stones["price"].to_numpy()))
    params = {"max_depth": 6, "eta": 0.05, "tree_method": "hist", "nthread": 2}
    model = xgb.train(params, matrix, num_boost_round=TREES)
    if path is not None:
        model.save_model(str(path))
    return model
