"""The batch fast path (api.batch_input) accepts exactly what pydantic accepts, dumps the same."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from appraiser import schema
from appraiser.api.batch_input import valid_stones
from appraiser.api.schemas import BatchIn
from appraiser.config import MAX_BATCH


def _pydantic(body: bytes) -> list[dict[str, Any]] | None:
    try:
        batch = BatchIn.model_validate_json(body)
    except ValidationError:
        return None
    if not 0 < len(batch.diamonds) <= MAX_BATCH:
        return None
    return [d.model_dump() for d in batch.diamonds]


ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 200),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1, max_value=120),
    st.sampled_from(["1.1", "Ideal", "Excellent", "", "VS1", "D"]),
    st.lists(st.integers(), max_size=2),
)


@st.composite
def stones(draw: st.DrawFn) -> dict[str, Any]:
    stone: dict[str, Any] = schema.example_stone()
    stone["carat"] = draw(st.floats(0.2, 3.0))
    scale = stone["carat"] ** (1 / 3) / 1.1 ** (1 / 3)
    for axis in ("x", "y", "z"):
        stone[axis] = round(stone[axis] * scale, 2)
    stone["depth"] = round(schema.depth_from_measurements(stone["x"], stone["y"], stone["z"]), 1)
    for grade, order in schema.GRADES.items():
        stone[grade] = draw(st.sampled_from(order))
    if draw(st.booleans()):
        stone["asking_price"] = draw(st.one_of(st.none(), st.integers(1, 50_000)))
    for _ in range(draw(st.integers(0, 2))):  # spoil a field, add one, or drop one
        action = draw(st.sampled_from(["set", "add", "drop"]))
        field = draw(st.sampled_from([*schema.FEATURES, "asking_price"]))
        if action == "set":
            stone[field] = draw(ODD_VALUES)
        elif action == "add":
            stone[draw(st.sampled_from(["colour", "price", "id"]))] = 1
        else:
            stone.pop(field, None)
    return stone


@settings(max_examples=300, deadline=None)
@given(st.lists(stones(), min_size=0, max_size=6))
def test_the_fast_path_agrees_with_pydantic(batch: list[dict[str, Any]]) -> None:
    body = json.dumps({"diamonds": batch}).encode()
    fast, slow = valid_stones(body), _pydantic(body)
    # never accepts what pydantic refuses, takes every batch it accepts, dumps the same stones
    # (an asking price not sent may be left out rather than None), numbers as floats
    assert _typed(_with_asking(fast)) == _typed(slow)


def _with_asking(stones: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    return None if stones is None else [{"asking_price": None, **stone} for stone in stones]


def _typed(stones: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Each value with its type: 1 == 1.0, but an int would be stored as "1"."""
    if stones is None:
        return None
    return [{k: (type(v).__name__, v) for k, v in stone.items()} for stone in stones]


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b'{"diamonds": {}}', b'{"diamonds": [], "x": 1}', b'{"diamonds": [NaN]}'],
)
def test_odd_bodies_go_to_pydantic(body: bytes) -> None:
    assert valid_stones(body) is None


def test_a_grade_that_is_not_a_string_goes_to_pydantic() -> None:
    """Found by the property test: a list as a grade raised TypeError (unhashable): a 500."""
    for odd in (["Ideal"], {"a": 1}, 3):
        body = json.dumps({"diamonds": [{**schema.example_stone(), "cut": odd}]}).encode()
        assert valid_stones(body) is None


def test_an_integer_too_large_for_a_float_goes_to_pydantic() -> None:
    """Review defect: a 400-digit carat raised OverflowError in the fast path: a 500."""
    body = json.dumps({"diamonds": [{**schema.example_stone(), "carat": 10**400}]}).encode()
    assert valid_stones(body) is None
    assert _pydantic(body) is None
