"""Candidate models, their search spaces, and the saved price model.

Every member learns log price from validated stones and encodes them itself (features.encode), so
the saved model takes the same raw columns at serving time as at training time. Boosters are saved
in their own native formats and the hedonic model as JSON coefficients: no pickles. In parts:

- `members`: the Member interface, contributions, scoring threads, the hedonic member;
- `boosters`: the XGBoost, LightGBM and random-forest members;
- `candidates`: what training compares, with defaults and Optuna search spaces;
- `ranges`: the adaptive (conformal) price range;
- `price_model`: the blend that is saved, registered and served (PriceModel).
"""

from __future__ import annotations

from appraiser.models.boosters import (
    Accelerated,
    BoosterMember,
    LazyBooster,
    LightGBMMember,
    RandomForestMember,
    XGBoostMember,
    near_l1,
)
from appraiser.models.candidates import CANDIDATES, MEMBER_TYPES, Candidate
from appraiser.models.members import (
    BASELINE,
    CONTRIBUTION_COLUMNS,
    PREDICT_THREADS,
    THREADS,
    Hedonic,
    Member,
    contribution_frame,
    predict_threads,
)
from appraiser.models.price_model import ModelFormatError, PriceModel
from appraiser.models.ranges import (
    MIN_CALIBRATION,
    MIN_SPREAD_STONES,
    SPREAD_FOLDS,
    AdaptiveRange,
)

__all__ = [
    "BASELINE",
    "CANDIDATES",
    "CONTRIBUTION_COLUMNS",
    "MEMBER_TYPES",
    "MIN_CALIBRATION",
    "MIN_SPREAD_STONES",
    "PREDICT_THREADS",
    "SPREAD_FOLDS",
    "THREADS",
    "Accelerated",
    "AdaptiveRange",
    "BoosterMember",
    "Candidate",
    "Hedonic",
    "LazyBooster",
    "LightGBMMember",
    "Member",
    "ModelFormatError",
    "PriceModel",
    "RandomForestMember",
    "XGBoostMember",
    "contribution_frame",
    "near_l1",
    "predict_threads",
]
