"""The tree members: XGBoost, LightGBM and LightGBM's random forest, all monotone.

Boosters are saved in their own native formats (no pickles); a LightGBM booster loads its trees
only when first used (LazyBooster), since the compiled trees (appraiser.fast) need just the text.
"""

from __future__ import annotations

import re
import threading
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np
import pandas as pd

from appraiser import features
from appraiser.models.members import (
    CARAT,
    PREDICT_THREADS,
    THREADS,
    Member,
    _by_feature,
    _matrix,
    predict_threads,
)

if TYPE_CHECKING:  # imported where used: a champion that needs neither loads faster
    import lightgbm as lgb
    import xgboost as xgb

SHAP_COST = 1_000  # TreeSHAP per row, in predictions per row (measured: ~5 ms vs ~5 us)
# Up to this many stones, XGBoost trees are evaluated by treelite's GTIL: XGBoost's per-call cost
# dominates small calls (one stone, 322 trees of depth 8: 261 us by XGBoost, 83 us by GTIL; at 4
# stones 328 vs 204; at 8, XGBoost is faster). Same trees, same float32 arithmetic, same values.
SMALL_CALL_ROWS = 4


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

    def fit_averaged(self, stones: pd.DataFrame, log_price: np.ndarray, seeds: int) -> Member:
        """`seeds` fits with different bagging (row and column sampling) seeds, kept as one
        booster of all their trees, each tree's values divided by `seeds`: the same prices and
        TreeSHAP reasons as the fits' mean, served like any other booster. One fit's MAPE on
        unseen stones moves by about 0.023 point with its seed; the mean of 2 fits' by 0.014, and
        it is 0.025 point better (benchmarks/fit_luck.py)."""
        self.fit(stones, log_price)
        if seeds > 1:
            first = self.params.get("random_state") or 0  # the first fit keeps the recipe's seed
            others = [
                type(self)({**self.params, "random_state": first + k}).fit(stones, log_price)
                for k in range(1, seeds)
            ]  # the same stones: the same centre and mean log carat
            matrix = _matrix(stones)
            mine = self.predict_log_matrix(matrix)
            # a recipe that samples nothing fits the same trees whatever the seed: kept single
            if any(not np.array_equal(o.predict_log_matrix(matrix), mine) for o in others):
                self._average_with(others)
        return self

    @abstractmethod
    def _average_with(self, others: list[BoosterMember]) -> None:
        """Replace the trees by the mean of theirs and `others`' (fitted on the same stones)."""

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

    def _average_with(self, others: list[BoosterMember]) -> None:
        import json

        import xgboost as xgb

        boosters = [m._fitted() for m in (self, *others)]  # type: ignore[attr-defined]
        models = [json.loads(b.save_raw("json")) for b in boosters]
        for model in models:  # one tree per round, one output: what the merge below assumes
            forest = model["learner"]["gradient_booster"]["model"]
            if forest["gbtree_model_param"]["num_parallel_tree"] != "1" or any(forest["tree_info"]):
                raise ValueError("an XGBoost forest of parallel trees or several outputs")
            # the first model's base score, features and objective stand for all
            for key in ("learner_model_param", "objective", "feature_names"):
                if model["learner"].get(key) != models[0]["learner"].get(key):
                    raise ValueError(f"XGBoost boosters whose {key} differ")
        trees: list[dict[str, Any]] = []
        for model in models:
            for tree in model["learner"]["gradient_booster"]["model"]["trees"]:
                leaves = [i for i, child in enumerate(tree["left_children"]) if child == -1]
                for i in leaves:  # a leaf's value is its split_condition; a split's, a threshold
                    tree["split_conditions"][i] /= len(models)
                tree["base_weights"] = [w / len(models) for w in tree["base_weights"]]
                tree["id"] = len(trees)
                trees.append(tree)
        merged = models[0]
        forest = merged["learner"]["gradient_booster"]["model"]
        forest["trees"], forest["tree_info"] = trees, [0] * len(trees)
        forest["gbtree_model_param"]["num_trees"] = str(len(trees))
        forest["iteration_indptr"] = list(range(len(trees) + 1))
        booster = xgb.Booster()
        booster.load_model(bytearray(json.dumps(merged).encode()))
        self.booster = booster
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


@dataclass(frozen=True)
class Accelerated:
    """What appraiser.fast attaches to a LightGBM forest once it gives LightGBM's answers on the
    probe stones (fast/probe.py): the trees compiled for this machine and their TreeSHAP tables,
    either None until made. Replaced whole, never changed: a request reads it once."""

    compiled: Any = None  # lleaves' model: predict(matrix, n_jobs)
    tables: Any = None  # fast.tables.LeafTables: contributions(matrix)


def average_forests(texts: list[str]) -> str:
    """LightGBM boosters' texts of one shape (same features, one output) as one booster whose
    output is their mean: every tree kept, renumbered, its leaf and node values divided by the
    number of boosters. TreeSHAP values add over trees: the reasons are the boosters' mean too."""
    head, _, tail = _split_trees(texts[0])
    for text in texts:  # what dividing leaf values would not average
        if "\naverage_output\n" in text or "\nis_linear=1\n" in text:
            raise ValueError("a random forest or linear trees: their mean is not their trees'")
        if _shape(text) != _shape(texts[0]):
            raise ValueError(f"boosters of other shapes: {_shape(text)} != {_shape(texts[0])}")
    trees = [
        "\n".join(_scaled(line, len(texts)) for line in tree.split("\n")[1:])  # not "Tree=i"
        for text in texts
        for tree in _split_trees(text)[1]
    ]
    numbered = [f"Tree={i}\n{tree}" for i, tree in enumerate(trees)]
    sizes = "tree_sizes=" + " ".join(str(len(tree.encode())) for tree in numbered)
    head = re.sub(r"^tree_sizes=.*$", sizes, head, count=1, flags=re.MULTILINE)
    return head + "".join(numbered) + tail


_SHAPE_KEYS = (
    "max_feature_idx",
    "feature_names",
    "num_class",
    "num_tree_per_iteration",
    "objective",
)


def _shape(text: str) -> dict[str, str]:
    """What must be alike for a LightGBM text's trees to join another's."""
    lines = (line.split("=", 1) for line in text[: text.index("\nTree=0\n")].splitlines())
    return {kv[0]: kv[1] for kv in lines if len(kv) == 2 and kv[0] in _SHAPE_KEYS}


def _split_trees(text: str) -> tuple[str, list[str], str]:
    """A LightGBM text's header, its trees' texts (each exactly its size in the header's
    tree_sizes) and what follows them."""
    start = text.index("\nTree=0\n") + 1
    head = text[:start]
    sizes = re.search(r"^tree_sizes=(.*)$", head, re.MULTILINE)
    if sizes is None:
        raise ValueError("a LightGBM model text without tree_sizes")
    trees = []
    for size in map(int, sizes.group(1).split()):
        trees.append(text[start : start + size])
        start += size
    return head, trees, text[start:]


def _scaled(line: str, models: int) -> str:
    """A tree's line with its leaf or node values divided by `models`; any other line as it is."""
    if not line.startswith(("leaf_value=", "internal_value=")):
        return line
    key, values = line.split("=", 1)
    return key + "=" + " ".join(repr(float(v) / models) for v in values.split())


class LazyBooster:
    """A saved LightGBM booster, read from its text file when first used.

    Scoring with the trees compiled for this machine (appraiser.fast) needs only the text: importing
    LightGBM (and SciPy with it) and parsing 600 trees was a fifth of `appraiser predict`'s
    start-up. Anything else asked of it (predict, dump_model, ...) loads the booster once.
    """

    def __init__(self, path: Path) -> None:
        self.text = path.read_text()
        self._booster: lgb.Booster | None = None
        self._lock = threading.Lock()
        self._calls = threading.Lock()

    def model_to_string(self) -> str:
        return self.text

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        """LightGBM's predict, one call at a time: concurrent calls on one booster corrupt its
        memory when one asks for contributions (LightGBM issue 5482): a request explained while
        the TreeSHAP tables are checked in the background crashed a test server."""
        booster = self.loaded
        with self._calls:
            return booster.predict(*args, **kwargs)

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
        if name.startswith("__") or name in ("_booster", "_lock", "_calls", "text", "loaded"):
            raise AttributeError(name)  # never recurse, whatever failed
        return getattr(self.loaded, name)


class LightGBMMember(BoosterMember):
    """Gradient-boosted trees (LightGBM) with monotone constraints."""

    kind = "lightgbm"
    file = "lightgbm.txt"
    booster: lgb.Booster | None = None
    threads: int = THREADS
    accelerated: Accelerated | None = None  # attached by appraiser.fast.accelerate
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
        self.accelerated = None

    def _average_with(self, others: list[BoosterMember]) -> None:
        import lightgbm as lgb

        texts = [m._fitted().model_to_string() for m in (self, *others)]  # type: ignore[attr-defined]
        self.booster = lgb.Booster(model_str=average_forests(texts))
        self.accelerated = None

    def _fitted(self) -> lgb.Booster:
        if self.booster is None:
            raise RuntimeError(f"{self.kind} model is not fitted")
        return self.booster

    def _threads(self, rows: int, per_row_cost: int = 1) -> int:
        return predict_threads(rows, per_row_cost) if self.threads > 1 else self.threads

    def _trees(self, matrix: np.ndarray) -> np.ndarray:
        threads = self._threads(len(matrix))
        fast = self.accelerated  # read once: a compile finishing meanwhile swaps it whole
        if fast is not None and fast.compiled is not None:
            return np.asarray(fast.compiled.predict(np.ascontiguousarray(matrix), n_jobs=threads))
        return np.asarray(self._fitted().predict(matrix, num_threads=threads), dtype=float)

    def _tree_contributions(self, matrix: np.ndarray) -> np.ndarray:
        fast = self.accelerated  # read once: made meanwhile, it is swapped in whole
        if fast is not None and fast.tables is not None and not np.isnan(matrix).any():
            return np.asarray(fast.tables.contributions(matrix))  # NaN: LightGBM's own rule
        threads = self._threads(len(matrix), SHAP_COST)
        raw = self._fitted().predict(matrix, pred_contrib=True, num_threads=threads)
        return np.asarray(raw, dtype=float)

    def _save_trees(self, path: Path) -> None:
        self._fitted().save_model(str(path))

    def _load_trees(self, path: Path) -> None:
        self.booster = cast("lgb.Booster", LazyBooster(path))  # behaves as one: see LazyBooster
        self.accelerated = None
        self.threads = PREDICT_THREADS


class RandomForestMember(LightGBMMember):
    """A random forest (LightGBM's rf mode): bagged deep trees, monotone, explained by TreeSHAP."""

    kind = "random_forest"
    file = "random_forest.txt"
    monotone_method = "basic"  # deep trees: "advanced" costs minutes here

    def fit_averaged(self, stones: pd.DataFrame, log_price: np.ndarray, seeds: int) -> Member:
        return self.fit(stones, log_price)  # a forest is already a mean of bagged trees

    def _tree_contributions(self, matrix: np.ndarray) -> np.ndarray:
        # rf mode predicts the mean of its trees but pred_contrib returns their sum
        return super()._tree_contributions(matrix) / self._fitted().num_trees()
