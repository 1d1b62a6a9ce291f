"""The candidates `train` compares: each member kind with its defaults and Optuna search space."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appraiser.models.boosters import LightGBMMember, RandomForestMember, XGBoostMember
from appraiser.models.members import Hedonic, Member

if TYPE_CHECKING:
    import optuna


# every kind of member by name: what a Candidate builds and a saved PriceModel reads back
MEMBER_TYPES: dict[str, type[Member]] = {
    m.kind: m for m in (Hedonic, XGBoostMember, RandomForestMember, LightGBMMember)
}


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
# (XGBoost 6.73% vs 6.72% CV MAPE) and price 2.7x faster; tree counts are capped at 900 a fit so
# that one fit's batch scoring stays above 100,000 stones/s (a registered booster holds two fits'
# trees, tuning.REGISTERED_SEEDS: up to 1,800, in twice one fit's scoring time). 300 s of Optuna
# did not beat XGBoost's defaults.
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
