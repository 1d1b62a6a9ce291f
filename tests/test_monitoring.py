"""Issue 12: one picture of the running system. The figures come from what the store keeps after
real events (a labelled batch, a batch held by the guard, reviewed expert prices, champion moves),
through the service, the API (admin only), the CLI and the admin page."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from appraiser import champion, feedback, monitoring, registry, schema, store
from appraiser.api.routers.monitoring import quantile
from appraiser.cli import app
from appraiser.ingest import ingest_file
from tests.conftest import API_KEY
from tests.test_web import TIMEOUT_MS, expert_prices
from tests.test_web import browser as browser  # the Chromium fixture (skipped without it)

ADMIN = {"Authorization": f"Bearer {API_KEY}"}
# appraisals of one stone at $1,000 (range $900 to $1,100), priced again by experts
EXPERT_PRICES = [1050.0, 1200.0, 980.0]


@pytest.fixture
def champion_home(home_copy: Path, store_url: str) -> str:
    """The trained champion (v1) in a private home, its store on the backend under test."""
    return "1"


def batches(public: pd.DataFrame, folder: Path) -> tuple[Path, Path]:
    """A labelled batch with two bad rows, and one marked up 30% (the guard holds it)."""
    fresh = public.sample(400, random_state=11)
    good = fresh.head(250).astype(object)
    bad = good.head(2).copy()
    bad.iloc[0, bad.columns.get_loc("price")] = -5
    bad.iloc[1, bad.columns.get_loc("carat")] = "heavy"
    plain = folder / "plain.csv"
    pd.concat([good, bad]).to_csv(plain, index=False)
    marked = folder / "marked.csv"
    up = fresh.tail(150)
    up.assign(price=(up["price"] * 1.3).round()).to_csv(marked, index=False)
    return plain, marked


def reviewed_prices() -> None:
    """Three appraisals by v1, each priced by an expert and approved by an admin."""
    for i, price in enumerate(EXPERT_PRICES):
        stone = schema.example_stone() | {"carat": 0.5 + i / 10}
        uid = store.record_appraisal(
            stone, 1000.0, price_low=900.0, price_high=1100.0, model_version="1", latency_ms=2.0
        )
        sent = feedback.submit(uid, price, actor="expert-a")
        feedback.review(sent["id"], approve=True, actor="admin-b")


def champion_moves() -> str:
    """A gate promotion of a new version (as a retrain makes), then a person's rollback."""
    mv = registry.client().get_model_version(registry.REGISTERED_MODEL, "1")
    v2 = registry.register(str(mv.source), str(mv.run_id), "copy of v1")
    champion.move(v2, kind="gate", reason="retrain: better on reference stones", actor="gate")
    champion.rollback(actor="admin-b")
    return v2


def events(public: pd.DataFrame, folder: Path) -> dict[str, int | str]:
    plain, marked = batches(public, folder)
    accepted = ingest_file(plain)
    held = ingest_file(marked)
    assert not accepted.held and held.held, held.hold_reasons
    reviewed_prices()
    v2 = champion_moves()
    assert accepted.batch_id is not None and held.batch_id is not None
    return {"accepted": accepted.batch_id, "held": held.batch_id, "v2": v2}


def test_overview_draws_from_what_the_store_keeps(champion_home, public, tmp_path):
    happened = events(public, tmp_path)
    figures = monitoring.overview(6)

    # appraisals this hour, by version, with their stored pricing time
    per_hour = figures["appraisals"]["per_hour"]
    # in this hour's bar, or the last one's when the hour turned during the test
    assert len(per_hour) == 6 and sum(h["count"] for h in per_hour[-2:]) == 3
    assert figures["appraisals"]["total"] == 3
    assert figures["appraisals"]["by_version"] == [{"version": "1", "count": 3}]
    assert figures["appraisals"]["pricing_ms"]["p50"] == 2.0

    # the champion's history: the gate's promotion, then the rollback, who and why
    moves = [(m["kind"], m["version"], m["actor"]) for m in figures["champion_history"]]
    assert moves[-2:] == [("gate", happened["v2"], "gate"), ("rollback", "1", "admin-b")]
    assert figures["champion_history"][-2]["reason"] == "retrain: better on reference stones"
    assert figures["champion"] == "1"

    # accuracy from reviewed expert prices: MAPE of the experts' prices, share in range
    (experts,) = figures["accuracy"]["feedback"]
    expected_mape = 100 * sum(abs(1000 - p) / p for p in EXPERT_PRICES) / 3
    assert experts["version"] == "1" and experts["n"] == 3
    assert math.isclose(experts["mape"], expected_mape, abs_tol=1e-3)
    assert math.isclose(experts["coverage"], 100 * 2 / 3, abs_tol=1e-3)

    # ... and from each labelled batch, as the guard screened it
    screened = {b["batch_id"]: b for b in figures["accuracy"]["batches"]}
    assert set(screened) == {happened["accepted"], happened["held"]}
    assert screened[happened["held"]]["held"] and screened[happened["held"]]["status"] == "held"
    assert screened[happened["held"]]["bias"] > 15  # +30% prices
    assert screened[happened["accepted"]]["coverage"] > 50
    (pooled,) = figures["accuracy"]["batches_by_version"]  # the held batch left out
    # stones the champion trained on are left out (public stones of its training sample)
    kept = 250 - screened[happened["accepted"]]["excluded"]
    assert pooled["version"] == "1" and pooled["stones"] == kept and pooled["coverage"] > 50

    # drift per feature for each batch
    drift = figures["drift"]
    assert [b["batch_id"] for b in drift["batches"]] == [happened["accepted"], happened["held"]]
    for b in drift["batches"]:
        assert set(b["features"]) == set(schema.FEATURES) and b["judged"]
        assert all(0 <= f["effect"] <= 1 for f in b["features"].values())

    # rejected rows by reason, values left out so like reasons count together
    reasons = {r["reason"]: r["rows"] for r in figures["rejected"]["by_reason"]}
    assert figures["rejected"]["rows"] == 2
    assert reasons["carat: not a number"] == 1
    assert any(r.startswith("price") for r in reasons)

    # the held batch, waiting
    (held,) = figures["held_batches"]
    assert held["batch_id"] == happened["held"] and "held for review" in (held["summary"] or "")

    json.dumps(figures, allow_nan=False)  # JSON as it is
    text = "\n".join(monitoring.summary(figures))
    assert "Held batches: " + str(happened["held"]) in text


def test_an_empty_store_says_what_is_missing(tmp_path, monkeypatch):
    from tests.conftest import use_home

    use_home(tmp_path / "home")
    figures = monitoring.overview()
    assert figures["appraisals"]["total"] == 0 and len(figures["appraisals"]["per_hour"]) == 24
    assert figures["champion"] is None and figures["held_batches"] == []
    text = "\n".join(monitoring.summary(figures))
    assert "no reviewed expert prices yet" in text
    assert "none waiting for review" in text


def test_reasons_lose_their_values():
    assert monitoring.reason_kind("carat: not a number ('heavy')") == "carat: not a number"
    assert monitoring.reason_kind("duplicate of a stone already in the store (batch 3)") == (
        "duplicate of a stone already in the store"
    )
    assert monitoring.reason_kind("price must be > 0") == "price must be > 0"


def test_latency_percentiles_from_histogram_buckets():
    # 100 requests: 50 under 1 ms, 40 more under 5 ms, 10 more under 10 ms
    buckets = [(0.001, 50.0), (0.005, 90.0), (0.01, 100.0), (math.inf, 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.001)
    assert quantile(0.9, buckets) == pytest.approx(0.005)
    assert quantile(0.99, buckets) == pytest.approx(0.0095)
    assert quantile(0.5, [(0.001, 0.0), (math.inf, 0.0)]) is None
    assert quantile(0.99, [(0.001, 0.0), (math.inf, 10.0)]) == 0.001  # past the last bound


# --- the API and the CLI ----------------------------------------------------------------------


@pytest.fixture
def client(home_copy: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    from appraiser.api import create_app
    from appraiser.config import settings

    monkeypatch.setenv("APPRAISER_API_KEY", API_KEY)
    settings.cache_clear()
    with TestClient(create_app()) as c:
        yield c
    settings.cache_clear()


def test_the_api_serves_the_figures_to_admins_only(client, public, tmp_path):
    from appraiser import auth

    happened = events(public, tmp_path)
    # the server follows the champion by polling: its poll may have caught v2 between the
    # promotion and the rollback and be serving it still; one poll now (after any load under way)
    client.app.state.ctx.champions.check()
    for _ in range(3):
        assert client.post("/v1/appraisals", json=schema.example_stone()).status_code == 200

    assert client.get("/v1/monitoring").status_code == 401
    staff = auth.create_key("staff-m", "staff", actor="test")
    refused = client.get("/v1/monitoring", headers={"Authorization": f"Bearer {staff}"})
    assert refused.status_code == 403 and "admin" in refused.json()["message"]
    assert client.get("/v1/monitoring?hours=0", headers=ADMIN).status_code == 422

    answer = client.get("/v1/monitoring?hours=12", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["hours"] == 12 and len(body["appraisals"]["per_hour"]) == 12
    assert body["champion"] == "1" == champion.current()
    assert [b["batch_id"] for b in body["held_batches"]] == [happened["held"]]
    assert body["accuracy"]["feedback"][0]["n"] == 3
    appraising = body["requests"]["appraising"]
    assert appraising["count"] >= 3 and appraising["p50_ms"] > 0
    assert appraising["p50_ms"] <= appraising["p90_ms"] <= appraising["p99_ms"]

    schema_doc = client.get("/openapi.json").json()
    operation = schema_doc["paths"]["/v1/monitoring"]["get"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/MonitoringOut"
    )
    assert {"401", "403"} <= set(operation["responses"])
    assert "held_batches" in schema_doc["components"]["schemas"]["MonitoringOut"]["properties"]


def test_the_cli_prints_the_figures(champion_home, public, tmp_path):
    happened = events(public, tmp_path)
    runner = CliRunner()
    shown = runner.invoke(app, ["monitor", "--json", "--hours", "3"], catch_exceptions=False)
    assert shown.exit_code == 0
    figures = json.loads(shown.output)
    assert figures["hours"] == 3 and figures["appraisals"]["total"] == 3
    assert [b["batch_id"] for b in figures["held_batches"]] == [happened["held"]]
    said = runner.invoke(app, ["monitor"], catch_exceptions=False)
    assert said.exit_code == 0
    assert "Expert prices, v1: 3 approved" in said.output
    assert f"Held batches: {happened['held']}" in said.output


# --- the admin page ---------------------------------------------------------------------------


def test_the_admin_page_draws_each_chart(browser, live_server, public, tmp_path):
    """After a retrain's promotion and a rollback, a held batch and reviewed expert prices, the
    Monitoring section shows every chart from the data."""
    from playwright.sync_api import expect

    plain, marked = batches(public, tmp_path)
    with httpx.Client(base_url=live_server, timeout=60, headers=ADMIN) as api:
        for path in (plain, marked):
            with path.open("rb") as f:
                sent = api.post("/v1/diamonds", files={"file": (path.name, f, "text/csv")})
            assert sent.status_code == 200, sent.text
        held_id = sent.json()["batch_id"]
        assert sent.json()["held"]
        given = expert_prices(live_server, [1.04, 1.5])
        from appraiser import auth

        reviewer = auth.create_key("monica", "admin", actor="test", person="monica")
        for price in given:
            approved = api.post(
                f"/v1/feedback/{price['id']}/approve",
                headers={"Authorization": f"Bearer {reviewer}"},
            )
            assert approved.status_code == 200, approved.text
    champion_moves()

    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security" in m.text else None)
    try:
        page.goto(live_server + "/admin")
        expect(page.locator("body[data-ready=true]")).to_have_count(1, timeout=TIMEOUT_MS)
        expect(page.locator("#monitor-status")).to_contain_text("Enter an admin API key")
        page.get_by_label("Admin API key").fill(API_KEY)
        page.get_by_role("button", name="Use this key").click()
        expect(page.locator("#monitor-body")).to_be_visible(timeout=TIMEOUT_MS)

        # appraisals per hour: a bar this hour
        bars = page.locator("#mon-hours svg rect.bar")
        expect(bars).to_have_count(1)
        assert int(bars.first.get_attribute("data-count") or 0) >= 2
        # latency of the appraisals this server answered
        expect(page.locator("#mon-latency-stats [data-stat=p50] dd")).to_have_text(
            re.compile(r"^\d+(\.\d+)? ms$")
        )
        # the champion's history: the gate's promotion and the rollback, with who and why
        history = page.locator("#mon-history tbody tr")
        expect(history.first).to_contain_text("Rolled back")
        expect(history.first).to_contain_text("admin-b")
        gate_moves = page.locator("#mon-history tbody tr[data-kind=gate]")
        expect(gate_moves.filter(has_text="retrain: better on reference stones")).to_have_count(1)
        # accuracy and coverage per version, from expert prices and from batches
        expect(page.locator("#mon-accuracy svg rect.bar.experts")).to_have_count(1)
        expect(page.locator("#mon-accuracy svg rect.bar.labelled")).to_have_count(1)
        expect(page.locator("#mon-accuracy table.batches tbody tr")).to_have_count(2)
        # drift: 9 features by 2 batches
        expect(page.locator("#mon-drift svg rect.cell")).to_have_count(9 * 2)
        # rejected rows by reason
        assert page.locator("#mon-rejected svg rect.bar").count() >= 2
        expect(page.locator("#mon-rejected svg")).to_contain_text("carat: not a number")
        # the held batch, with its buttons; releasing it empties the table
        held = page.locator(f"#mon-held tbody tr[data-batch='{held_id}']")
        expect(held).to_contain_text("held for review")
        held.get_by_role("button", name=f"Release batch {held_id}").click()
        expect(page.locator("#mon-held")).to_contain_text("No batch waits for review.")
        expect(page.locator("#monitor-status")).to_contain_text(f"Batch {held_id} released")
        assert store_batch_status(held_id) == "accepted"
    finally:
        context.close()
    assert not errors, errors


def store_batch_status(batch_id: int) -> str | None:
    from appraiser.batches import listed

    found = [b for b in listed() if b["id"] == batch_id]
    return found[0]["status"] if found else None
