"""Candidate models, their search spaces, and the saved price model.

Every member learns log price from validated stones and encodes them itself (features.encode), so
the saved model takes the same raw columns at serving time as at training time. Boosters are saved
in their own native formats and the hedonic model as JSON coefficients: no pickles.
"""

from __future__ import annotations

import json
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np
import pandas as pd

from appraiser import features, schema

if TYPE_CHECKING:  # imported where used: a champion that needs neither loads faster
    import lightgbm as lgb
    import optuna
    import xgboost as xgb

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


SHAP_COST = 1_000  # TreeSHAP per row, in predictions per row (measured: ~5 ms vs ~5 us)
# Up to this many stones, XGBoost trees are evaluated by treelite's GTIL: XGBoost's per-call cost
# dominates small calls (one stone, 322 trees of depth 8: 261 us by XGBoost, 83 us by GTIL; at 4
# stones 328 vs 204; at 8, XGBoost is faster). Same trees, same float32 arithmetic, same values.
SMALL_CALL_ROWS = 4


class ModelFormatError(RuntimeError):
    """A saved model this version of the code cannot read."""


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


def near_l1(delta: float) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A loss that is quadratic within `delta` of the target and absolute beyond it.

    MAPE rewards the median, not the mean; with gradient r delta / max(|r|, delta) and hessian
    delta / max(|r|, delta), each leaf takes a reweighted-median step through the ordinary
    gradient/hessian path, so the boosters still enforce the monotone constraints (their built-in
    L1 objectives recompute leaf values afterwards and break them). It lowered the CV MAPE by
    about 0.15 points on Francesco's collection.
    """

    def objective(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        residual = y_pred - y_true
        scale = delta / np.maximum(np.abs(residual), delta)
        return residual * scale, scale

    return objective


class BoosterMember(Member):
    """Trees that learn log price per carat: log price = log carat + centre + trees(features).

    Taking log carat out of the target leaves the trees a flatter function to learn (about 0.1
    points of CV MAPE) and keeps the price increasing in carat. The `centre` (median of the
    target) and the mean log carat are saved beside the booster file, so contributions stay exact.
    """

    file: ClassVar[str]

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self.centre = 0.0
        self.mean_log_carat = 0.0

    @abstractmethod
    def _fit_trees(self, matrix: np.ndarray, target: np.ndarray) -> None: ...

    @abstractmethod
    def _trees(self, matrix: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _tree_contributions(self, matrix: np.ndarray) -> np.ndarray:
        """TreeSHAP values per encoded column, then the trees' own bias, as (n, columns + 1)."""

    @abstractmethod
    def _save_trees(self, path: Path) -> None: ...

    @abstractmethod
    def _load_trees(self, path: Path) -> None: ...

    def _loss(self) -> Any:
        delta = self.params.get("loss_delta")
        return near_l1(float(delta)) if delta else None

    def _booster_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if k != "loss_delta"}

    def fit(self, stones: pd.DataFrame, log_price: np.ndarray) -> BoosterMember:
        log_carat = np.log(stones["carat"].to_numpy(dtype=float))
        target = log_price - log_carat
        self.centre = float(np.median(target))
        self.mean_log_carat = float(log_carat.mean())
        self._fit_trees(_matrix(stones), target - self.centre)
        return self

    def predict_log_matrix(self, matrix: np.ndarray) -> np.ndarray:
        log_carat = np.log(matrix[:, CARAT])
        return self._trees(matrix) + self.centre + log_carat

    def contributions_matrix(self, matrix: np.ndarray) -> np.ndarray:
        out = _by_feature(
            self._tree_contributions(matrix),
            list(features.ENCODED),
            features.SOURCE_FEATURE.__getitem__,
        )
        # the log-carat term belongs to size; its average and the centre to the baseline
        out[:, features.REASONS.index("size")] += np.log(matrix[:, CARAT]) - self.mean_log_carat
        out[:, -1] += self.centre + self.mean_log_carat
        return out

    def state(self) -> dict[str, float]:
        return {"centre": self.centre, "mean_log_carat": self.mean_log_carat}

    def save(self, folder: Path) -> str:
        self._save_trees(folder / self.file)
        return self.file

    @classmethod
    def load(
        cls, path: Path, params: dict[str, Any], state: dict[str, Any] | None = None
    ) -> Member:
        member = cls(params)
        member._load_trees(path)
        member.centre = float((state or {}).get("centre", 0.0))
        member.mean_log_carat = float((state or {}).get("mean_log_carat", 0.0))
        return member


class XGBoostMember(BoosterMember):
    """Gradient-boosted trees (XGBoost) with monotone constraints."""

    kind = "xgboost"
    file = "xgboost.ubj"
    booster: xgb.Booster | None = None

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self._by_threads: dict[int, xgb.Booster] = {}
        self._treelite: Any = None  # the trees for treelite's GTIL, made on first use

    def _fit_trees(self, matrix: np.ndarray, target: np.ndarray) -> None:
        import xgboost as xgb

        loss = self._loss()
        model = xgb.XGBRegressor(
            **self._booster_params(),
            **({"objective": loss} if loss else {}),
            base_score=0.0,
            monotone_constraints=tuple(features.monotone_constraints()),
            n_jobs=THREADS,
            tree_method="hist",
        )
        self.booster = model.fit(matrix, target).get_booster()
        self._by_threads = {}
        self._treelite = None

    def _fitted(self) -> xgb.Booster:
        if self.booster is None:
            raise RuntimeError(f"{self.kind} model is not fitted")
        return self.booster

    def _for(self, threads: int) -> xgb.Booster:
        """The booster set to predict with `threads` threads (XGBoost keeps it in the booster)."""
        booster = self._by_threads.get(threads)
        if booster is None:
            booster = self._fitted().copy()
            booster.set_param({"nthread": threads})
            self._by_threads[threads] = booster
        return booster

    def _trees(self, matrix: np.ndarray) -> np.ndarray:
        if len(matrix) <= SMALL_CALL_ROWS:
            import treelite

            if self._treelite is None:
                self._treelite = treelite.frontend.from_xgboost(self._fitted())
            values = treelite.gtil.predict(self._treelite, matrix, nthread=1)
            return np.asarray(values, dtype=float).reshape(len(matrix))
        booster = self._for(predict_threads(len(matrix)))
        return np.asarray(booster.inplace_predict(matrix), dtype=float)

    def _tree_contributions(self, matrix: np.ndarray) -> np.ndarray:
        import xgboost as xgb

        booster = self._for(predict_threads(len(matrix), SHAP_COST))
        contribs = booster.predict(xgb.DMatrix(matrix, nthread=1), pred_contribs=True)
        return np.asarray(contribs, dtype=float)

    def _save_trees(self, path: Path) -> None:
        self._fitted().save_model(path)

    def _load_trees(self, path: Path) -> None:
        import xgboost as xgb

        self.booster = xgb.Booster(model_file=str(path))
        self._by_threads = {}
        self._treelite = None


class LazyBooster:
    """A saved LightGBM booster, read from its text file when first used.

    Scoring with the trees compiled for this machine (native.py) needs only the text: importing
    LightGBM (and SciPy with it) and parsing 600 trees was a fifth of `appraiser predict`'s
    start-up. Anything else asked of it (predict, dump_model, ...) loads the booster once.
    """

    def __init__(self, path: Path) -> None:
        self.text = path.read_text()
        self._booster: lgb.Booster | None = None
        self._lock = threading.Lock()

    def model_to_string(self) -> str:
        return self.text

    @property
    def loaded(self) -> lgb.Booster:
        booster = self._booster
        if booster is not None:
            return booster
        with self._lock:
            if self._booster is None:
                import lightgbm as lgb

                self._booster = lgb.Booster(model_str=self.text)
            return self._booster

    def __getattr__(self, name: str) -> Any:  # only for what this class does not define
        if name.startswith("__") or name in ("_booster", "_lock", "text", "loaded"):
            raise AttributeError(name)  # never recurse, whatever failed
        return getattr(self.loaded, name)


class LightGBMMember(BoosterMember):
    """Gradient-boosted trees (LightGBM) with monotone constraints."""

    kind = "lightgbm"
    file = "lightgbm.txt"
    booster: lgb.Booster | None = None
    threads: int = THREADS
    native: Any = None  # the same trees compiled for this machine (native.py), when ready
    tables: Any = None  # their TreeSHAP values tabulated (treeshap.py), when made
    # "advanced" constrains less than "basic" (about 0.05 points of CV MAPE), at 1.6x the time
    monotone_method: ClassVar[str] = "advanced"

    def _fit_trees(self, matrix: np.ndarray, target: np.ndarray) -> None:
        import lightgbm as lgb

        loss = self._loss()
        model = lgb.LGBMRegressor(
            **self._booster_params(),
            **({"objective": loss} if loss else {}),
            monotone_constraints=features.monotone_constraints(),
            monotone_constraints_method=self.monotone_method,
            n_jobs=THREADS,
            verbose=-1,
        )
        self.booster = model.fit(matrix, target).booster_
        self.native = self.tables = None

    def _fitted(self) -> lgb.Booster:
        if self.booster is None:
            raise RuntimeError(f"{self.kind} model is not fitted")
        return self.booster

    def _threads(self, rows: int, per_row_cost: int = 1) -> int:
        return predict_threads(rows, per_row_cost) if self.threads > 1 else self.threads

    def _trees(self, matrix: np.ndarray) -> np.ndarray:
        threads = self._threads(len(matrix))
        native = self.native  # read once: a compile finishing meanwhile swaps it whole
        if native is not None:
            return np.asarray(native.predict(np.ascontiguousarray(matrix), n_jobs=threads))
        return np.asarray(self._fitted().predict(matrix, num_threads=threads), dtype=float)

    def _tree_contributions(self, matrix: np.ndarray) -> np.ndarray:
        tables = self.tables  # read once: made meanwhile, it is swapped in whole
        if tables is not None and not np.isnan(matrix).any():  # NaN: LightGBM's own rule
            return np.asarray(tables.contributions(matrix))
        threads = self._threads(len(matrix), SHAP_COST)
        raw = self._fitted().predict(matrix, pred_contrib=True, num_threads=threads)
        return np.asarray(raw, dtype=float)

    def _save_trees(self, path: Path) -> None:
        self._fitted().save_model(str(path))

    def _load_trees(self, path: Path) -> None:
        self.booster = cast("lgb.Booster", LazyBooster(path))  # behaves as one: see LazyBooster
        self.native = self.tables = None
        self.threads = PREDICT_THREADS


class RandomForestMember(LightGBMMember):
    """A random forest (LightGBM's rf mode): bagged deep trees, monotone, explained by TreeSHAP."""

    kind = "random_forest"
    file = "random_forest.txt"
    monotone_method = "basic"  # deep trees: "advanced" costs minutes here

    def _tree_contributions(self, matrix: np.ndarray) -> np.ndarray:
        # rf mode predicts the mean of its trees but pred_contrib returns their sum
        return super()._tree_contributions(matrix) / self._fitted().num_trees()


MEMBER_TYPES: dict[str, type[Member]] = {
    m.kind: m for m in (Hedonic, XGBoostMember, RandomForestMember, LightGBMMember)
}


# --- candidates: what `train` compares, with their Optuna search spaces -------------------------


@dataclass(frozen=True)
class Candidate:
    name: str
    description: str
    defaults: dict[str, Any]
    space: Callable[[optuna.trial.BaseTrial], dict[str, Any]] | None = None

    def build(self, params: dict[str, Any] | None = None) -> Member:
        return MEMBER_TYPES[self.name]({**self.defaults, **(params or {})})


def _xgboost_space(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    return {
        "n_estimators": trial.suggest_int("n_estimators", 300, 900, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 0.03, 0.1, log=True),
        "max_depth": trial.suggest_int("max_depth", 4, 8),
        "min_child_weight": trial.suggest_float("min_child_weight", 0.5, 8, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 0.9),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.7, 1.0),
        "reg_lambda": trial.suggest_float("reg_lambda", 0.1, 10, log=True),
        "loss_delta": trial.suggest_float("loss_delta", 0.02, 0.2, log=True),
    }


def _lightgbm_space(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    return {
        "n_estimators": trial.suggest_int("n_estimators", 300, 900, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 0.03, 0.1, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 7, 48, log=True),
        "min_child_samples": trial.suggest_int("min_child_samples", 2, 30, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 0.9),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.7, 1.0),
        "reg_lambda": trial.suggest_float("reg_lambda", 0.1, 10, log=True),
        "loss_delta": trial.suggest_float("loss_delta", 0.02, 0.2, log=True),
    }


def _forest_space(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    return {
        "num_leaves": trial.suggest_int("num_leaves", 31, 255, log=True),
        "min_child_samples": trial.suggest_int("min_child_samples", 3, 20, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 0.9),
        "colsample_bynode": trial.suggest_float("colsample_bynode", 0.5, 1.0),
    }


# Defaults are the first trial of every search. The boosters' were chosen by 5-fold CV on
# Francesco's collection: 600 trees at a 0.05 learning rate score as well as 1,500 at 0.02
# (XGBoost 6.73% vs 6.72% CV MAPE) and price 2.7x faster; tree counts are capped at 900 so that
# batch scoring stays above 100,000 stones/s. 300 s of Optuna did not beat XGBoost's defaults.
CANDIDATES: dict[str, Candidate] = {
    c.name: c
    for c in (
        Candidate(
            "hedonic",
            "linear model of log price on log carat and grade steps (interpretable baseline)",
            {},
        ),
        Candidate(
            "random_forest",
            "random forest (LightGBM rf mode), 300 monotone trees",
            {
                "boosting_type": "rf",
                "n_estimators": 300,
                "num_leaves": 255,
                "min_child_samples": 3,
                "subsample": 0.8,
                "subsample_freq": 1,
                "colsample_bynode": 0.8,
            },
            _forest_space,
        ),
        Candidate(
            "xgboost",
            "gradient-boosted trees (XGBoost), near-L1 loss",
            {
                "n_estimators": 600,
                "learning_rate": 0.05,
                "max_depth": 6,
                "subsample": 0.7,
                "colsample_bytree": 1.0,
                "min_child_weight": 2.0,
                "reg_lambda": 1.0,
                "loss_delta": 0.05,
            },
            _xgboost_space,
        ),
        Candidate(
            "lightgbm",
            "gradient-boosted trees (LightGBM), near-L1 loss",
            {
                "n_estimators": 600,
                "learning_rate": 0.05,
                "num_leaves": 15,
                "min_child_samples": 5,
                "min_child_weight": 1e-3,
                "subsample": 0.7,
                "subsample_freq": 1,
                "colsample_bytree": 1.0,
                "reg_lambda": 1.0,
                "loss_delta": 0.05,
            },
            _lightgbm_space,
        ),
    )
}


# --- ranges that hold per grade: a normalized conformal predictive system -------------------------


@dataclass
class AdaptiveRange:
    """Where the true price of a stone lies, as a distribution around the model's price.

    A normalized split-conformal predictive system (Vovk et al.; what `crepes` calls a normalized
    CPS): a small LightGBM model learns each stone's difficulty sigma(x) from the out-of-fold
    errors of the training stones (it sees carat, shape and the grades, so an I1 or Fair stone
    gets a wider range than an Ideal VS1). The calibration scores
    s_i = (log true price - log predicted) / sigma(x_i) are cross-fitted: stone i is scaled by a
    spread model of SPREAD_FOLDS that never saw it (nor its twins), so every stone calibrates and
    every stone teaches difficulty; the saved spread model is refitted on all of them. A single
    half/half split left a rare grade's coverage at the mercy of the split
    (tests/test_jeweller.py::test_a_rare_hard_grade_keeps_its_coverage_whatever_the_seed).
    This is cross-validation conformal, not split conformal: the errors are out-of-fold errors of
    the tuned recipe, whose hyperparameters were chosen on the same stones, so there is no
    finite-sample guarantee; coverage is measured instead (benchmarks/accuracy.py, per grade).
    Then for a new stone, log true = log predicted + sigma(x) s with s distributed like the s_i:
    the 90% range takes the 5th and 95th percentile of s, and P(true price > a) is the share of
    scores above (log a - log predicted) / sigma(x). Written in numpy rather than with crepes
    because one stone must be priced in microseconds from a saved model that holds no pickle.
    """

    booster: Any  # lgb.Booster of log |residual|, or None: one width for every stone
    scores: np.ndarray  # sorted calibration scores
    coverage: float
    native: Any = field(default=None, repr=False, compare=False)  # compiled booster (native.py)
    FILE: ClassVar[str] = "spread.txt"

    @classmethod
    def fit(
        cls, matrix: np.ndarray, log_residuals: np.ndarray, coverage: float, seed: int
    ) -> AdaptiveRange:
        finite = np.isfinite(np.asarray(log_residuals, dtype=float))
        matrix, residuals = matrix[finite], np.asarray(log_residuals, dtype=float)[finite]
        if len(residuals) < MIN_CALIBRATION:
            raise ValueError(
                f"{len(residuals)} out-of-fold errors: a 90% range needs at least "
                f"{MIN_CALIBRATION} to be calibrated"
            )
        if len(residuals) < MIN_SPREAD_STONES:  # too few to learn difficulty: one width for all
            return cls(None, np.sort(residuals), coverage)
        target = np.log(np.abs(residuals) + 1e-3)
        scores = np.empty(len(residuals))
        # identical stones share a fold: a stone's twin must not teach the model its difficulty
        _, twin = np.unique(matrix, axis=0, return_inverse=True)
        fold = np.random.default_rng(seed).permutation(int(twin.max()) + 1)[twin] % SPREAD_FOLDS
        for k in range(SPREAD_FOLDS):
            learn, calibrate = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            spread = cls._spread_model(matrix[learn], target[learn], seed)
            scores[calibrate] = residuals[calibrate] / np.exp(
                spread.predict(matrix[calibrate], num_threads=1)
            )
        return cls(cls._spread_model(matrix, target, seed), np.sort(scores), coverage)

    @staticmethod
    def _spread_model(matrix: np.ndarray, log_abs_residuals: np.ndarray, seed: int) -> Any:
        import lightgbm as lgb

        model = lgb.LGBMRegressor(
            n_estimators=150,
            learning_rate=0.05,
            num_leaves=8,
            min_child_samples=40,
            subsample=0.8,
            subsample_freq=1,
            n_jobs=THREADS,
            verbose=-1,
            random_state=seed,
        )
        return model.fit(matrix, log_abs_residuals).booster_

    def sigma(self, matrix: np.ndarray) -> np.ndarray:
        if self.booster is None:
            return np.ones(len(matrix))
        native = self.native  # compiled for this machine (native.py), when ready
        if native is not None:
            return np.exp(np.asarray(native.predict(np.ascontiguousarray(matrix), n_jobs=1)))
        return np.exp(np.asarray(self.booster.predict(matrix, num_threads=1), dtype=float))

    def _quantile(self, level: float) -> float:
        """The conformal order statistic: for an upper end the ceil((n+1) level)-th score, for a
        lower end the floor((n+1) level)-th (clipped to the ends when n is small)."""
        n = len(self.scores)
        position = (n + 1) * level
        rank = np.ceil(position) if level >= 0.5 else np.floor(position)
        return float(self.scores[int(np.clip(rank, 1, n)) - 1])

    def bounds(self, matrix: np.ndarray, log_price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The range's ends in log price: each tail holds (1 - coverage) / 2."""
        tail = (1 - self.coverage) / 2
        sigma = self.sigma(matrix)
        low, high = self._quantile(tail), self._quantile(1 - tail)
        return log_price + sigma * low, log_price + sigma * high

    def prob_above(
        self, matrix: np.ndarray, log_price: np.ndarray, price: np.ndarray
    ) -> np.ndarray:
        """P(true price > `price`) for each stone, from the calibration scores (smoothed:
        (count above + 1/2) / (n + 1), never exactly 0 or 1)."""
        price = np.asarray(price, dtype=float)
        usable = np.isfinite(price) & (price > 0)  # no probability for a price that is not one
        safe = np.where(usable, price, 1.0)
        threshold = (np.log(safe) - log_price) / self.sigma(matrix)
        above = len(self.scores) - np.searchsorted(self.scores, threshold, side="right")
        return np.where(usable, (above + 0.5) / (len(self.scores) + 1), np.nan)

    def save(self, folder: Path) -> dict[str, Any]:
        if self.booster is not None:
            self.booster.save_model(str(folder / self.FILE))
        return {
            "file": self.FILE if self.booster is not None else None,
            "scores": [round(float(v), 6) for v in self.scores],
            "coverage": self.coverage,
        }

    @classmethod
    def load(cls, folder: Path, state: dict[str, Any]) -> AdaptiveRange:
        booster = LazyBooster(folder / state["file"]) if state.get("file") else None
        return cls(booster, np.asarray(state["scores"], dtype=float), float(state["coverage"]))


MIN_SPREAD_STONES = 400  # below this many out-of-fold errors, one width for all stones
SPREAD_FOLDS = 10  # cross-fitted calibration scores (AdaptiveRange.fit)
MIN_CALIBRATION = 20  # scores a 90% two-sided range needs (each 5% tail one score at least)


# --- the saved price model -----------------------------------------------------------------------


@dataclass
class PriceModel:
    """A weighted blend of members in log space, a conformal price range, and the stones it saw.

    `intervals` holds, per carat band (schema.CARAT_EDGES), the half-width in log price of the range
    that covered `coverage` of out-of-fold stones of that band in training (Mondrian split
    conformal): a stone's range is price x exp(+-its band's width).
    `reference` is the training collection, used for comparable stones and out-of-range warnings.
    """

    members: list[Member]
    weights: list[float]
    intervals: list[float]
    coverage: float
    reference: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)
    ranges: AdaptiveRange | None = None  # when set, the range adapts to each stone (and grade)

    FILE: ClassVar[str] = "price_model.json"
    # bump when the saved layout or the feature encoding changes: old files then fail loudly
    FORMAT: ClassVar[int] = 2  # 2: shape features instead of x, y, z; reasons
    REFERENCE: ClassVar[str] = "reference.parquet"

    @property
    def name(self) -> str:
        return "+".join(m.kind for m in self.members)

    def predict_log_matrix(self, matrix: np.ndarray) -> np.ndarray:
        total = np.zeros(len(matrix))
        for member, weight in zip(self.members, self.weights, strict=True):
            total += weight * member.predict_log_matrix(matrix)
        return total

    def predict_matrix(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(price, price_low, price_high) in dollars for encoded stones (features.ENCODED)."""
        log_price = self.predict_log_matrix(matrix)
        if self.ranges is not None:
            low, high = self.ranges.bounds(matrix, log_price)
            return np.exp(log_price), np.exp(low), np.exp(high)
        width = np.asarray(self.intervals)[schema.carat_band_index(matrix[:, CARAT])]
        return np.exp(log_price), np.exp(log_price - width), np.exp(log_price + width)

    def prob_above_matrix(self, matrix: np.ndarray, price: np.ndarray) -> np.ndarray:
        """P(the stone's market price > `price`) for encoded stones: the deal check."""
        log_price = self.predict_log_matrix(matrix)
        if self.ranges is None:  # the band widths as a normal's 90% interval
            from scipy import stats

            width = np.asarray(self.intervals)[schema.carat_band_index(matrix[:, CARAT])]
            sigma = width / stats.norm.ppf(0.5 + self.coverage / 2)
            price = np.asarray(price, dtype=float)
            usable = np.isfinite(price) & (price > 0)
            z = (np.log(np.where(usable, price, 1.0)) - log_price) / sigma
            return np.where(usable, stats.norm.sf(z), np.nan)
        return self.ranges.prob_above(matrix, log_price, price)

    def contributions_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Log-price contributions (CONTRIBUTION_COLUMNS); rows sum to predict_log_matrix."""
        total = np.zeros((len(matrix), len(CONTRIBUTION_COLUMNS)))
        for member, weight in zip(self.members, self.weights, strict=True):
            total += weight * member.contributions_matrix(matrix)
        return total

    def predict_log(self, stones: pd.DataFrame) -> np.ndarray:
        return self.predict_log_matrix(_matrix(stones))

    def predict(self, stones: pd.DataFrame) -> pd.DataFrame:
        """price, price_low and price_high in dollars for validated stones."""
        price, low, high = self.predict_matrix(_matrix(stones))
        return pd.DataFrame(
            {"price": price, "price_low": low, "price_high": high}, index=stones.index
        )

    def contributions(self, stones: pd.DataFrame) -> pd.DataFrame:
        """Log-price contributions per feature plus BASELINE (rows sum to predict_log)."""
        return contribution_frame(self.contributions_matrix(_matrix(stones)), stones.index)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        members = [
            {
                "kind": m.kind,
                "weight": w,
                "params": m.params,
                "state": m.state(),
                "file": m.save(folder),
            }
            for m, w in zip(self.members, self.weights, strict=True)
        ]
        state = {
            "format": self.FORMAT,
            "members": members,
            "intervals": self.intervals,
            "carat_edges": list(schema.CARAT_EDGES),
            "coverage": self.coverage,
            "features": list(schema.FEATURES),
            "encoded": list(features.ENCODED),
            "info": self.info,
            "ranges": self.ranges.save(folder) if self.ranges is not None else None,
        }
        (folder / self.FILE).write_text(json.dumps(state, indent=2, default=str))
        self.reference.to_parquet(folder / self.REFERENCE, index=False)
        return folder

    @classmethod
    def load(cls, folder: Path) -> PriceModel:
        state = json.loads((folder / cls.FILE).read_text())
        if state.get("format") != cls.FORMAT or state.get("encoded") != list(features.ENCODED):
            raise ModelFormatError(
                f"{folder} holds a model saved in another format (format {state.get('format')}, "
                f"this version reads {cls.FORMAT}): retrain with `appraiser train`"
            )
        members = [
            MEMBER_TYPES[m["kind"]].load(folder / m["file"], m["params"], m.get("state"))
            for m in state["members"]
        ]
        return cls(
            members=members,
            weights=[m["weight"] for m in state["members"]],
            intervals=state["intervals"],
            coverage=state["coverage"],
            reference=pd.read_parquet(folder / cls.REFERENCE),
            info=state.get("info", {}),
            ranges=AdaptiveRange.load(folder, state["ranges"]) if state.get("ranges") else None,
        )
