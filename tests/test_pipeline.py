"""Retraining from the store: the reference holdout, the gate, promotion and rollback."""

import dataclasses

import pandas as pd
import pytest
from typer.testing import CliRunner

from appraiser import registry, schema
from appraiser.cli import app
from appraiser.ingest import ingest_file
from appraiser.pipeline import GatePolicy, in_reference_holdout, retrain, sanity_problems
from appraiser.predict import Appraiser
from appraiser.train import TrainingError
from tests.conftest import use_home


def test_reference_holdout_is_fixed_by_the_stone(public):
    stones = public.head(2000)
    held = in_reference_holdout(stones)
    assert 0.15 < held.mean() < 0.25
    # the same stones in another order, or among others, keep their place
    again = in_reference_holdout(pd.concat([public.iloc[5000:6000], stones.iloc[::-1]]))
    assert (again[1000:][::-1] == held).all()


def test_retrain_needs_stones(tmp_path):
    use_home(tmp_path)
    with pytest.raises(TrainingError, match="appraiser ingest"):
        retrain(trials=1, timeout=1, show_progress=False)


def test_retrain_promotes_through_the_gate_and_people_can_roll_back(tmp_path, public):
    use_home(tmp_path / "home")
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    shuffled = public.sample(3000, random_state=11)
    shuffled.iloc[:1500].to_csv(first, index=False)
    shuffled.iloc[1500:].to_csv(second, index=False)

    ingest_file(first)
    v1 = retrain(trials=1, timeout=1, show_progress=False)
    assert v1.champion and v1.decision.startswith("no champion yet")

    ingest_file(second)
    v2 = retrain(trials=1, timeout=1, show_progress=False)
    assert "vs champion v1" in v2.decision
    assert registry.champion_version() == ("2" if v2.champion else "1")
    run = registry.client().get_run(v2.run_id)
    assert run.data.tags["decision"] == v2.decision and run.data.tags["kind"] == "retrain"

    runner = CliRunner()
    assert runner.invoke(app, ["models", "promote", "2"]).exit_code == 0
    assert registry.champion_version() == "2"
    result = runner.invoke(app, ["models", "rollback"])
    assert result.exit_code == 0, result.output
    assert registry.champion_version() == "1"
    missing = runner.invoke(app, ["models", "promote", "9"])
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_a_strict_margin_keeps_the_champion(trained, public):
    """The gate refuses a challenger that does not gain enough, and says so."""
    from appraiser.pipeline import make_gate

    model = Appraiser.champion().model
    holdout = public.sample(400, random_state=4)
    prices = model.predict(holdout)
    from appraiser import evaluate

    metrics = evaluate.metrics(
        holdout["price"], prices["price"], prices["price_low"], prices["price_high"]
    )
    slices = evaluate.slice_metrics(holdout, prices)
    promote, why = make_gate(GatePolicy(margin=0.5))(model, holdout, metrics, slices)
    assert not promote and "needs more than 0.5" in why


def test_sanity_checks_catch_a_broken_range(trained, public):
    model = Appraiser.champion().model
    narrow = dataclasses.replace(model, intervals=[1e-6] * len(schema.CARAT_LABELS))
    holdout = public.sample(300, random_state=2)
    from appraiser import evaluate

    p = narrow.predict(holdout)
    metrics = evaluate.metrics(holdout["price"], p["price"], p["price_low"], p["price_high"])
    problems = sanity_problems(narrow, holdout, metrics, GatePolicy())
    assert any("90% range covers" in problem for problem in problems)
    assert sanity_problems(model, holdout, {**metrics, "coverage": 90.0}, GatePolicy()) == []
