"""The market level's estimate (appraiser.market): a jump and a drift recovered, intervals that
say how many stones stand behind a month and hold the truth about as often as they claim, a source
that marks up left out, and the base level when nothing is known."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from appraiser import market, schema


def _month(start: date, k: int) -> date:
    return date(start.year + (start.month - 1 + k) // 12, (start.month - 1 + k) % 12 + 1, 1)


def _stones(
    levels: list[float],
    per_month: int | list[int],
    *,
    spread: float = 0.10,
    seed: int = 0,
    source: str = "expert",
    start: date = date(2025, 1, 1),
) -> pd.DataFrame:
    """Stones priced `levels[k]` times their base price (with log-normal noise) in month k."""
    rng = np.random.default_rng(seed)
    counts = [per_month] * len(levels) if isinstance(per_month, int) else per_month
    frames = []
    for k, (level, n) in enumerate(zip(levels, counts, strict=True)):
        predicted = rng.uniform(400, 15000, n)
        month = _month(start, k)
        frames.append(
            pd.DataFrame(
                {
                    schema.APPRAISED_AT: [
                        month.replace(day=int(d)) for d in rng.integers(1, 29, n)
                    ],
                    "price": predicted * level * np.exp(rng.normal(0, spread, n)),
                    "predicted": predicted,
                    "source": source,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


JUMP_AND_DRIFT = [1.20 * 1.01**k for k in range(9)]  # +20% since the collection, then +1%/month


def test_no_stones_is_the_base_level_on_every_day() -> None:
    empty = pd.DataFrame(columns=[schema.APPRAISED_AT, "price", "predicted"])
    series = market.estimate(empty)
    assert series.months == () and series.excluded == ()
    for day in (date(1995, 3, 1), date(2030, 1, 1)):
        assert series.level_at(day) == market.BASE
        assert (series.level_at(day).level, series.level_at(day).month) == (1.0, None)
    current = series.to_dict(date(2026, 1, 5))["current"]
    assert (current["level"], current["low"], current["high"], current["month"]) == (1, 1, 1, None)
    assert current["as_of"] == "2026-01-05"


def test_a_jump_then_a_monthly_drift_is_recovered() -> None:
    series = market.estimate(_stones(JUMP_AND_DRIFT, 150))
    levels = [m.level for m in series.months]
    assert len(levels) == len(JUMP_AND_DRIFT)
    errors = np.abs(np.log(levels) - np.log(JUMP_AND_DRIFT))
    assert errors.max() < 0.03, errors  # every month within 3%
    assert errors[-1] < 0.015  # and today, which the drift has been teaching for months
    assert all(m.stones == 150 and m.excluded == 0 for m in series.months)
    # each month's interval holds its estimate, and the last holds the truth
    assert all(m.low < m.level < m.high for m in series.months)
    last = series.months[-1]
    assert last.low <= JUMP_AND_DRIFT[-1] <= last.high


def test_the_level_follows_a_jump_within_two_months() -> None:
    levels = [1.0, 1.0, 1.0, 1.25, 1.25, 1.25]
    series = market.estimate(_stones(levels, 200, seed=3))
    after = [m.level for m in series.months[3:]]
    assert after[0] > 1.18  # most of the jump in its own month
    assert abs(np.log(after[1] / 1.25)) < 0.02


def test_few_stones_get_a_wide_interval() -> None:
    few, full = (market.estimate(_stones([1.1], n, seed=1)).months[0] for n in (3, 200))
    assert np.log(few.high / few.low) > 4 * np.log(full.high / full.low)
    assert full.low < 1.1 < full.high


def test_a_jump_seen_by_three_stones_is_half_believed_with_a_wide_interval() -> None:
    series = market.estimate(_stones([1.0, 1.0, 1.0, 1.3], [200, 200, 200, 3], seed=1))
    full, few = series.months[2], series.months[3]
    assert few.stones == 3
    assert (
        few.observed is not None and 1.05 < few.level < few.observed
    )  # towards the three stones, not all the way
    assert np.log(few.high / few.low) > 3 * np.log(full.high / full.low)
    # and when the same three stones agree with the months before, they change little
    calm = market.estimate(_stones([1.0, 1.0, 1.0, 1.0], [200, 200, 200, 3], seed=1)).months[3]
    assert abs(np.log(calm.level / full.level)) < 0.02
    assert np.log(calm.high / calm.low) < np.log(few.high / few.low)


def test_months_without_stones_carry_the_level_and_widen_the_interval() -> None:
    frame = _stones([1.1, 1.1, 1.1, 1.1], [100, 0, 0, 100], seed=2)
    series = market.estimate(frame)
    assert [m.stones for m in series.months] == [100, 0, 0, 100]
    empty = series.months[1:3]
    assert all(m.observed is None and m.level == series.months[0].level for m in empty)
    widths = [np.log(m.high / m.low) for m in series.months[:3]]
    assert widths[0] < widths[1] < widths[2]


def test_level_at_carries_the_last_estimate_forward() -> None:
    series = market.estimate(_stones([1.1, 1.2], 100, start=date(2025, 5, 1)))
    may, june = series.months
    assert series.level_at(date(2025, 4, 30)) == market.BASE
    assert series.level_at(date(2025, 5, 31)) == may
    assert series.level_at(date(2025, 6, 1)) == june
    assert series.level_at(date(2027, 1, 1)) == june
    assert series.current(date(2026, 3, 3)).month == date(2025, 6, 1)


def test_a_few_absurd_prices_do_not_move_the_month() -> None:
    frame = _stones([1.0], 100, seed=4)
    frame.loc[:9, "price"] *= 20  # ten stones keyed with a digit too many
    level = market.estimate(frame).months[0]
    assert abs(np.log(level.level)) < 0.06


def test_a_base_month_anchors_the_level_at_one() -> None:
    frame = _stones([1.2], 5, start=date(2025, 6, 1), seed=5)
    free = market.estimate(frame).months[-1]
    anchored = market.estimate(frame, base=date(2025, 3, 1))
    assert [m.month for m in anchored.months] == [date(2025, m, 1) for m in (3, 4, 5, 6)]
    assert anchored.months[0].level == pytest.approx(1.0, abs=1e-9)
    # five stones three months after the base: pulled towards 1.0 more than without a base
    assert 1.0 < anchored.months[-1].level < free.level


def test_the_interval_holds_the_truth_about_ninety_percent_of_the_time() -> None:
    held = total = 0
    for seed in range(60):
        rng = np.random.default_rng(1000 + seed)
        walk = np.exp(np.cumsum(rng.normal(0, market.PROCESS_SD, 6)))
        series = market.estimate(_stones(list(walk), 30, seed=seed))
        held += sum(m.low <= t <= m.high for m, t in zip(series.months, walk, strict=True))
        total += len(walk)
    assert 0.80 <= held / total <= 0.97, held / total


def _three_sources(markup: float) -> pd.DataFrame:
    honest = [
        _stones(JUMP_AND_DRIFT, 60, seed=s, source=name) for s, name in ((10, "a"), (11, "b"))
    ]
    marked = _stones([v * markup for v in JUMP_AND_DRIFT], 60, seed=12, source="marks up")
    return pd.concat([*honest, marked], ignore_index=True)


def test_a_source_that_marks_up_is_left_out_and_reported() -> None:
    series = market.estimate(_three_sources(1.30))
    assert {e.source for e in series.excluded} == {"marks up"}
    assert len(series.excluded) == len(JUMP_AND_DRIFT)  # every month
    for gone in series.excluded:
        assert gone.stones == 60
        assert gone.level / gone.market == pytest.approx(1.30, rel=0.06)
    assert all(m.stones == 120 and m.excluded == 60 for m in series.months)
    assert abs(np.log(series.months[-1].level / JUMP_AND_DRIFT[-1])) < 0.02


def test_sources_that_agree_are_all_kept() -> None:
    series = market.estimate(_three_sources(1.0))
    assert series.excluded == ()
    assert all(m.stones == 180 for m in series.months)


def test_two_sources_that_disagree_both_stay() -> None:
    frame = pd.concat(
        [_stones([1.0], 80, seed=20, source="a"), _stones([1.4], 80, seed=21, source="b")]
    )
    series = market.estimate(frame)
    assert series.excluded == () and series.months[0].stones == 160


def test_bad_input_names_the_column() -> None:
    frame = _stones([1.0], 5)
    with pytest.raises(ValueError, match="predicted"):
        market.estimate(frame.drop(columns="predicted"))
    bad = frame.copy()
    bad.loc[0, "price"] = 0
    with pytest.raises(ValueError, match="price must be a positive number"):
        market.estimate(bad)
    bad = frame.copy()
    bad[schema.APPRAISED_AT] = bad[schema.APPRAISED_AT].astype(object)
    bad.loc[1, schema.APPRAISED_AT] = "someday"
    with pytest.raises(ValueError, match="appraised_at must be a date"):
        market.estimate(bad)
    with pytest.raises(ValueError, match="tolerance"):
        market.estimate(frame, tolerance=0)


def test_a_series_refuses_months_out_of_order() -> None:
    june = market.Level(month=date(2025, 6, 1), level=1.0, low=0.9, high=1.1)
    may = market.Level(month=date(2025, 5, 1), level=1.0, low=0.9, high=1.1)
    with pytest.raises(ValueError, match="oldest first"):
        market.Series((june, may))
