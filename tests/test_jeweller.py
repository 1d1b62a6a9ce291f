"""Prices a jeweller can defend (issue 11): ranges that hold per grade, prices that never fall
along the path a real stone takes, reasons in a jeweller's terms, grade what-ifs, the deal check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from appraiser import data, evaluate, explain, features, schema
from appraiser.api import create_app
from appraiser.config import settings
from appraiser.models import AdaptiveRange
from appraiser.predict import Appraiser
from appraiser.scoring import score_frame


def _heteroscedastic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encoded-like matrices whose errors are 6x wider for one clarity level."""
    rng = np.random.default_rng(seed)
    matrix = np.zeros((n, len(features.ENCODED)))
    matrix[:, 0] = rng.uniform(0.3, 2.0, n)
    clarity = rng.integers(0, 8, n)
    matrix[:, features.ENCODED.index("clarity")] = clarity
    sigma = np.where(clarity == 0, 0.30, 0.05)
    return matrix, rng.normal(0, sigma), clarity


def test_ranges_hold_for_a_hard_grade_and_an_easy_one() -> None:
    """Defect: one width per carat band covered 71% of I1 stones; the adaptive range learns
    that a grade is harder and holds ~90% for it and for the others."""
    matrix, residuals, _ = _heteroscedastic(6000, 1)
    ranges = AdaptiveRange.fit(matrix, residuals, 0.9, seed=0)
    test, truth, clarity = _heteroscedastic(20000, 2)
    low, high = ranges.bounds(test, np.zeros(len(test)))
    inside = (truth >= low) & (truth <= high)
    for level in (0, 5):
        assert 0.86 <= inside[clarity == level].mean() <= 0.94, level
    flat = np.quantile(np.abs(residuals), 0.9)  # the old way: one width for all
    assert (np.abs(truth[clarity == 0]) <= flat).mean() < 0.5


def test_a_rare_hard_grade_keeps_its_coverage_whatever_the_seed() -> None:
    """Defect: the spread model learnt from one half of the errors and calibrated on the other, so
    a rare grade's coverage hung on the split (I1 78-87% from one seed to the next on public
    stones); cross-fitted scores let every stone teach difficulty and calibrate."""
    rng = np.random.default_rng(7)
    n = 3000
    matrix = np.zeros((n, len(features.ENCODED)))
    matrix[:, 0] = rng.uniform(0.3, 2.0, n)
    rare = rng.random(n) < 0.04  # ~120 stones of a hard grade, as I1 in the collection
    matrix[:, features.ENCODED.index("clarity")] = np.where(rare, 0, 1 + rng.integers(0, 7, n))
    residuals = rng.normal(0, np.where(rare, 0.25, 0.06))
    test = matrix[rare].repeat(40, axis=0)
    truth = np.random.default_rng(8).normal(0, 0.25, len(test))
    coverages = []
    for seed in range(6):
        low, high = AdaptiveRange.fit(matrix, residuals, 0.9, seed=seed).bounds(
            test, np.zeros(len(test))
        )
        coverages.append(((truth >= low) & (truth <= high)).mean())
    assert min(coverages) >= 0.845 and max(coverages) - min(coverages) <= 0.03, coverages


def test_the_deal_probability_is_calibrated_and_falls_with_the_asking_price(tmp_path) -> None:
    matrix, residuals, _ = _heteroscedastic(6000, 3)
    ranges = AdaptiveRange.fit(matrix, residuals, 0.9, seed=0)
    test, truth, _ = _heteroscedastic(20000, 4)
    asking = np.exp(np.random.default_rng(5).normal(0, 0.15, len(test)))
    chance = ranges.prob_above(test, np.zeros(len(test)), asking)
    above = truth > np.log(asking)
    for lo in np.arange(0, 1, 0.2):
        mask = (chance >= lo) & (chance < lo + 0.2)
        if mask.sum() >= 500:
            assert abs(chance[mask].mean() - above[mask].mean()) < 0.05
    one = test[:1].repeat(3, axis=0)
    falling = ranges.prob_above(one, np.zeros(3), np.array([0.5, 1.0, 2.0]))
    assert falling[0] > falling[1] > falling[2] and falling[2] > 0 and falling[0] < 1
    ranges.save(tmp_path)
    again = AdaptiveRange.load(tmp_path, ranges.save(tmp_path))
    assert np.allclose(again.sigma(test[:50]), ranges.sigma(test[:50]))


def _tails_by_carat(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Errors of the same typical size whose tails differ by carat: normal below 1.5 ct, Student
    t (1.5 df) above; a scale per stone (sigma) cannot even out a difference of shape."""
    rng = np.random.default_rng(seed)
    matrix = np.zeros((n, len(features.ENCODED)))
    matrix[:, features.ENCODED.index("carat")] = rng.uniform(0.3, 2.5, n)
    big = matrix[:, 0] >= 1.5
    errors = np.where(big, 0.03 * rng.standard_t(1.5, n), rng.normal(0, 0.06, n))
    return matrix, errors, schema.carat_band_index(matrix[:, 0])


def test_the_range_holds_in_every_carat_band() -> None:
    """Defect: one distribution of scores for every stone covered 97% of public stones of 2 ct
    and more; each carat band now keeps its own scores (Mondrian), for the range and the deal."""
    matrix, errors, _ = _tails_by_carat(8000, 1)
    ranges = AdaptiveRange.fit(matrix, errors, 0.9, seed=1)
    test, truth, band = _tails_by_carat(30000, 2)
    zero = np.zeros(len(test))

    def per_band(model: AdaptiveRange) -> list[float]:
        low, high = model.bounds(test, zero)
        inside = (truth >= low) & (truth <= high)
        return [float(inside[band == b].mean()) for b in range(len(schema.CARAT_LABELS))]

    pooled = AdaptiveRange(ranges.booster, ranges.scores, 0.9)  # one distribution for all
    assert min(per_band(pooled)) < 0.87 and max(per_band(pooled)) > 0.92  # the example bites
    assert all(0.875 <= c <= 0.925 for c in per_band(ranges)), per_band(ranges)
    _, high = ranges.bounds(test, zero)
    chance = ranges.prob_above(test, zero, np.exp(high))  # P(above the range's top) ~ 5%
    for b in range(len(schema.CARAT_LABELS)):
        rows = band == b
        # within 3 standard errors of a 5% tail: the band's calibration scores and its test stones
        se = np.sqrt(0.05 * 0.95 * (1 / len(ranges.band_scores[b]) + 1 / rows.sum()))
        assert abs(chance[rows].mean() - (truth[rows] > high[rows]).mean()) < 3 * se, b


def test_short_carat_bands_merge_into_their_smaller_neighbour() -> None:
    from appraiser.models.ranges import MIN_BAND_SCORES, carat_bands

    def carats(*counts: int) -> np.ndarray:  # counts per band of schema.CARAT_EDGES
        middles = (0.3, 0.7, 1.2, 1.7, 2.5)
        return np.repeat(middles[: len(counts)], counts)

    assert MIN_BAND_SCORES == 200
    assert carat_bands(carats(900, 900, 600, 300, 200)) == [0.5, 1.0, 1.5, 2.0]
    # 2 ct and more short: into 1.5-2 ct, its only neighbour
    assert carat_bands(carats(900, 900, 600, 300, 120)) == [0.5, 1.0, 1.5]
    # 1.5-2 ct short: into the smaller neighbour (2 ct and more), which then has enough
    assert carat_bands(carats(900, 900, 600, 150, 120)) == [0.5, 1.0, 1.5]
    assert carat_bands(carats(900, 900, 90, 150, 400)) == [0.5, 1.0, 2.0]
    assert carat_bands(carats(150, 900, 600, 300, 200)) == [1.0, 1.5, 2.0]  # lightest: upwards
    # a chain of short bands ends as one band of them
    assert carat_bands(carats(900, 80, 50, 40, 30)) == [0.5]
    assert carat_bands(carats(900, 60, 50, 40, 30)) == []  # still short together: into the rest
    assert carat_bands(carats(60, 50, 40, 30, 10)) == []  # too few stones: one band


def _log_abs_booster(matrix: np.ndarray, errors: np.ndarray, path: Path) -> Any:
    """A spread model as saved before E[r^2]: a LightGBM booster of log |r|, written to `path`."""
    import lightgbm as lgb

    booster = lgb.LGBMRegressor(n_estimators=30, num_leaves=8, verbose=-1).fit(
        matrix, np.log(np.abs(errors) + 1e-3)
    )
    booster.booster_.save_model(str(path))
    return booster.booster_


def test_ranges_saved_in_older_formats_load_and_price_as_before(tmp_path: Path) -> None:
    """A range saved with one list of scores keeps its one distribution, one saved with
    "band_scores" its bands; both read their spread model as log |r| (sigma = exp of it): the
    same ends (the conformal order statistics of the scores) and the same deal probabilities."""
    matrix, errors, _ = _tails_by_carat(3000, 3)
    banded = AdaptiveRange.fit(matrix, errors, 0.9, seed=0)
    old_booster = _log_abs_booster(matrix, errors, tmp_path / "spread.txt")
    test, _, _ = _tails_by_carat(500, 4)
    sigma = np.exp(old_booster.predict(test))
    asking = np.exp(np.random.default_rng(5).normal(0, 0.1, len(test)))
    zero = np.zeros(len(test))

    scores = np.sort(banded.scores)  # before the bands: one distribution
    n = len(scores)
    old = {"file": "spread.txt", "scores": [float(v) for v in scores], "coverage": 0.9}
    loaded = AdaptiveRange.load(tmp_path, old)
    low, high = scores[int(np.floor((n + 1) * 0.05)) - 1], scores[int(np.ceil((n + 1) * 0.95)) - 1]
    got_low, got_high = loaded.bounds(test, zero)
    np.testing.assert_allclose(got_low, sigma * low, rtol=1e-9)
    np.testing.assert_allclose(got_high, sigma * high, rtol=1e-9)
    above = n - np.searchsorted(scores, np.log(asking) / sigma, side="right")
    np.testing.assert_allclose(loaded.prob_above(test, zero, asking), (above + 0.5) / (n + 1))

    bands = [np.sort(b) for b in banded.band_scores]  # with the bands, before E[r^2]
    edges = [0.5, 1.0, 1.5, 2.0]
    assert banded.edges == edges
    state = {"file": "spread.txt", "carat_edges": edges, "coverage": 0.9}
    loaded = AdaptiveRange.load(tmp_path, {**state, "band_scores": [list(b) for b in bands]})
    band = np.searchsorted(edges, test[:, 0], side="right")
    tail = (1 - 0.9) / 2  # as the range computes it (0.05 less a rounding)
    lows = np.array([b[int(np.floor((len(b) + 1) * tail)) - 1] for b in bands])
    tops = np.array([b[int(np.ceil((len(b) + 1) * (1 - tail))) - 1] for b in bands])
    got_low, got_high = loaded.bounds(test, zero)
    np.testing.assert_allclose(got_low, sigma * lows[band], rtol=1e-9)
    np.testing.assert_allclose(got_high, sigma * tops[band], rtol=1e-9)


def test_a_saved_range_comes_back_as_it_was(tmp_path: Path) -> None:
    matrix, errors, _ = _tails_by_carat(3000, 3)
    banded = AdaptiveRange.fit(matrix, errors, 0.9, seed=0)
    state = banded.save(tmp_path)
    assert len(state["bands"]) == 5 and state["carat_edges"] == [0.5, 1.0, 1.5, 2.0]
    assert state["spread"] == "squared" and "band_scores" not in state  # older readers fail
    test, _, _ = _tails_by_carat(500, 4)
    zero = np.zeros(len(test))
    again = AdaptiveRange.load(tmp_path, state)
    assert again.edges == banded.edges
    np.testing.assert_allclose(again.sigma(test), banded.sigma(test), rtol=1e-9)
    np.testing.assert_allclose(again.bounds(test, zero), banded.bounds(test, zero), atol=1e-6)
    np.testing.assert_allclose(again.scores, banded.scores, atol=1e-6)


def _tails_by_grade(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two cut grades whose typical error is alike but whose tails are not: normal errors for
    one, Student t (4 df) for the other, as Ideal's tails are heavier than Premium's."""
    rng = np.random.default_rng(seed)
    matrix = np.zeros((n, len(features.ENCODED)))
    matrix[:, features.ENCODED.index("carat")] = rng.uniform(0.3, 1.4, n)
    grade = rng.integers(0, 2, n)
    matrix[:, features.ENCODED.index("cut")] = grade
    errors = np.where(grade == 1, 0.04 * rng.standard_t(4, n), rng.normal(0, 0.05, n))
    return matrix, errors, grade


def test_grades_with_heavier_tails_keep_their_coverage() -> None:
    """Defect: sigma(x) learnt as the mean of log |r| follows a grade's many small errors, not
    its tails, so the heavier-tailed grade got 88% and the other 92% (Ideal 87.6% against
    Premium 91.8% on the collection); sigma(x)^2 = E[r^2 | x] weighs the tails."""
    matrix, errors, _ = _tails_by_grade(6000, 0)
    ranges = AdaptiveRange.fit(matrix, errors, 0.9, seed=0)
    test, truth, grade = _tails_by_grade(30000, 100)
    low, high = ranges.bounds(test, np.zeros(len(test)))
    inside = (truth >= low) & (truth <= high)
    normal, heavy = inside[grade == 0].mean(), inside[grade == 1].mean()  # 15,000 stones each
    assert 0.88 <= normal <= 0.92 and 0.88 <= heavy <= 0.92, (normal, heavy)
    assert abs(normal - heavy) <= 0.02, (normal, heavy)


def test_verdicts() -> None:
    assert explain.deal(1000, 0.9)["verdict"] == "below market"
    assert explain.deal(1000, 0.5)["verdict"] == "fair"
    assert explain.deal(1000, 0.1)["verdict"] == "above market"
    assert "90%" in explain.deal(1000, 0.9)["message"]


def test_a_heavier_stone_never_costs_less_along_its_real_path(trained, public) -> None:
    """Defect: 2% heavier with the measurements scaled, 321 of 3,000 stones got cheaper."""
    model = Appraiser.champion().model
    sample = public.sample(3000, random_state=12)
    base = model.predict(sample)["price"].to_numpy()
    grown = model.predict(features.heavier(sample, 1.02))["price"].to_numpy()
    assert int((grown < base * (1 - 1e-9)).sum()) == 0


def test_reasons_group_size_and_add_up(trained, public) -> None:
    """Defect: size was split between carat, x, y and z, the credit moving between them."""
    appraiser = Appraiser.champion()
    stones = public.sample(50, random_state=13)[list(schema.FEATURES)].to_dict(orient="records")
    answers = appraiser.appraise(stones, explain=True)
    for answer in answers:
        assert list(answer["contributions"]) == list(features.REASONS)
        total = answer["baseline"] + sum(answer["contributions"].values())
        assert total == pytest.approx(answer["price"], abs=0.011)
        for grade in schema.GRADE_COLUMNS:
            better, worse = answer["what_if"][grade]["better"], answer["what_if"][grade]["worse"]
            if better:
                assert better["price"] >= answer["price"] * (1 - 1e-9)
            if worse:
                assert worse["price"] <= answer["price"] * (1 + 1e-9)


def test_the_api_answers_the_deal_check_single_and_batch(
    home_copy: Path, monkeypatch, stone: dict
) -> None:
    settings.cache_clear()
    with TestClient(create_app()) as client:
        price = client.post("/v1/appraisals", json=stone).json()["price"]
        cheap = client.post("/v1/appraisals", json={**stone, "asking_price": price * 0.5}).json()
        dear = client.post("/v1/appraisals", json={**stone, "asking_price": price * 2}).json()
        assert cheap["deal"]["verdict"] == "below market"
        assert dear["deal"]["verdict"] == "above market"
        assert cheap["deal"]["bargain_probability"] > dear["deal"]["bargain_probability"]
        stored = client.get(f"/v1/appraisals/{cheap['id']}").json()
        assert stored["stone"] == stone  # the asking price is not part of the stone
        batch = client.post(
            "/v1/appraisals/batch",
            json={"diamonds": [stone, {**stone, "asking_price": price}]},
        ).json()["appraisals"]
        assert "deal" not in batch[0] and batch[1]["deal"]["verdict"] == "fair"
        bad = client.post("/v1/appraisals", json={**stone, "asking_price": -3})
        assert bad.status_code == 422 and "asking_price" in bad.json()["message"]
    settings.cache_clear()


def test_a_file_with_asking_prices_gets_a_bargain_probability(trained, public) -> None:
    """Review defects: an unusable asking price (-5, 1e300, "abc") was silently ignored, and a
    list's verdict came from the rounded probability (could disagree with the single answer)."""
    model = Appraiser.champion().model
    raw = public.sample(20, random_state=14).drop(columns="price").reset_index(drop=True)
    raw["asking_price"] = [1000.0, "", -5, 1e300, "abc", *([5000.0] * 15)]
    scored = score_frame(model, raw.astype(str))
    assert "bargain_probability" in scored.columns
    unusable = [1, 2, 3, 4]
    assert scored["bargain_probability"][unusable].isna().all()
    assert scored["deal_error"][1] == ""  # nothing asked: nothing wrong
    assert all("asking_price" in scored["deal_error"][i] for i in (2, 3, 4))
    assert (scored["error"][unusable] == "").all()  # the stones themselves are still priced
    assert scored["bargain_probability"].drop(unusable).between(0, 1).all()
    assert (scored["verdict"].drop(unusable) != "").all()
    single = Appraiser.champion().appraise(
        raw.drop(columns="asking_price")
        .iloc[[0]]
        .astype({c: float for c in schema.NUMERIC_FEATURES})
        .to_dict(orient="records"),
        asking_prices=[1000.0],
    )[0]
    assert scored["verdict"][0] == single["deal"]["verdict"]


def test_no_probability_for_an_asking_price_that_is_not_a_price(trained) -> None:
    """Review defect: -5, NaN or inf got a probability (0.0004: "above market"), 0 "below"."""
    model = Appraiser.champion().model
    matrix = features.encode_stones([schema.example_stone()] * 5)
    chance = model.prob_above_matrix(matrix, np.array([-5.0, 0.0, np.nan, np.inf, 5000.0]))
    assert np.isnan(chance[:4]).all() and 0 < chance[4] < 1


def test_reasons_add_up_to_the_models_own_price() -> None:
    """Review defect: XGBoost's single-precision contributions missed the price by up to $0.015
    and the API's baseline absorbed it, varying from stone to stone."""
    rng = np.random.default_rng(3)
    log_price = rng.uniform(6, 9, 200)
    baseline = np.full(200, 7.5)
    parts = rng.normal(0, 0.3, (200, len(features.REASONS)))
    parts[:, 0] += (log_price - baseline - parts.sum(axis=1)) + rng.normal(0, 2e-6, 200)
    dollars = explain.dollars_from_log(np.column_stack([parts, baseline]), log_price)
    assert np.abs(dollars.sum(axis=1) - np.exp(log_price)).max() < 1e-6
    assert np.allclose(dollars[:, -1], np.exp(7.5))  # one baseline for every stone


def test_a_stone_few_resemble_is_warned_about(trained) -> None:
    """Defect: a large stone inside the min-max range got no warning although few stones of the
    collection resemble it (from 2.5 ct prices ran 11% high on average)."""
    appraiser = Appraiser.champion()
    index = appraiser.index
    common = schema.example_stone()
    rare = {**common, "carat": 2.9, "cut": "Fair", "color": "D", "clarity": "IF"}
    rare.update(x=8.9, y=8.8, z=5.5, depth=62.2)
    matrix = features.encode_stones([common, rare])
    assert index.sparse(matrix).tolist() == [False, True]
    answers = appraiser.appraise([common, rare])
    assert answers[0]["warnings"] == []
    assert any("few stones" in w for w in answers[1]["warnings"])
    share = index.sparse(features.encode(index.frame).to_numpy()).mean()
    assert share < 0.02  # by construction about 1% of the collection's own stones


def test_the_sparse_shortcut_answers_as_the_full_neighbour_query() -> None:
    """`sparse` settles most stones from their nearest stone alone; every answer must be the one
    the full SPARSE_K-neighbour query gives, near the limit included."""
    stones = data.load(None).clean.sample(3000, random_state=3)
    index = explain.ReferenceIndex(stones)
    matrix = features.encode(stones).to_numpy()
    rng = np.random.default_rng(5)
    asked = matrix[rng.integers(0, len(matrix), 4000)]
    asked[:, 1:4] *= rng.lognormal(0, rng.choice([0.002, 0.02, 0.1], (len(asked), 1)), (4000, 3))
    asked[:, 0] *= rng.lognormal(0, 0.1, len(asked))
    scaled = index._points(asked) / index._scale
    distances, _ = index._tree.query(scaled, k=explain.SPARSE_K)
    full = distances[:, -1] > index.sparse_distance
    # the bound the shortcut rests on: SPARSE_K stones (the nearest one and its SPARSE_K - 1
    # nearest others) lie within nearest + its reach, so the SPARSE_K-th is no farther
    own, _ = index._tree.query(index._points(matrix) / index._scale, k=explain.SPARSE_K)
    assert np.array_equal(index._own_reach, own[:, -1])
    nearest, which = index._tree.query(scaled, k=1)
    assert (distances[:, -1] <= nearest + index._own_reach[which] + 1e-12).all()
    assert 0.05 < full.mean() < 0.95  # both answers are common, so the test can fail
    assert index.sparse(asked).tolist() == full.tolist()


def test_grade_coverage_reports_each_level_with_an_interval_around_it() -> None:
    stones = pd.DataFrame([schema.example_stone()] * 400)
    stones["clarity"] = ["I1"] * 200 + ["IF"] * 200
    stones["price"] = 1000.0
    predicted = pd.DataFrame(
        {  # I1 stones: every other range misses the price; IF stones: every range holds it
            "price_low": [1100.0 if i % 2 else 900.0 for i in range(200)] + [900.0] * 200,
            "price_high": [1200.0] * 400,
        }
    )
    rows = {(r["slice"], r["level"]): r for r in evaluate.grade_coverage(stones, predicted)}
    i1, flawless = rows[("clarity", "I1")], rows[("clarity", "IF")]
    assert i1["stones"] == 200 and i1["coverage"] == 50.0
    assert i1["low"] < 50 < i1["high"] and i1["high"] - i1["low"] < 15
    assert flawless["coverage"] == 100.0 and 97 < flawless["low"] < 100
