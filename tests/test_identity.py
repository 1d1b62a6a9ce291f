"""Issue 24: a person behind every key, names that cannot pass for others, and an audit trail of
every hand that nobody can rewrite - on SQLite and PostgreSQL. Each test failed on the code
before the fix."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from appraiser import archive, audit, auth, batches, clock, feedback, ingest, pipeline, store
from appraiser.api import create_app
from appraiser.cli import app as cli
from appraiser.config import settings
from tests.conftest import API_KEY

ADMIN = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def client(
    home_copy: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    """The app on a private copy of the trained home, the store on each backend."""
    monkeypatch.setenv("APPRAISER_API_KEY", API_KEY)
    settings.cache_clear()
    with TestClient(create_app()) as c:
        yield c
    settings.cache_clear()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def made(client: TestClient, name: str, role: str, by: dict, **extra: str) -> dict[str, str]:
    answer = client.post("/v1/keys", json={"name": name, "role": role, **extra}, headers=by)
    assert answer.status_code == 201, answer.text
    return bearer(answer.json()["key"])


def price_sent(client: TestClient, stone: dict, by: dict) -> int:
    appraisal = client.post("/v1/appraisals", json=stone).json()
    client.app.state.ctx.writer.flush()  # type: ignore[attr-defined]  # written, not queued
    sent = client.post(
        f"/v1/appraisals/{appraisal['id']}/feedback", json={"price": 5000}, headers=by
    )
    assert sent.status_code in (200, 201), sent.text
    return int(sent.json()["id"])


# --- 1. a person behind keys ---------------------------------------------------------------------


def test_a_second_key_does_not_approve_its_makers_price(client: TestClient, stone: dict) -> None:
    """Defect: an admin's own approval was refused (409), but a second admin key the same admin
    made approved the same price (200)."""
    ana = bearer(auth.create_key("ana", "admin", actor="Ana"))  # made by Ana: hers
    ana_expert = made(client, "ana prices", "expert", ana)  # made with her key: hers
    ana_second = made(client, "ana-2", "admin", ana)
    bob = bearer(auth.create_key("bob", "admin", actor="bob"))
    price = price_sent(client, stone, ana_expert)
    for key in (ana, ana_second):
        refused = client.post(f"/v1/feedback/{price}/approve", headers=key)
        assert refused.status_code == 409, refused.text
        assert "another admin" in refused.json()["message"]
    assert client.post(f"/v1/feedback/{price}/approve", headers=bob).status_code == 200
    keys = {k["name"]: k["person"] for k in client.get("/v1/keys", headers=ADMIN).json()}
    assert keys == {"ana": "ana", "ana prices": "ana", "ana-2": "ana", "bob": "bob"}
    approved = audit.events(action="feedback_approved")[0]
    assert approved["actor"] == "bob" and approved["person"] == "bob"


def test_a_key_cannot_make_a_key_for_another_person(client: TestClient) -> None:
    """Review: an admin made a key "for bob" with her own key and approved her price with it."""
    alice = bearer(auth.create_key("alice", "admin", actor="alice"))
    refused = client.post(
        "/v1/keys", json={"name": "helper", "role": "admin", "person": "bob"}, headers=alice
    )
    assert refused.status_code == 403 and "person" in refused.json()["message"]
    assert made(client, "alice-2", "admin", alice, person="Alice")  # her own person, named
    assert made(client, "bob", "admin", ADMIN, person="bob")  # the bootstrap key names people


def test_a_nul_character_in_the_address_is_a_clients_mistake(client: TestClient) -> None:
    """Review: on PostgreSQL `?person=%00` and a key name holding NUL answered 500."""
    for method, address in (
        ("GET", "/v1/audit?person=%00"),
        ("GET", "/v1/audit?actor=a%00b"),
        ("POST", "/v1/keys/a%00/revoke"),
    ):
        answer = client.request(method, address, headers=ADMIN)
        assert answer.status_code == 422 and "NUL" in answer.json()["message"], address


def test_the_bootstrap_key_does_not_review(client: TestClient, stone: dict) -> None:
    """Review: the bootstrap key is no one's, so it approved anyone's price."""
    ana = bearer(auth.create_key("ana", "expert", actor="ana"))
    price = price_sent(client, stone, ana)
    refused = client.post(f"/v1/feedback/{price}/approve", headers=ADMIN)
    assert refused.status_code == 409 and "own key" in refused.json()["message"]


def test_the_command_line_user_is_not_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review: `USER=carol appraiser feedback approve` acted as carol."""
    real = audit.cli_actor()
    for variable in ("USER", "LOGNAME", "LNAME", "USERNAME"):
        monkeypatch.setenv(variable, "carol")
    assert audit.cli_actor() == real != "cli:carol"


def test_a_key_made_with_the_bootstrap_key_is_the_bootstrap_persons(
    client: TestClient, stone: dict
) -> None:
    spare = made(client, "spare", "admin", ADMIN)  # nobody named: the bootstrap key's person
    price = price_sent(client, stone, spare)
    assert client.post(f"/v1/feedback/{price}/approve", headers=ADMIN).status_code == 409


def test_the_command_line_and_keys_of_one_person_are_one_person(
    client: TestClient, stone: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: `cli:root` and a key `root` were two reviewers; one person passed twice."""
    monkeypatch.setattr(audit, "cli_actor", lambda: "cli:Root")
    runner = CliRunner()
    shown = runner.invoke(cli, ["keys", "create", "--role", "admin", "--name", "mine"])
    assert shown.exit_code == 0, shown.output
    mine = bearer(shown.stdout.strip().splitlines()[-1])  # held by the shell's user: root
    price = price_sent(client, stone, mine)
    refused = runner.invoke(cli, ["feedback", "approve", str(price)])
    assert refused.exit_code == 1 and "another admin" in refused.output
    # and the other way round: a price sent at the command line, a key of the same person
    appraisal = client.post("/v1/appraisals", json={**stone, "carat": 1.2}).json()
    client.app.state.ctx.writer.flush()  # type: ignore[attr-defined]
    sent = runner.invoke(cli, ["feedback", "send", appraisal["id"], "6100"])
    assert sent.exit_code == 0, sent.output
    root_key = made(client, "desk", "admin", ADMIN, person="root")
    second = feedback.listing("pending")[-1]["id"]
    assert client.post(f"/v1/feedback/{second}/approve", headers=root_key).status_code == 409
    made_for_eve = runner.invoke(
        cli, ["keys", "create", "--role", "admin", "--name", "eve", "--person", "eve"]
    )
    assert made_for_eve.exit_code == 0, made_for_eve.output
    eve = bearer(made_for_eve.stdout.strip().splitlines()[-1])
    assert client.post(f"/v1/feedback/{second}/approve", headers=eve).status_code == 200


def test_a_person_must_be_a_proper_name(client: TestClient) -> None:
    for person in ("system:gate", "Gate", "api job 1", "cli x", "bootstrap-admin."):
        answer = client.post(
            "/v1/keys", json={"name": "k", "role": "staff", "person": person}, headers=ADMIN
        )
        assert answer.status_code == 422, person
        message = answer.json()["message"]
        assert message.startswith("person:") and "system acts under" in message, message


# --- 2. names that cannot pass for others ---------------------------------------------------------


def test_names_that_look_like_the_systems_are_refused(client: TestClient) -> None:
    """Defect: `gate `, `Gate`, `api job 0192abcd` and `bootstrap-admin.` were made; only `gate`
    exactly was refused."""
    for name in (
        "gate ",
        "Gate",
        "GATE.",
        "api job 0192abcd",
        "Api  Job 1",
        "bootstrap-admin.",
        "Bootstrap_Admin",
        "system",
        "system-gate",
        "cli root",
        " anonymous",
    ):
        answer = client.post("/v1/keys", json={"name": name, "role": "staff"}, headers=ADMIN)
        assert answer.status_code == 422, name
        assert answer.json()["message"].startswith("name:"), answer.json()
    assert client.get("/v1/keys", headers=ADMIN).json() == []


def test_names_are_unique_without_case_and_separators(client: TestClient) -> None:
    first = client.post("/v1/keys", json={"name": " shop  one ", "role": "staff"}, headers=ADMIN)
    assert first.status_code == 201 and first.json()["name"] == "shop one"
    for twin in ("Shop One", "shop-one", "shop_one.", "SHOP   ONE"):
        answer = client.post("/v1/keys", json={"name": twin, "role": "staff"}, headers=ADMIN)
        assert answer.status_code == 409, twin
    revoked = client.post("/v1/keys/SHOP ONE/revoke", headers=ADMIN)
    assert revoked.status_code == 200 and revoked.json()["name"] == "shop one"
    assert not revoked.json()["active"]


def test_the_systems_actors_are_marked(
    store_url: str, tmp_path: Path, public: pd.DataFrame
) -> None:
    """Defect: retrain jobs acted as `api job <id>`, which a key could be named."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    public.sample(40, random_state=5).to_csv(inbox / "a.csv", index=False)
    reports, failed = pipeline.ingest_inbox(inbox)
    assert not failed and reports[0].batch_id is not None
    (event,) = audit.events(action="ingest")
    assert event["actor"] == audit.INBOX == "system:inbox" and event["person"] is None
    assert audit.system_actor("job 1a2b").startswith(audit.SYSTEM)
    with pytest.raises(auth.KeyRefused):
        auth.create_key("system:job 1a2b", "admin", actor="test")


def _at_0005_with_keys(rows: list[tuple[str, str]]) -> None:
    """A store at revision 0005 holding keys (name, created_by) as the old code made them."""
    store.upgrade(revision="0005")
    with store.engine().begin() as conn:
        for i, (name, maker) in enumerate(rows):
            conn.execute(
                text(
                    "INSERT INTO api_keys (name, role, key_hash, prefix, created_at, created_by) "
                    "VALUES (:name, 'admin', :hash, 'dak_x', :at, :maker)"
                ),
                {"name": name, "hash": f"{i:064x}", "at": clock.now(), "maker": maker},
            )


def test_the_migration_revokes_look_alikes_and_gives_keys_their_person(store_url: str) -> None:
    _at_0005_with_keys(
        [
            ("ana", "bootstrap-admin"),
            ("ana-spare", "ana"),  # made with ana's key: ana's
            ("bob", "cli:root"),
            ("gate ", "ana"),
            ("Ana", "bob"),
            ("bootstrap-admin.", "bob"),
            ("api job 0192abcd", "bob"),
        ]
    )
    store.upgrade()
    keys = {k["name"]: k for k in auth.list_keys()}
    assert {n: k["person"] for n, k in keys.items() if k["active"]} == {
        "ana": "ana",
        "ana-spare": "ana",
        "bob": "bob",
    }
    revoked = sorted(e["details"]["name"] for e in audit.events(action="key_revoked"))
    assert revoked == sorted(["gate ", "Ana", "bootstrap-admin.", "api job 0192abcd"])
    assert keys["gate "]["revoked_by"] == "system:migration 0006"
    with pytest.raises(auth.KeyRefused, match="exists already"):
        auth.create_key("ANA", "staff", actor="test")


# --- 3. every hand in the trail, in the change's own transaction ---------------------------------


def test_the_cli_ingest_is_audited_with_its_user(
    store_url: str, tmp_path: Path, public: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: `appraiser ingest` left no trace of who stored the batch."""
    monkeypatch.setattr(audit, "cli_actor", lambda: "cli:carla")
    path = tmp_path / "batch.csv"
    public.sample(30, random_state=6).to_csv(path, index=False)
    done = CliRunner().invoke(cli, ["ingest", str(path), "--source", "expert"])
    assert done.exit_code == 0, done.output
    (event,) = audit.events(action="ingest")
    assert (event["actor"], event["person"]) == ("cli:carla", "carla")
    assert event["details"]["rows_accepted"] == 30 and event["details"]["source"] == "expert"


def test_a_failure_after_the_audit_row_rolls_both_back(
    store_url: str, tmp_path: Path, public: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: the upload's audit row was written after, and outside, the ingest transaction."""
    path = tmp_path / "batch.csv"
    stones = public.sample(30, random_state=7).astype(object)
    stones.iloc[0, stones.columns.get_loc("price")] = -1  # one rejected row to insert
    stones.to_csv(path, index=False)

    def broken(session: object, rows: object) -> None:
        raise RuntimeError("the disk filled up")

    with monkeypatch.context() as patched, pytest.raises(RuntimeError, match="disk"):
        patched.setattr(ingest, "_insert_rejected", broken)
        ingest.ingest_file(path, actor="ana", action="upload", screen=False)
    assert batches.listed() == [] and audit.events() == []
    report = ingest.ingest_file(path, actor="ana", action="upload", screen=False)
    (event,) = audit.events()
    assert event["action"] == "upload" and event["details"]["batch_id"] == report.batch_id


def test_the_api_upload_is_audited_with_the_keys_person(client: TestClient, public) -> None:
    ana = made(client, "ana", "admin", ADMIN, person="ana")
    rows = public.sample(20, random_state=8).to_dict(orient="records")
    answer = client.post("/v1/diamonds", json={"diamonds": rows}, headers=ana)
    assert answer.status_code == 200, answer.text
    (event,) = audit.events(action="upload")
    assert (event["actor"], event["person"]) == ("ana", "ana")
    assert event["details"]["batch_id"] == answer.json()["batch_id"]


def _refuse(*args: object, **kwargs: object) -> None:
    raise RuntimeError("the audit row cannot be written")


def test_retention_is_audited_in_its_transaction(
    store_url: str, stone: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: retention deleted appraisals and left no trace."""
    store.ready()
    old = clock.now() - timedelta(days=40)
    store.record_appraisal(stone, 5000.0)
    with store.session() as s, s.begin():
        s.execute(update(store.Appraisal).values(created_at=old))

    with monkeypatch.context() as patched, pytest.raises(RuntimeError, match="audit row"):
        patched.setattr(audit, "record", _refuse)
        archive.prune_appraisals(30, actor="cli:dora")
    with store.session() as s:  # nothing deleted without its audit row
        assert len(s.scalars(select(store.Appraisal)).all()) == 1
    assert archive.prune_appraisals(30, actor="cli:dora").deleted == 1
    (event,) = audit.events(action="retention")
    assert (event["actor"], event["person"], event["details"]["deleted"]) == (
        "cli:dora",
        "dora",
        1,
    )


def test_a_retrain_job_and_its_audit_row_are_one_write(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: POST /v1/retrain queued the job, started its process, and only then wrote the
    audit row, in a transaction of its own."""
    from appraiser import jobs

    with monkeypatch.context() as patched, pytest.raises(RuntimeError, match="audit row"):
        patched.setattr(audit, "record", _refuse)
        jobs.create_job(jobs.RETRAIN, {"trials": 1}, actor="ana")
    with store.session() as s:
        assert s.scalars(select(store.Job)).all() == []
    job_id = jobs.create_job(jobs.RETRAIN, {"trials": 1}, actor="ana")
    (event,) = audit.events(action="retrain_started")
    assert event["details"] == {"job_id": job_id, "trials": 1} and event["person"] == "ana"


def test_export_is_audited(store_url: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(audit, "cli_actor", lambda: "cli:erin")
    shown = CliRunner().invoke(
        cli, ["export", "--day", "2026-01-02", "--to", str(tmp_path / "exports")]
    )
    assert shown.exit_code == 0, shown.output
    (event,) = audit.events(action="export")
    assert event["actor"] == "cli:erin" and event["details"]["day"] == "2026-01-02"


def test_appraiser_train_promotes_as_the_person_who_ran_it(
    store_url: str, small_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: `appraiser train`'s promotion was recorded as "gate"."""
    from appraiser import champion

    monkeypatch.setattr(audit, "cli_actor", lambda: "cli:fay")
    shown = CliRunner().invoke(
        cli, ["train", "--data", str(small_csv), "--trials", "1", "--candidate", "hedonic"]
    )
    assert shown.exit_code == 0, shown.output
    assert champion.history()[-1]["actor"] == "cli:fay"
    (event,) = audit.events(action="promotion")
    assert (event["actor"], event["person"]) == ("cli:fay", "fay")


# --- 4. nobody rewrites the trail ----------------------------------------------------------------


def test_audit_rows_cannot_be_updated_or_deleted(store_url: str) -> None:
    """Defect: the app's database role could UPDATE and DELETE audit_events."""
    audit.record("cli:gil", "export", day="2026-01-01")
    engine = store.engine()
    rewrite = (
        "INSERT {or_replace} INTO audit_events (id, created_at, actor, action, details) "
        "SELECT id, created_at, 'someone else', action, details FROM audit_events {on_conflict}"
    )
    statements = ["UPDATE audit_events SET actor = 'someone else'", "DELETE FROM audit_events"]
    if engine.dialect.name == "postgresql":
        statements.append("TRUNCATE audit_events")
        upsert = "ON CONFLICT (id) DO UPDATE SET actor = EXCLUDED.actor"
        statements.append(rewrite.format(or_replace="", on_conflict=upsert))
    else:  # review: REPLACE deletes the old row without firing a DELETE trigger
        statements.append(rewrite.format(or_replace="OR REPLACE", on_conflict=""))
    for statement in statements:
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    (event,) = audit.events()
    assert event["actor"] == "cli:gil"


def test_migration_0006_goes_down_and_up_again(store_url: str) -> None:
    from alembic import command

    audit.record("cli:hal", "export", day="2026-01-01")
    engine = store.engine()
    config = store.alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0005")
    with engine.begin() as conn:  # the guard is gone with the revision
        conn.execute(text("UPDATE audit_events SET actor = 'cli:ivy'"))
    store.upgrade()
    (event,) = audit.events()
    assert event["actor"] == "cli:ivy" and event["person"] is None
    with pytest.raises(DBAPIError, match="append-only"), store.engine().begin() as conn:
        conn.execute(text("DELETE FROM audit_events"))
