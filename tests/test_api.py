"""The REST API: every endpoint, bad input, auth, storage of appraisals, hot reload."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from appraiser import champion, ingest, pipeline, registry, schema, store
from appraiser.api import create_app
from appraiser.config import MAX_BATCH, REGISTERED_MODEL, settings
from tests.conftest import API_KEY, lock_held_elsewhere, use_home

ADMIN = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def client(home_copy: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The app on a private copy of the trained home, admin key set, metrics on port 9464 (a
    TestClient reaches it as http://testserver:9464)."""
    monkeypatch.setenv("APPRAISER_API_KEY", API_KEY)
    monkeypatch.setenv("APPRAISER_METRICS_PORT", "9464")
    settings.cache_clear()
    with TestClient(create_app()) as c:
        yield c
    settings.cache_clear()


def _app_client(**env: str) -> TestClient:
    for key, value in env.items():
        os.environ[key] = value
    settings.cache_clear()
    try:
        return TestClient(create_app())
    finally:
        for key in env:
            del os.environ[key]
        settings.cache_clear()


# --- appraisals -------------------------------------------------------------------------------


def test_appraisal_is_priced_and_stored(client: TestClient, stone: dict) -> None:
    answer = client.post("/v1/appraisals", json=stone)
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {
        "id",
        "price",
        "price_low",
        "price_high",
        "coverage",
        "currency",
        "model_version",
        "market_level",
        "warnings",
    }
    assert body["price_low"] < body["price"] < body["price_high"]
    assert body["currency"] == "USD" and body["model_version"] == "1" and body["warnings"] == []
    stored = client.get(f"/v1/appraisals/{body['id']}")
    assert stored.status_code == 200
    kept = stored.json()
    assert kept["stone"] == stone and kept["price"] == body["price"]
    assert kept["model_version"] == "1" and kept["latency_ms"] > 0 and kept["feedback"] == []


def test_explained_contributions_add_up_to_the_price(client: TestClient, stone: dict) -> None:
    body = client.post("/v1/appraisals?explain=true&comparables=3", json=stone).json()
    assert set(body["contributions"]) == {"size", "cut", "color", "clarity", "proportions"}
    total = body["baseline"] + sum(body["contributions"].values())
    assert total == pytest.approx(body["price"], abs=0.011)
    assert body["contributions"]["size"] > 0  # a 1.1 ct stone is dearer than the average one
    what_if = body["what_if"]
    assert set(what_if) == {"cut", "color", "clarity"}
    assert what_if["cut"].get("better") is None  # Ideal is the best cut: left out
    worse = what_if["cut"]["worse"]
    assert worse["grade"] == "Premium" and worse["price"] <= body["price"]
    better_color = what_if["color"]["better"]
    assert better_color["grade"] == "G" and better_color["price"] >= body["price"]
    assert len(body["comparables"]) == 3
    for other in body["comparables"]:
        assert (other["cut"], other["color"], other["clarity"]) == ("Ideal", "H", "SI2")
        assert other["price"] > 0 and "carat_difference" in other


def test_unknown_grade_lists_the_allowed_values(client: TestClient, stone: dict) -> None:
    answer = client.post("/v1/appraisals", json={**stone, "cut": "Excellent"})
    assert answer.status_code == 422
    message = answer.json()["message"]
    assert message.startswith("cut") and all(g in message for g in schema.GRADES["cut"])
    assert answer.json()["detail"][0]["loc"] == ["body", "cut"]


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"carat": 0}, "carat", "greater than 0"),
        ({"carat": 11}, "carat", "less than or equal to 10"),
        ({"table": 120}, "table", "less than or equal to 100"),
        ({"x": "wide"}, "x", "valid number"),
        ({"depth": 70}, "depth", "2 z / (x + y)"),
    ],
)
def test_bad_values_name_the_field_and_the_rule(
    client: TestClient, stone: dict, change: dict, field: str, rule: str
) -> None:
    answer = client.post("/v1/appraisals", json={**stone, **change})
    assert answer.status_code == 422
    message = answer.json()["message"]
    assert field in message and rule in message
    assert answer.json()["detail"][0]["loc"] == ["body", field]  # a form can mark the field


def test_malformed_or_incomplete_requests_are_client_errors(
    client: TestClient, stone: dict
) -> None:
    broken = client.post(
        "/v1/appraisals", content=b'{"carat": 1.1,', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 422 and "JSON" in broken.json()["message"]
    missing = {k: v for k, v in stone.items() if k != "clarity"}
    assert "clarity" in client.post("/v1/appraisals", json=missing).json()["message"]
    extra = client.post("/v1/appraisals", json={**stone, "colour": "D"})
    assert extra.status_code == 422 and "colour" in extra.json()["message"]
    assert client.post("/v1/appraisals?comparables=500", json=stone).status_code == 422
    assert client.get(f"/v1/appraisals/{'0' * 32}").status_code == 404  # well formed, unknown
    assert client.get("/v1/appraisals/unknown%00id").status_code == 422  # cannot be an id
    as_text = client.post("/v1/appraisals", json={**stone, "carat": "1.1"})
    assert as_text.status_code == 422 and "carat" in as_text.json()["message"]
    assert client.post("/v1/appraisals", json={**stone, "carat": True}).status_code == 422


def test_a_stone_heavier_than_any_seen_is_priced_with_a_warning(
    client: TestClient, stone: dict
) -> None:
    heavy = {**stone, "carat": 6.0, "x": 12.0, "y": 12.1, "z": 7.4, "depth": 61.4}
    answer = client.post("/v1/appraisals", json=heavy)
    assert answer.status_code == 200
    body = answer.json()
    assert body["price"] > client.post("/v1/appraisals", json=stone).json()["price"]
    assert any(w.startswith("carat 6 is outside") for w in body["warnings"])


def test_batch_answers_in_order(client: TestClient, public: pd.DataFrame) -> None:
    stones = public[list(schema.FEATURES)].sample(300, random_state=3).to_dict(orient="records")
    answer = client.post("/v1/appraisals/batch", json={"diamonds": stones})
    assert answer.status_code == 200
    appraisals = answer.json()["appraisals"]
    assert len(appraisals) == 300 and len({a["id"] for a in appraisals}) == 300
    for i in (0, 150, 299):
        single = client.post("/v1/appraisals", json=stones[i]).json()
        assert appraisals[i]["price"] == single["price"]


def test_batch_limits_and_errors(client: TestClient, stone: dict) -> None:
    too_many = client.post("/v1/appraisals/batch", json={"diamonds": [stone] * (MAX_BATCH + 1)})
    assert too_many.status_code == 413 and f"{MAX_BATCH:,}" in too_many.json()["message"]
    assert client.post("/v1/appraisals/batch", json={"diamonds": []}).status_code == 422
    bad = client.post("/v1/appraisals/batch", json={"diamonds": [stone, {**stone, "carat": -1}]})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "diamonds", 1, "carat"]
    assert bad.json()["message"].startswith("diamonds.1.carat")


def test_request_size_limit_is_configurable(home_copy: Path, stone: dict) -> None:
    with _app_client(APPRAISER_MAX_REQUEST_BYTES="1000") as small:
        assert small.post("/v1/appraisals", json=stone).status_code == 200
        big = small.post("/v1/appraisals/batch", json={"diamonds": [stone] * 20})
        assert big.status_code == 413 and "1,000 bytes" in big.json()["message"]


def test_cors_origins_are_configurable(home_copy: Path) -> None:
    origin = "https://shop.example"
    with _app_client(APPRAISER_CORS_ORIGINS=origin) as allowed:
        ok = allowed.get("/health", headers={"Origin": origin})
        assert ok.headers.get("access-control-allow-origin") == origin
        other = allowed.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    with _app_client() as closed:
        shut = closed.get("/health", headers={"Origin": origin})
        assert "access-control-allow-origin" not in shut.headers


# --- the collection and feedback ----------------------------------------------------------------


def test_similar_stones_share_the_grades_and_are_nearest_in_carat(client: TestClient) -> None:
    query = {"carat": 0.9, "cut": "Ideal", "color": "G", "clarity": "VS2", "n": 4}
    found = client.get("/v1/diamonds/similar", params=query).json()["diamonds"]
    assert 1 <= len(found) <= 4
    gaps = [abs(d["carat"] - 0.9) for d in found]
    assert gaps == sorted(gaps)
    assert all((d["cut"], d["color"], d["clarity"]) == ("Ideal", "G", "VS2") for d in found)
    bad = client.get("/v1/diamonds/similar", params={**query, "color": "Z"})
    assert bad.status_code == 422 and "color must be one of" in bad.json()["message"]


def test_feedback_waits_for_review_before_the_next_retrain(client: TestClient, stone: dict) -> None:
    expert = _key("expert", "expert-a")
    appraisal = client.post("/v1/appraisals", json=stone).json()
    given = client.post(
        f"/v1/appraisals/{appraisal['id']}/feedback", json={"price": 5100}, headers=expert
    )
    assert given.status_code == 201, given.text
    sent = given.json()
    assert sent["status"] == "pending" and sent["expert"] == "expert-a"
    kept = client.get(f"/v1/appraisals/{appraisal['id']}", headers=expert).json()
    assert [(f["price"], f["status"]) for f in kept["feedback"]] == [(5100, "pending")]
    assert (pipeline.feedback_stones()["price"] == 5100).sum() == 0  # not approved: not learned
    reviewer = _key("admin", "admin-b")  # the bootstrap key is no one's: it does not review
    approved = client.post(f"/v1/feedback/{sent['id']}/approve", headers=reviewer)
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    learned = pipeline.feedback_stones()
    assert (learned["price"] == 5100).sum() == 1 and (learned["carat"] == stone["carat"]).all()
    unknown = f"/v1/appraisals/{'f' * 32}/feedback"
    assert client.post(unknown, json={"price": 5100}, headers=expert).status_code == 404
    negative = client.post(
        f"/v1/appraisals/{appraisal['id']}/feedback", json={"price": -5}, headers=expert
    )
    assert negative.status_code == 422 and "price" in negative.json()["message"]


def _key(role: str, name: str) -> dict[str, str]:
    from appraiser import auth

    return {"Authorization": f"Bearer {auth.create_key(name, role, actor='test', person=name)}"}


# --- admin: auth, ingestion, models, retrain ------------------------------------------------------


def test_admin_endpoints_need_the_key(client: TestClient) -> None:
    for method, path in [
        ("post", "/v1/diamonds"),
        ("post", "/v1/models/1/promote"),
        ("post", "/v1/retrain"),
    ]:
        anonymous = client.request(method, path)
        assert anonymous.status_code == 401, path
        assert anonymous.headers["www-authenticate"] == "Bearer"
        wrong = client.request(method, path, headers={"Authorization": "Bearer " + "x" * 14})
        assert wrong.status_code == 401 and "unknown or revoked" in wrong.json()["message"]


def test_without_a_bootstrap_key_only_store_keys_work(
    home_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("APPRAISER_API_KEY", raising=False)
    with _app_client() as closed:
        for path in ("/v1/diamonds", "/v1/models/1/promote", "/v1/retrain"):
            refused = closed.post(path, headers={"Authorization": "Bearer anything"})
            assert refused.status_code == 401 and "unknown or revoked" in refused.json()["message"]
        admin = _key("admin", "first-admin")
        assert closed.get("/v1/audit", headers=admin).status_code == 200


def test_ingest_json_and_csv_with_a_report(
    client: TestClient, public: pd.DataFrame, stone: dict
) -> None:
    stones = public.sample(20, random_state=5).to_dict(orient="records")
    stones[3]["price"] = -1
    sent = client.post(
        "/v1/diamonds", json={"diamonds": stones, "source": "new expert"}, headers=ADMIN
    )
    assert sent.status_code == 200
    report = sent.json()
    assert (report["rows_read"], report["rows_accepted"], report["rows_rejected"]) == (20, 19, 1)
    assert report["rejected_rows"][0]["line"] == 5  # header + 4th stone
    assert "price must be > 0" in report["rejected_rows"][0]["reasons"]
    assert len(ingest.accepted_stones()) == 19 and len(ingest.rejected()) == 1

    again = client.post(
        "/v1/diamonds", json={"diamonds": stones, "source": "new expert"}, headers=ADMIN
    )
    assert again.json()["already_ingested"] and len(ingest.accepted_stones()) == 19

    csv = public.sample(10, random_state=6).to_csv(index=False).encode()
    upload = client.post(
        "/v1/diamonds", files={"file": ("batch.csv", io.BytesIO(csv), "text/csv")}, headers=ADMIN
    )
    assert upload.status_code == 200 and upload.json()["rows_accepted"] == 10
    assert len(ingest.accepted_stones()) == 29

    junk = client.post(
        "/v1/diamonds",
        files={"file": ("x.csv", io.BytesIO(b"a;b\n1;2\n"), "text/csv")},
        headers=ADMIN,
    )
    assert junk.status_code == 422 and "column" in junk.json()["message"]
    empty = client.post("/v1/diamonds", json={"diamonds": []}, headers=ADMIN)
    assert empty.status_code == 422 and isinstance(empty.json()["detail"], list)
    # columns outside the schema are ignored, even ones named like the report's own columns
    extra = public.sample(3, random_state=8).assign(line=1, batch_id=99, reasons="x")
    odd = client.post(
        "/v1/diamonds",
        json={"diamonds": extra.to_dict(orient="records"), "source": "with\x00nul"},
        headers=ADMIN,
    )
    assert odd.status_code == 200 and odd.json()["rows_accepted"] == 3
    text = client.post(
        "/v1/diamonds", content=b"hello", headers={**ADMIN, "content-type": "text/plain"}
    )
    assert text.status_code == 415


def test_models_and_promotion(client: TestClient) -> None:
    listed = client.get("/v1/models", headers=ADMIN).json()
    assert listed["champion"] == "1"
    (only,) = listed["models"]
    assert only["champion"] and 0 < only["metrics"]["mape"] < 50
    assert client.post("/v1/models/7/promote", headers=ADMIN).status_code == 404
    assert client.post("/v1/models/abc/promote", headers=ADMIN).status_code == 422
    _register_copy_of_v1()
    promoted = client.post("/v1/models/2/promote", headers=ADMIN)
    assert promoted.status_code == 200 and promoted.json()["champion"] == "2"
    # this process serves the new champion at once
    assert client.get("/health").json()["champion"] == "2"
    assert client.post("/v1/appraisals", json=schema.example_stone()).json()["model_version"] == "2"


def test_rollback_and_moves_wait_for_the_pipeline(client: TestClient) -> None:

    _register_copy_of_v1()
    assert client.post("/v1/models/2/promote", headers=ADMIN).status_code == 200
    back = client.post("/v1/models/rollback", headers=ADMIN)
    assert back.status_code == 200 and back.json()["champion"] == "1"
    assert client.get("/health").json()["champion"] == "1"
    with lock_held_elsewhere():
        busy = client.post("/v1/models/2/promote", headers=ADMIN)
        assert busy.status_code == 409 and "try again" in busy.json()["message"]
    assert client.post("/v1/models/rollback").status_code in (401, 403)


def test_a_marked_up_upload_is_held_until_released(
    client: TestClient, public: pd.DataFrame
) -> None:
    marked = public.sample(300, random_state=12)
    marked = marked.assign(price=(marked["price"] * 1.3).round())
    upload = client.post(
        "/v1/diamonds", json={"diamonds": marked.to_dict(orient="records")}, headers=ADMIN
    )
    body = upload.json()
    assert upload.status_code == 200 and body["held"], body
    assert "+30" in body["screening"]["summary"] or "held" in body["message"].lower()
    held = client.get("/v1/batches", params={"status": "held"}, headers=ADMIN).json()
    assert [b["id"] for b in held] == [body["batch_id"]]
    assert client.get("/v1/batches", headers=ADMIN).status_code == 200
    assert client.get("/v1/batches").status_code in (401, 403)
    released = client.post(f"/v1/batches/{body['batch_id']}/release", headers=ADMIN)
    assert released.status_code == 200 and released.json()["previous"] == "held"
    again = client.post(f"/v1/batches/{body['batch_id']}/release", headers=ADMIN)
    assert again.status_code == 409
    assert client.post("/v1/batches/999/drop", headers=ADMIN).status_code == 404
    assert client.post(f"/v1/batches/{body['batch_id']}/bless", headers=ADMIN).status_code == 422


@pytest.mark.usefixtures("one_candidate")  # a test of the loop, not of the candidates
def test_retrain_runs_as_a_job(client: TestClient, small_csv: Path) -> None:
    upload = client.post(
        "/v1/diamonds",
        files={"file": ("small.csv", small_csv.read_bytes(), "text/csv")},
        headers=ADMIN,
    )
    assert upload.json()["rows_accepted"] > 1000
    started = client.post("/v1/retrain", json={"trials": 1, "timeout": 5}, headers=ADMIN)
    assert started.status_code == 202
    job_id = started.json()["job_id"]
    assert started.json()["status_url"] == f"/v1/jobs/{job_id}"
    clash = client.post("/v1/retrain", json={"trials": 1, "timeout": 5}, headers=ADMIN)
    assert clash.status_code == 409 and job_id in clash.json()["message"]
    deadline = time.monotonic() + 300
    job = client.get(f"/v1/jobs/{job_id}").json()
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(1)
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["version"] == "2" and isinstance(job["result"]["promoted"], bool)
    assert {v.version for v in champion.versions()} == {"1", "2"}
    assert client.get(f"/v1/jobs/{'0' * 32}").status_code == 404
    assert client.post("/v1/retrain", json={"trials": 0}, headers=ADMIN).status_code == 422


# --- health, metrics, no champion ----------------------------------------------------------------


def test_health_and_metrics(client: TestClient, stone: dict) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["champion"] == "1"
    assert client.get("/ready").status_code == 200
    client.post("/v1/appraisals", json=stone)
    client.post("/v1/appraisals", json={**stone, "cut": "?"})
    assert client.get("/metrics").status_code == 404  # the API's port never serves them
    metrics_port = client.app.state.ctx.config.metrics_port  # type: ignore[attr-defined]
    text = client.get(f"http://testserver:{metrics_port}/metrics").text
    assert 'appraiser_stones_priced_total{endpoint="single"}' in text
    assert 'route="/v1/appraisals",status="422"' in text
    assert "appraiser_champion_version 1.0" in text


def test_without_a_champion_appraisals_say_what_to_do(
    tmp_path: Path, stone: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_home(tmp_path / "empty")
    with TestClient(create_app()) as empty:
        assert empty.get("/health").json()["champion"] is None
        assert empty.get("/ready").status_code == 503
        answer = empty.post("/v1/appraisals", json=stone)
        assert answer.status_code == 503 and "appraiser train" in answer.json()["message"]


def test_schema_endpoint_comes_from_the_one_schema(client: TestClient) -> None:
    described = client.get("/v1/schema").json()
    assert described["grades"] == {k: list(v) for k, v in schema.GRADES.items()}
    assert described["numeric"]["carat"]["max"] == schema.BOUNDS["carat"].high
    assert described["example"] == schema.EXAMPLE_STONE
    openapi = client.get("/openapi.json").json()
    diamond = openapi["components"]["schemas"]["DiamondIn"]["properties"]
    assert diamond["color"]["enum"] == list(schema.GRADES["color"])


# --- hot reload across processes ------------------------------------------------------------------


def _register_copy_of_v1() -> str:
    """A second registered version (the same model files): enough to see which one is served."""
    cl = registry.client()
    first = cl.get_model_version(REGISTERED_MODEL, "1")
    source = str(first.source)
    return str(cl.create_model_version(REGISTERED_MODEL, source, run_id=first.run_id).version)


def test_a_promotion_in_another_process_is_served_without_a_failed_request(
    live_server: str, stone: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _register_copy_of_v1() == "2"
    versions: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=live_server, timeout=10) as http:
            while not stop.is_set():
                answer = http.post("/v1/appraisals", json=stone)
                if answer.status_code == 200:
                    versions.append(answer.json()["model_version"])
                else:
                    failures.append(f"{answer.status_code} {answer.text}")

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        promoted = subprocess.run(
            [sys.executable, "-m", "appraiser.cli", "models", "promote", "2"],
            capture_output=True,
            text=True,
            env={**os.environ},
            timeout=120,
        )
        assert promoted.returncode == 0, promoted.stderr
        deadline = time.monotonic() + 20  # APPRAISER_RELOAD_SECONDS is 2 by default
        while (not versions or versions[-1] != "2") and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert versions[0] == "1" and versions[-1] == "2"
    switched = versions.index("2")
    assert set(versions[switched:]) == {"2"}  # once swapped, never back
    assert httpx.get(f"{live_server}/health").json()["champion"] == "2"
    # every answer was stored (in the background), with the model that gave it
    expected = {v: versions.count(v) for v in ("1", "2")}
    deadline = time.monotonic() + 10
    while _stored_versions() != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _stored_versions() == expected


def _stored_versions() -> dict[str, int]:
    from sqlalchemy import func, select

    query = select(store.Appraisal.model_version, func.count()).group_by(
        store.Appraisal.model_version
    )
    with store.ready().connect() as conn:
        return {str(v): int(n) for v, n in conn.execute(query).all()}
