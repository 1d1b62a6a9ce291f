import pytest
from pydantic import ValidationError

from appraiser import schema


def test_grade_orders_worst_first():
    assert schema.GRADES["cut"][0] == "Fair" and schema.GRADES["cut"][-1] == "Ideal"
    assert schema.GRADES["color"][0] == "J" and schema.GRADES["color"][-1] == "D"
    assert schema.GRADES["clarity"][0] == "I1" and schema.GRADES["clarity"][-1] == "IF"
    assert set(schema.FEATURES) == set(schema.NUMERIC_FEATURES) | set(schema.GRADE_COLUMNS)


def test_example_stone_is_valid(stone):
    assert schema.Diamond(**stone).carat == stone["carat"]


def test_unknown_grade_lists_allowed_values(stone):
    with pytest.raises(ValidationError) as info:
        schema.Diamond(**{**stone, "color": "Z"})
    message = str(info.value)
    assert "color" in message and "J, I, H, G, F, E, D" in message


@pytest.mark.parametrize(
    ("field", "value"), [("carat", 0), ("carat", 12), ("x", -1), ("table", 120)]
)
def test_out_of_bounds_names_field(stone, field, value):
    with pytest.raises(ValidationError) as info:
        schema.Diamond(**{**stone, field: value})
    assert info.value.errors()[0]["loc"] == (field,)


def test_inconsistent_measurements_are_refused(stone):
    with pytest.raises(ValidationError, match="2 z / \\(x \\+ y\\)"):
        schema.Diamond(**{**stone, "z": 3.0})


def test_extra_fields_are_refused(stone):
    with pytest.raises(ValidationError, match="colour"):
        schema.Diamond(**stone, colour="D")  # type: ignore[call-arg]


def test_grade_code_and_bounds_are_vectorised():
    import pandas as pd

    codes = schema.grade_code("clarity", pd.Series(["I1", "IF", "XX"]))
    assert codes.iloc[0] == 0 and codes.iloc[1] == 7 and pd.isna(codes.iloc[2])
    assert list(schema.BOUNDS["carat"].violated(pd.Series([0.0, 0.5, 11.0]))) == [True, False, True]
