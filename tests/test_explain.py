import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from appraiser import explain, features, schema
from appraiser.models import BASELINE


@given(
    baseline=st.floats(5, 10),
    parts=st.lists(
        st.floats(-2, 2), min_size=len(features.REASONS), max_size=len(features.REASONS)
    ),
)
@settings(max_examples=200, deadline=None)
def test_dollar_contributions_add_up_to_the_price(baseline, parts):
    log_contribs = pd.DataFrame([[*parts, baseline]], columns=[*features.REASONS, BASELINE])
    dollars = explain.dollar_contributions(log_contribs)
    price = np.exp(baseline + sum(parts))
    assert np.isclose(dollars.sum(axis=1).iloc[0], price, rtol=1e-9)
    for feature, phi in zip(features.REASONS, parts, strict=True):
        assert np.sign(dollars[feature].iloc[0]) == np.sign(phi) or abs(phi) < 1e-12


def test_no_change_means_baseline_price():
    log_contribs = pd.DataFrame(
        [[0.0] * len(features.REASONS) + [8.0]], columns=[*features.REASONS, BASELINE]
    )
    dollars = explain.dollar_contributions(log_contribs)
    assert np.isclose(dollars[BASELINE].iloc[0], np.exp(8.0))


def test_conformal_halfwidth_covers_new_draws():
    rng = np.random.default_rng(0)
    q = explain.conformal_halfwidth(rng.normal(0, 0.1, 2000), 0.9)
    fresh = rng.normal(0, 0.1, 20000)
    coverage = np.mean(np.abs(fresh) <= q)
    assert 0.88 <= coverage <= 0.92
    assert np.isclose(q, 0.1 * 1.645, rtol=0.08)


def test_banded_halfwidths_follow_each_band():
    rng = np.random.default_rng(1)
    carats = np.concatenate([np.full(3000, 0.4), np.full(500, 2.5), np.full(10, 1.2)])
    residuals = np.concatenate([rng.normal(0, 0.05, 3000), rng.normal(0, 0.3, 500), np.zeros(10)])
    widths = explain.banded_halfwidths(residuals, carats, 0.9)
    assert np.isclose(widths[0], 0.05 * 1.645, rtol=0.1)
    assert np.isclose(widths[4], 0.3 * 1.645, rtol=0.15)
    # too few stones in the 1-1.5 ct band: it falls back to the overall width
    assert widths[2] == explain.conformal_halfwidth(residuals, 0.9)


def test_comparables_same_grades_nearest_carat(public):
    stone = {**schema.example_stone()}
    found = explain.comparables(public, stone, n=7)
    assert len(found) == 7
    for grade in schema.GRADE_COLUMNS:
        assert (found[grade] == stone[grade]).all()
    gaps = found["carat_difference"].abs().to_numpy()
    assert (np.diff(gaps) >= 0).all()
    same = public[
        (public.cut == stone["cut"])
        & (public.color == stone["color"])
        & (public.clarity == stone["clarity"])
    ]
    assert gaps.max() <= (same["carat"] - stone["carat"]).abs().nsmallest(7).max() + 1e-9


def test_warnings_for_stones_outside_the_collection(public):
    heavy = {**schema.example_stone(), "carat": 8.0}
    warnings = explain.warnings_for(public, heavy)
    assert any("carat 8" in w and "outside" in w for w in warnings)
    assert explain.warnings_for(public, schema.example_stone()) == []


def test_warnings_all_gives_each_stones_warnings(public):
    """The vectorised check (warnings_all) against the one-stone sentences, on ordinary stones
    and on each kind of unusual one: outside a range, an unseen grade trio, a sparse region."""
    small = public[~((public.cut == "Fair") & (public.color == "J"))].head(3000)
    index = explain.ReferenceIndex(small)
    example = schema.example_stone()
    odd = [
        {**example, "carat": 9.0},
        {**example, "depth": small["depth"].max() + 1, "z": example["z"]},
        {**example, "table": small["table"].min() - 1},
        {**example, "cut": "Fair", "color": "J"},  # left out of the collection above
        {**example, "carat": 0.2, "x": 9.0, "y": 2.0},  # a shape nothing resembles
    ]
    stones = [*public.tail(200)[list(schema.FEATURES)].to_dict("records"), *odd]
    matrix = features.encode_stones(stones)
    got = index.warnings_all(matrix, stones)
    assert got == [index.warnings(stone) for stone in stones]
    assert all(got[-len(odd) :]) and sum(map(bool, got)) < len(stones) / 2
    assert any("few stones" in w for w in got[-1])
    assert len({id(w) for w in got}) == len(got)  # a list of its own for each answer
    few = len(odd) + 2  # a few stones take the per-stone path: the same answers
    assert index.warnings_all(matrix[-few:], stones[-few:]) == got[-few:]
