"""The yardstick of benchmarks/serving.py: the least a pricing endpoint can do, served the same way.

    python benchmarks/bare_endpoint.py --port 8123 [--model PATH]

A FastAPI app with a pydantic model of the nine columns and one XGBoost booster of 500 trees
(depth 6, log price, grades as ordinal codes) trained on the public table at start-up (or loaded
from --model): no storage, no ids, no access log, no ranges, no comparables. Three routes:
  POST /price    one stone -> {"price"}
  POST /explain  one stone -> {"price", "contributions"} (XGBoost's exact TreeSHAP, in log price)
  POST /batch    {"diamonds": [stones]} -> {"prices": [...]}, one DataFrame, one predict call
`appraiser serve` is measured against it in the same run, so the ratios hold on any machine.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Literal

import _bare
import numpy as np
import uvicorn
import xgboost as xgb
from fastapi import FastAPI
from pydantic import BaseModel, Field

COLUMNS = _bare.COLUMNS


class Stone(BaseModel):
    carat: float = Field(gt=0, le=10)
    cut: Literal["Fair", "Good", "Very Good", "Premium", "Ideal"]
    color: Literal["J", "I", "H", "G", "F", "E", "D"]
    clarity: Literal["I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"]
    depth: float = Field(gt=0, le=100)
    table: float = Field(gt=0, le=100)
    x: float = Field(gt=0, le=20)
    y: float = Field(gt=0, le=20)
    z: float = Field(gt=0, le=15)


class Batch(BaseModel):
    diamonds: list[Stone]


def row(stone: Stone) -> list[float]:
    """One stone as the booster's row: numbers as they come, grades as ordinal codes."""
    return [
        stone.carat,
        CUT[stone.cut],
        COLOR[stone.color],
        CLARITY[stone.clarity],
        stone.depth,
        stone.table,
        stone.x,
        stone.y,
        stone.z,
    ]


CUT, COLOR, CLARITY = (_bare.CODES[g] for g in ("cut", "color", "clarity"))


def create_app(model: xgb.Booster) -> FastAPI:
    app = FastAPI()
    model.set_param({"nthread": 1})

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/price")
    def price(stone: Stone) -> dict[str, float]:
        matrix = np.asarray([row(stone)], dtype=np.float32)
        return {"price": float(np.exp(model.inplace_predict(matrix)[0]))}

    @app.post("/explain")
    def explain(stone: Stone) -> dict[str, object]:
        matrix = xgb.DMatrix(np.asarray([row(stone)], dtype=np.float32), nthread=1)
        contributions = model.predict(matrix, pred_contribs=True)[0]
        return {
            "price": float(np.exp(contributions.sum())),
            "contributions": dict(zip(COLUMNS, map(float, contributions[:-1]), strict=True)),
        }

    @app.post("/batch")
    def batch(stones: Batch) -> dict[str, list[float]]:
        matrix = np.asarray([row(s) for s in stones.diamonds], dtype=np.float32)
        return {"prices": np.exp(model.inplace_predict(matrix)).tolist()}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", type=Path, help="load (or train and save) the booster here")
    args = parser.parse_args()
    logging.getLogger("uvicorn.access").disabled = True
    uvicorn.run(
        create_app(_bare.booster(args.model)),
        host="127.0.0.1",
        port=args.port,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
