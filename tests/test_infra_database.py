"""infra/database-roles.sql against a real PostgreSQL, as on Cloud SQL: a non-superuser with
CREATEROLE that owns the database runs it, and another role made the IAM users (so it holds no
ADMIN on them). Then the migrate user builds the schema as `appraiser_owner`, and the API's and
pipeline's users can read and write rows (default privileges) but not change the schema, and the
export's only read. The IAM users are plain login roles here."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import URL, make_url, text
from sqlalchemy.exc import DBAPIError, ProgrammingError

from appraiser import schema, store
from tests import pg

SCRIPT = Path(__file__).resolve().parents[1] / "infra" / "database-roles.sql"


def _as(url: str, user: str, password: str, database: str | None = None, **query: str) -> str:
    base: URL = make_url(url).set(username=user, password=password)
    if database:
        base = base.set(database=database)
    return base.update_query_dict(query).render_as_string(hide_password=False)


@contextmanager
def cloud_sql_like() -> Iterator[tuple[str, str, dict[str, str], str]]:
    """(runner URL, the database name, IAM user -> name, password), all removed afterwards."""
    suffix = uuid.uuid4().hex[:8]  # roles are the whole server's: names of this run only
    project, password = f"p{suffix}", uuid.uuid4().hex
    users = {
        name: f"{name}@{project}.iam"
        for name in ("sa-api", "sa-pipeline", "sa-migrate", "sa-export")
    }
    runner, database = f"cloudsql_postgres_{suffix}", f"appraiser_roles_{suffix}"
    admin = pg.postgres_url()
    made: list[str] = []
    try:
        for user in users.values():  # made by Cloud SQL's IAM integration, not by the runner
            pg._autocommit(f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}'", admin)
            made.append(user)
        pg._autocommit(f"CREATE ROLE {runner} LOGIN CREATEROLE PASSWORD '{password}'", admin)
        made.append(runner)
        pg._autocommit(f"GRANT {runner} TO CURRENT_USER", admin)  # to create its database
        pg._autocommit(f"CREATE DATABASE {database} OWNER {runner}", admin)
        yield _as(admin, runner, password, database), database, users, password
    finally:
        pg.drop_database(database, admin)
        groups = ("appraiser_owner", "appraiser_app", "appraiser_readonly")
        if runner in made:  # the runner made the groups: it drops them
            as_runner = _as(admin, runner, password, "postgres")
            for group in groups:
                pg._autocommit(f"DROP ROLE IF EXISTS {group}_{suffix}", as_runner)
        for role in reversed(made):
            pg._autocommit(f'DROP ROLE IF EXISTS "{role}"', admin)


def test_the_roles_let_each_component_do_its_part_only(monkeypatch: pytest.MonkeyPatch) -> None:
    with cloud_sql_like() as (runner, database, users, password):
        suffix = database.rsplit("_", 1)[1]
        script = SCRIPT.read_text().replace("PROJECT", users["sa-api"].split("@")[1][:-4])
        for group in ("appraiser_owner", "appraiser_app", "appraiser_readonly"):
            script = script.replace(group, f"{group}_{suffix}")
        with store.engine(runner).begin() as conn:  # one transaction, as `psql -1`
            conn.exec_driver_sql(script)
        store.dispose(runner)

        def url(name: str, **query: str) -> str:
            return _as(runner, users[name], password, **query)

        migrate = url("sa-migrate", options=f"-c role=appraiser_owner_{suffix}")
        api, pipeline, export = url("sa-api"), url("sa-pipeline"), url("sa-export")
        try:
            store.upgrade(migrate)  # the deploy step builds every table, as appraiser_owner
            monkeypatch.setenv("APPRAISER_MIGRATE", "check")  # servers only check
            store.ready(api)
            uid = store.record_appraisal(schema.example_stone(), 1234.0, url=api)
            with store.engine(pipeline).connect() as conn:
                found = conn.execute(
                    text("SELECT price FROM appraisals WHERE uid = :uid"), {"uid": uid}
                ).scalar()
                assert found == 1234.0
                owner = conn.execute(
                    text("SELECT tableowner FROM pg_tables WHERE tablename = 'appraisals'")
                ).scalar()
                assert owner == f"appraiser_owner_{suffix}"
            with store.engine(export).connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM appraisals")).scalar() == 1
            with (
                pytest.raises(ProgrammingError, match="permission denied"),
                store.engine(export).begin() as conn,
            ):
                conn.execute(text("DELETE FROM appraisals"))
            with (
                pytest.raises(ProgrammingError, match="permission denied"),
                store.engine(api).begin() as conn,
            ):
                conn.execute(text("CREATE TABLE intruder (i int)"))
            with (
                pytest.raises(ProgrammingError, match="must be owner"),
                store.engine(api).begin() as conn,
            ):
                conn.execute(text("ALTER TABLE appraisals ADD COLUMN intruder int"))
            # the audit trail: the app's roles add and read rows, never change or remove them
            monkeypatch.setenv("APPRAISER_DATABASE_URL", api)
            from appraiser import audit

            audit.record("cli:ops", "upload", batch_id=1)
            app_role = f"appraiser_app_{suffix}"
            with store.engine(api).connect() as conn:
                granted = {
                    what: conn.execute(
                        text("SELECT has_table_privilege(:role, 'audit_events', :what)"),
                        {"role": app_role, "what": what},
                    ).scalar()
                    for what in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
                }
            assert granted == {
                "SELECT": True,
                "INSERT": True,
                "UPDATE": False,
                "DELETE": False,
                "TRUNCATE": False,
            }
            for each, statement in (
                (api, "UPDATE audit_events SET actor = 'x'"),
                (pipeline, "DELETE FROM audit_events"),
                (pipeline, "TRUNCATE audit_events"),
            ):
                with (
                    pytest.raises(ProgrammingError, match="permission denied"),
                    store.engine(each).begin() as conn,
                ):
                    conn.execute(text(statement))
            with (  # the owner too: the trigger refuses whoever asks
                pytest.raises(DBAPIError, match="append-only"),
                store.engine(migrate).begin() as conn,
            ):
                conn.execute(text("DELETE FROM audit_events"))
            assert [e["actor"] for e in audit.events()] == ["cli:ops"]
        finally:
            for each in (migrate, api, pipeline, export):
                store.dispose(each)
