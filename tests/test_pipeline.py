"""Retraining from the store: the sealed set, the gate, promotion and rollback."""

import dataclasses

import pandas as pd
import pytest
from typer.testing import CliRunner

from appraiser import champion, registry, schema
from appraiser.cli import app
from appraiser.gate import GatePolicy, coverage_check, sanity_problems
from appraiser.ingest import ingest_file
from appraiser.pipeline import in_sealed_set, retrain
from appraiser.predict import Appraiser
from appraiser.train import TrainingError
from tests.conftest import lock_held_elsewhere, use_home

# these tests exercise the loop, not the candidates
pytestmark = pytest.mark.usefixtures("one_candidate")


def test_sealed_set_is_fixed_by_the_stone(public):
    stones = public.head(2000)
    held = in_sealed_set(stones)
    assert 0.03 < held.mean() < 0.07  # 1 in 20
    # the same stones in another order, or among others, keep their place
    again = in_sealed_set(pd.concat([public.iloc[5000:6000], stones.iloc[::-1]]))
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
    assert champion.current() == ("2" if v2.champion else "1")
    run = registry.client().get_run(v2.run_id)
    assert run.data.tags["decision"] == v2.decision and run.data.tags["kind"] == "retrain"

    runner = CliRunner()
    assert runner.invoke(app, ["models", "promote", "2"]).exit_code == 0
    assert champion.current() == "2"
    result = runner.invoke(app, ["models", "rollback"])
    assert result.exit_code == 0, result.output
    assert champion.current() == "1"
    missing = runner.invoke(app, ["models", "promote", "9"])
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_sanity_and_coverage_checks_catch_a_broken_range(trained, public):
    model = Appraiser.champion().model
    narrow = dataclasses.replace(model, intervals=[1e-6] * len(schema.CARAT_LABELS), ranges=None)
    holdout = public.sample(300, random_state=2)
    p = narrow.predict(holdout)
    check = coverage_check(
        holdout, p["price_low"].to_numpy(), p["price_high"].to_numpy(), GatePolicy()
    )
    assert not check.passed and "significantly outside 85-95%" in check.detail
    assert sanity_problems(model, holdout) == []
    ok = model.predict(holdout)
    assert coverage_check(
        holdout, ok["price_low"].to_numpy(), ok["price_high"].to_numpy(), GatePolicy()
    ).passed


def test_pipeline_pass_sorts_the_inbox_and_retrains_when_due(tmp_path, public):
    from appraiser.pipeline import run_pass

    use_home(tmp_path / "home")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    public.sample(1200, random_state=21).to_csv(inbox / "batch1.csv", index=False)
    (inbox / "garbage.csv").write_bytes(b"\x00\x01\x02 not a table")
    report = run_pass(inbox, threshold=500, trials=1, timeout=1, show_progress=False)
    assert [r.rows_accepted for r in report.ingested] == [1200]
    assert report.failed and report.failed[0][0] == "garbage.csv"
    assert (inbox / "processed" / "batch1.csv").exists()
    assert (inbox / "failed" / "garbage.csv.reason.txt").read_text().strip()
    assert report.result is not None and report.result.champion
    assert champion.current() == "1"

    # a pass with nothing new does not retrain
    quiet = run_pass(inbox, threshold=500, trials=1, timeout=1, show_progress=False)
    assert quiet.result is None and quiet.new_stones == 0

    # a few heavy stones: under the threshold, but their drift is measured, logged, and calls
    # for a retrain
    public[public["carat"] > 1.5].sample(80, random_state=5).to_csv(inbox / "b2.csv", index=False)
    drifted = run_pass(inbox, threshold=500, trials=1, timeout=1, show_progress=False)
    assert drifted.new_stones == drifted.ingested[0].rows_accepted >= 75
    assert drifted.drift is not None and drifted.drift.set_index("feature").loc["carat", "drift"]
    assert drifted.result is not None and "drift in carat" in (drifted.retrain_reason or "")
    runs = registry.client().search_runs([_experiment_id()], filter_string="tags.kind = 'drift'")
    assert runs and runs[0].data.tags["drift"] == "True"
    assert runs[0].data.metrics["drift_carat_ks"] > 0.1


def test_a_second_pass_waits_for_the_lock(tmp_path):
    import fcntl

    from appraiser.locking import PipelineBusy, _lock_path
    from appraiser.pipeline import run_pass

    use_home(tmp_path)
    with _lock_path().open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(PipelineBusy, match="another pipeline pass"):
            run_pass(None, show_progress=False)


def test_one_pass_at_a_time_per_store(store_url):
    """Two holders of the pipeline's lock cannot overlap: a file lock with SQLite, an advisory
    lock in the database with PostgreSQL (which also holds across machines)."""
    from appraiser.pipeline import PipelineBusy, exclusive

    outcome: list[str] = []
    with (
        lock_held_elsewhere(),
        pytest.raises(PipelineBusy, match="another pipeline pass"),
        exclusive(),
    ):
        outcome.append("entered while held")
    with exclusive():  # free again once released
        outcome.append("entered after release")
    assert outcome == ["entered after release"]


def test_drift_report_flags_a_shifted_batch(public):
    from appraiser.drift import drift_report

    reference = public.sample(3000, random_state=1)
    same = drift_report(public.sample(800, random_state=2), reference)
    assert not same["drift"].any()
    heavy = public[public["carat"] > 1.5].sample(800, random_state=3)
    shifted = drift_report(heavy, reference).set_index("feature")
    assert shifted.loc["carat", "drift"] and shifted.loc["x", "drift"]


def test_feedback_becomes_a_training_stone(trained, stone):
    from appraiser.pipeline import feedback_stones

    runner = CliRunner()
    shown = runner.invoke(app, ["explain", *[f"--{k}={v}" for k, v in stone.items()], "--json"])
    assert shown.exit_code == 0, shown.output
    import json

    appraisal_id = json.loads(shown.output)["id"]
    before = len(feedback_stones())
    given = runner.invoke(app, ["feedback", "send", str(appraisal_id), "5100"])
    assert given.exit_code == 0, given.output
    assert "pending" in given.output
    assert len(feedback_stones()) == before  # nobody approved it yet: it teaches nothing
    listed = runner.invoke(app, ["feedback", "list", "--json"])
    pending = [f for f in json.loads(listed.output) if f["appraisal_id"] == appraisal_id]
    assert len(pending) == 1 and pending[0]["expert"].startswith("cli:")
    own = runner.invoke(app, ["feedback", "approve", str(pending[0]["id"])])
    assert own.exit_code == 1 and "another admin reviews it" in own.output  # not one's own
    from appraiser import feedback

    feedback.review(pending[0]["id"], approve=True, actor="another-admin")
    stones = feedback_stones()
    assert len(stones) == before + 1
    assert stones.iloc[-1]["price"] == 5100 and stones.iloc[-1]["cut"] == stone["cut"]
    again = feedback.listing("approved")
    assert [f["reviewed_by"] for f in again if f["id"] == pending[0]["id"]] == ["another-admin"]
    refused = runner.invoke(app, ["feedback", "send", str(appraisal_id), "--", "-5"])
    assert refused.exit_code == 2 and "price must be > 0" in refused.output
    unknown = runner.invoke(app, ["feedback", "send", "f" * 32, "5100"])
    assert unknown.exit_code == 1 and "no appraisal with id" in unknown.output


def test_a_crash_in_training_changes_nothing_and_shows(tmp_path, public, monkeypatch):
    from appraiser import ingest, models

    use_home(tmp_path / "home")
    first = tmp_path / "first.csv"
    public.sample(800, random_state=31).to_csv(first, index=False)
    ingest_file(first)
    v1 = retrain(trials=1, timeout=1, show_progress=False)
    stored = len(ingest.accepted_stones())

    def boom(self, matrix, target):
        raise RuntimeError("the machine ran out of luck")

    monkeypatch.setattr(models.LightGBMMember, "_fit_trees", boom)  # the one candidate tuned
    with pytest.raises(TrainingError, match="champion is unchanged"):
        retrain(trials=1, timeout=1, show_progress=False)
    assert champion.current() == v1.version
    assert len(ingest.accepted_stones()) == stored
    runs = registry.client().search_runs(
        [_experiment_id()], order_by=["attributes.start_time DESC"], max_results=1
    )
    assert runs[0].info.status == "FAILED"
    assert "ran out of luck" in runs[0].data.tags["error"]


def _experiment_id() -> str:
    from appraiser.config import EXPERIMENT

    experiment = registry.client().get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    return str(experiment.experiment_id)


def test_watch_picks_up_a_dropped_file(tmp_path, public):
    from appraiser.pipeline import PassReport, watch

    use_home(tmp_path / "home")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    public.sample(300, random_state=41).to_csv(inbox / "dropped.csv", index=False)
    seen: list[PassReport] = []
    watch(
        inbox,
        interval=0.05,
        passes=1,
        on_pass=seen.append,
        threshold=10_000,
        trials=1,
        timeout=1,
        show_progress=False,
    )
    assert seen[0].ingested[0].rows_accepted == 300
    assert (inbox / "processed" / "dropped.csv").exists()


def test_a_killed_retrain_changes_nothing(tmp_path, public):
    """SIGKILL in the middle of a retrain: the champion and every stored row survive."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from appraiser import ingest

    home = tmp_path / "home"
    use_home(home)
    batch = tmp_path / "batch.csv"
    public.sample(900, random_state=51).to_csv(batch, index=False)
    ingest_file(batch)
    v1 = retrain(trials=1, timeout=1, show_progress=False)
    stones, rejected = len(ingest.accepted_stones()), len(ingest.rejected())

    env = {**os.environ, "APPRAISER_HOME": str(home)}
    child = subprocess.Popen(
        [sys.executable, "-m", "appraiser.cli", "retrain", "--trials", "50", "--timeout", "300"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(8)  # imports done, tuning under way
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert champion.current() == v1.version
    assert len(ingest.accepted_stones()) == stones and len(ingest.rejected()) == rejected
    assert Appraiser.champion().price(public.head(3))["price"].notna().all()


def test_a_busy_pass_and_a_refused_file_do_not_fail_the_pass(tmp_path):
    """Defect (issue 13): a pass that found another running exited 1, and one bad supplier file
    failed the whole pass: a scheduler (Cloud Run jobs) alerts on both. Both now exit 0; the
    busy pass touches nothing, the bad file goes to failed/ with its reason."""
    import json

    use_home(tmp_path / "home")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "garbage.csv").write_bytes(b"\x00\x01\x02 not a table")
    command = ["pipeline", "run", "--inbox", str(inbox), "--threshold", "100000", "--json"]
    runner = CliRunner()
    with lock_held_elsewhere():
        busy = runner.invoke(app, command)
    assert busy.exit_code == 0, busy.output
    assert json.loads(busy.stdout)["busy"] is True
    assert (inbox / "garbage.csv").exists()  # left for the running pass or the next one

    done = runner.invoke(app, command)
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["busy"] is False and [f["file"] for f in report["failed"]] == ["garbage.csv"]
    assert (inbox / "failed" / "garbage.csv.reason.txt").read_text().strip()
    text = runner.invoke(app, command[:-1])  # as people see it: said, and still exit 0
    assert text.exit_code == 0
