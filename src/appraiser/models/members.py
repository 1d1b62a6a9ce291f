"""What every member of a price model is: a fitted model of log price that encodes raw stones
itself (features.encode), so a saved model takes the same columns at serving time as in training.

Here: the Member interface, the contributions every member reports, the threads scoring uses,
and the interpretable hedonic member. The boosters are in boosters.py.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from appraiser import features

BASELINE = "baseline"  # the contribution column holding the model's average log price
# Training fits one thread per booster: on a small machine OpenMP threads that wait for a busy
# core spin for minutes; a single thread is predictable, and 5,000 stones gain little from more.
# Scoring a loaded model is one short call per batch, which every core can share.
THREADS = 1
# the cores this process may run on (a container's CPU set), not the machine's
PREDICT_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
# Below this many rows a prediction runs on one thread: starting threads costs more than they
# save, and a thread waiting for a core that another process holds can stall a call for tens of
# milliseconds (measured: 27 ms for one stone with 2 threads on 2 busy cores, against 0.3 ms).
PARALLEL_ROWS = 1_000


def predict_threads(rows: int, per_row_cost: int = 1) -> int:
    """Threads for scoring `rows` stones with a loaded model. TreeSHAP costs about 1,000 times a
    prediction per row (`per_row_cost`), so explaining even two stones is worth two threads."""
    return PREDICT_THREADS if rows * per_row_cost >= PARALLEL_ROWS else 1


class Member(ABC):
    """One fitted model of log price."""

    kind: ClassVar[str]

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        self.params: dict[str, Any] = dict(params or {})

    @abstractmethod
    def fit(self, stones: pd.DataFrame, log_price: np.ndarray) -> Member: ...

    @abstractmethod
    def predict_log_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Log price for encoded stones (features.ENCODED columns)."""

    @abstractmethod
    def contributions_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Log-price contributions, one column per reason (features.REASONS) then the baseline,
        for encoded stones; each row sums to predict_log_matrix."""

    def fit_averaged(self, stones: pd.DataFrame, log_price: np.ndarray, seeds: int) -> Member:
        """Fitted as the average of `seeds` fits that differ only in their random seed: the
        registered model, so that less of its accuracy is the luck of one draw. Here one fit: a
        member that draws nothing at random has nothing to average."""
        return self.fit(stones, log_price)

    def predict_log(self, stones: pd.DataFrame) -> np.ndarray:
        return self.predict_log_matrix(_matrix(stones))

    def contributions(self, stones: pd.DataFrame) -> pd.DataFrame:
        """Log-price contributions per reason plus BASELINE; each row sums to predict_log."""
        return contribution_frame(self.contributions_matrix(_matrix(stones)))

    @abstractmethod
    def save(self, folder: Path) -> str:
        """Write the fitted model into folder; returns the file name."""

    def state(self) -> dict[str, float]:
        """Fitted numbers saved beside the model file (none by default)."""
        return {}

    @classmethod
    @abstractmethod
    def load(
        cls, path: Path, params: dict[str, Any], state: dict[str, Any] | None = None
    ) -> Member: ...


CONTRIBUTION_COLUMNS: tuple[str, ...] = (*features.REASONS, BASELINE)


def contribution_frame(contribs: np.ndarray, index: Any = None) -> pd.DataFrame:
    """A contributions matrix (CONTRIBUTION_COLUMNS) as a DataFrame."""
    return pd.DataFrame(contribs, columns=list(CONTRIBUTION_COLUMNS), index=index)


def _by_feature(
    contribs: np.ndarray, columns: list[str], source: Callable[[str], str]
) -> np.ndarray:
    """Sum encoded-column contributions into one column per reason, plus the baseline."""
    out = np.zeros((len(contribs), len(CONTRIBUTION_COLUMNS)))
    for j, column in enumerate(columns):
        out[:, features.REASONS.index(source(column))] += contribs[:, j]
    out[:, -1] = contribs[:, len(columns)]
    return out


class Hedonic(Member):
    """The interpretable baseline: log price = a + b log carat + one premium per grade step."""

    kind = "hedonic"

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self.intercept = 0.0
        self.coef: dict[str, float] = {}
        self.means: dict[str, float] = {}
        self._order: list[int] | None = None  # design columns in coefficient order

    def fit(self, stones: pd.DataFrame, log_price: np.ndarray) -> Hedonic:
        from sklearn.linear_model import LinearRegression

        design = features.hedonic_design(stones)
        # positive=True keeps every grade step a premium, never a discount: monotone by design
        model = LinearRegression(positive=True).fit(design.to_numpy(), log_price)
        self.intercept = float(model.intercept_)
        self.coef = dict(zip(design.columns, map(float, model.coef_), strict=True))
        self._order = None
        self.means = {c: float(v) for c, v in design.mean().items()}
        return self

    def _design(self, matrix: np.ndarray) -> np.ndarray:
        # coefficients are saved by name; their order is fixed, so work it out once
        if self._order is None:
            self._order = [features.hedonic_columns().index(c) for c in self.coef]
        return features.hedonic_design_matrix(matrix)[:, self._order]

    def predict_log_matrix(self, matrix: np.ndarray) -> np.ndarray:
        coef = np.array(list(self.coef.values()))
        return np.asarray(self._design(matrix) @ coef + self.intercept)

    def contributions_matrix(self, matrix: np.ndarray) -> np.ndarray:
        coef = np.array(list(self.coef.values()))
        means = np.array([self.means[c] for c in self.coef])
        centred = (self._design(matrix) - means) * coef
        baseline = self.intercept + float(means @ coef)
        full = np.column_stack([centred, np.full(len(centred), baseline)])
        return _by_feature(full, list(self.coef), features.hedonic_source)

    def save(self, folder: Path) -> str:
        name = "hedonic.json"
        state = {"intercept": self.intercept, "coef": self.coef, "means": self.means}
        (folder / name).write_text(json.dumps(state, indent=2))
        return name

    @classmethod
    def load(
        cls, path: Path, params: dict[str, Any], state: dict[str, Any] | None = None
    ) -> Hedonic:
        state = json.loads(path.read_text())
        member = cls(params)
        member.intercept, member.coef, member.means = (
            state["intercept"],
            state["coef"],
            state["means"],
        )
        return member


def _matrix(stones: pd.DataFrame) -> np.ndarray:
    return features.encode(stones).to_numpy(dtype=np.float64)


CARAT = features.ENCODED.index("carat")
