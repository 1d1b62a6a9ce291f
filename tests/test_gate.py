"""The gate at full power (issue 23): double cross-fitting and the churn rule. Each test names
the defect it guards against; each failed on the code before the fix."""

from __future__ import annotations

import numpy as np
import pandas as pd

from appraiser import challenge, features, gate, lineage, schema
from appraiser.models import CANDIDATES, PriceModel


class Recorded:
    """A fold model that remembers the stones it trained on and the stones it priced."""

    def __init__(self, log: list, stones: pd.DataFrame) -> None:
        y_log = features.log_price(stones[schema.TARGET])
        member = CANDIDATES["hedonic"].build().fit(stones, y_log)
        self.model = PriceModel(
            [member], [1.0], [0.3] * len(schema.CARAT_LABELS), 0.9, stones[list(schema.COLUMNS)]
        )
        self.trained = lineage.stone_keys(stones)
        self.log = log

    def predict(self, stones: pd.DataFrame) -> pd.DataFrame:
        self.log.append((self.trained, lineage.stone_keys(stones)))
        return self.model.predict(stones)


def test_double_cross_fitting_prices_every_stone_twice_out_of_fold(public):
    """Defect: the champion priced stones with itself, so the stones it had trained on (the whole
    collection, on the README's flow) could never judge, and most labelled stones sat idle."""
    judged = public.sample(400, random_state=5).reset_index(drop=True)
    twins = judged.head(20).assign(price=judged["price"].head(20) * 1.1)  # other prices
    judged = pd.concat([judged, twins], ignore_index=True)
    others = public.drop(public.sample(400, random_state=5).index).sample(300, random_state=6)
    champion_stones = pd.concat([judged.iloc[::2], others.iloc[:150]], ignore_index=True)
    challenger_stones = pd.concat([judged, others.iloc[150:]], ignore_index=True)
    logs: dict[str, list] = {"champion": [], "challenger": []}
    priced = challenge.cross_fitted_prices(
        judged,
        (lambda s: Recorded(logs["challenger"], s), challenger_stones),  # type: ignore[arg-type,return-value]
        (lambda s: Recorded(logs["champion"], s), champion_stones),  # type: ignore[arg-type,return-value]
        folds=5,
    )
    assert len(priced) == len(judged)
    assert priced[challenge.PRICED].notna().all().all()
    assert (priced["champion_price"] != priced["challenger_price"]).all()  # two recipes' prices
    keys = lineage.stone_keys(judged)
    for side, log in logs.items():
        assert len(log) == 5, side
        priced_by = np.concatenate([p for _, p in log])
        assert sorted(priced_by) == sorted(keys), side  # every stone priced once per side
        for trained, priced_keys in log:  # never by a model that saw it or its twin
            assert not np.isin(priced_keys, trained).any(), side
        # a training stone that does not judge stays in every fold model
        extra = lineage.stone_keys(others.iloc[:150] if side == "champion" else others.iloc[150:])
        assert all(np.isin(extra, trained).all() for trained, _ in log), side


def test_the_gate_cross_fits_on_ten_folds_by_default():
    """tests/conftest.py lowers the folds to 5 in this process for speed; the product's gate, what
    a fresh interpreter runs, refits each recipe on 10 folds."""
    import subprocess
    import sys

    code = "from appraiser import challenge; print(challenge.CROSS_FIT_FOLDS)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "10"


def test_only_unsealed_appraisals_judge(public):
    stones = public.sample(2000, random_state=3).assign(feedback_id=np.nan)
    stones.iloc[:50, stones.columns.get_loc("feedback_id")] = 1.0
    judge = challenge.may_judge(stones)
    sealed = lineage.roles(stones) == "sealed"
    assert not judge[:50].any() and not judge[sealed].any()
    assert judge[50:][~sealed[50:]].all()


class Priced:
    """Prices each stone at its price times 1 + `error`, drawn per (depth, table): growing a stone
    or raising a grade keeps them, so no price falls (the sanity checks pass)."""

    def __init__(self, seed: int, shift: float) -> None:
        self.seed, self.shift = seed, shift

    def predict(self, stones: pd.DataFrame) -> pd.DataFrame:
        shape = stones[["depth", "table"]].astype(float).round(6)
        hashed = pd.util.hash_pandas_object(shape, index=False).to_numpy()
        u = (hashed % np.uint64(1_000_003)).astype(float) / 1_000_003
        v = (hashed % np.uint64(999_983)).astype(float) / 999_983
        error = 0.02 + 0.08 * u - self.shift * (1 + 0.2 * (v - 0.5))
        price = stones["price"].to_numpy(float) * (1 + error)
        # 90% of the ranges hold the price (prices are above it: the others start above price)
        holds = (hashed % np.uint64(1_009)).astype(float) / 1_009 < 0.9
        return pd.DataFrame(
            {
                "price": price,
                "price_low": np.where(holds, price / 1.25, price * 1.01),
                "price_high": price * 1.25,
            },
            index=stones.index,
        )


def test_a_near_tie_is_not_promoted_however_narrow_its_interval(public):
    """Defect (churn): a challenger 0.01 point better on thousands of stones cleared a lower
    bound above 0 and replaced the champion, for a gain nobody could notice."""
    stones = public.sample(4000, random_state=11)
    decision = gate.decide(
        Priced(0, shift=0.0001),  # type: ignore[arg-type]
        np.empty(0, dtype=np.uint64),
        stones,
        champion_version="1",
        champion=Priced(0, shift=0.0),  # type: ignore[arg-type]
        champion_lineage=lineage.Lineage("1", np.empty(0, dtype=np.uint64), "t", [], None, None),
    )
    comparison = decision.comparison
    assert comparison is not None and comparison.low > 0, decision.reason  # significant, tiny:
    assert 0 < comparison.improvement < 0.02
    assert not decision.promote
    assert "blocked by improvement" in decision.reason and "reach 0.02" in decision.reason
    assert gate.GatePolicy().min_gain == 0.02


def _cross_fitted(public: pd.DataFrame, fold_gains: list[float]) -> pd.DataFrame:
    """3,000 stones as cross_fitted_prices returns them: the champion's fold models price each
    stone 5-9% off, the challenger's better by its fold pair's gain (points) and a little noise."""
    stones = public.sample(3000, random_state=21).reset_index(drop=True)
    rng = np.random.default_rng(21)
    fold = np.arange(len(stones)) % len(fold_gains)
    champion_off = rng.uniform(0.05, 0.09, len(stones))
    challenger_off = (
        champion_off - (np.asarray(fold_gains)[fold] + rng.normal(0, 0.5, len(stones))) / 100
    )
    price = stones["price"].to_numpy(float)
    return stones.assign(
        champion_price=price * (1 + champion_off),
        challenger_price=price * (1 + challenger_off),
        challenger_low=price * 0.8,
        challenger_high=price * 1.2,
        fold=fold,
    )


def _decide_on(priced: pd.DataFrame) -> gate.Decision:
    return gate.decide(
        Priced(0, shift=0.0),  # type: ignore[arg-type]  # only the sanity checks price with it
        lineage.stone_keys(priced),
        priced.iloc[:0],
        champion_version="1",
        champion=Priced(0, shift=0.0),  # type: ignore[arg-type]
        champion_lineage=lineage.Lineage("1", np.empty(0, dtype=np.uint64), "t", [], None, None),
        cross_fitted=priced,
        policy=gate.GatePolicy(coverage_band=(0.0, 100.0)),
    )


def test_the_interval_carries_the_fit_luck_the_fold_pairs_show(public):
    """Defect: the interval covered the judged stones' noise only, not the luck of the two
    registered fits (which stones, which bagging draw), so at Francesco's size 7.8% of challengers
    no better than the champion were promoted (benchmarks/gate_oc.py, 218 such draws; goal 2.5%).
    Here the ten fold pairs' gains differ far beyond their stones' noise (SD 0.4 point around
    +0.2): one registered pair may as well be 0.4 point worse, so it must not be promoted."""
    lucky = _decide_on(
        _cross_fitted(public, [0.6, -0.4, 0.5, -0.3, 0.7, -0.2, 0.4, -0.1, 0.6, 0.2])
    )
    c = lucky.comparison
    assert c is not None and 0.15 < c.improvement < 0.25
    assert 0.3 < c.fit_luck < 0.6  # tau ~0.39, times sqrt(1 + 10 x 0.1^2)
    assert c.low < 0 < c.high, lucky.reason
    assert not lucky.promote and "fit luck" in lucky.reason
    steady = _decide_on(_cross_fitted(public, [0.2] * 10))  # the same gain, no luck between pairs
    s = steady.comparison
    assert s is not None and s.fit_luck < 0.05 and s.low > 0.1, steady.reason
    assert steady.promote, steady.reason


def test_fit_luck_recovers_the_spread_between_fold_pairs():
    """The random-effects estimate recovers a known between-pair SD, and finds ~none in noise."""
    rng = np.random.default_rng(3)
    fold = np.repeat(np.arange(10), 2000)
    found = []
    for _ in range(200):
        shifts = rng.normal(0, 0.1, 10)
        found.append(gate.fit_luck(shifts[fold] + rng.normal(0, 2, len(fold)), fold))
    # tau^2 (1 + 0.1) with tau = 0.1: the SD's estimate is noisy with 10 pairs, its mean square not
    assert 0.8 < np.mean(np.square(found)) / (0.01 * 1.1) < 1.25
    noise = [gate.fit_luck(rng.normal(0, 2, len(fold)), fold) for _ in range(200)]
    assert np.mean(np.square(noise)) < 0.1 * 0.01 * 1.1  # pure stone noise: hardly any luck
    assert gate.fit_luck(rng.normal(0, 2, 50), np.full(50, -1)) == 0.0  # nothing cross-fitted
