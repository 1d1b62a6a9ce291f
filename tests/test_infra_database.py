"""infra/database-roles.sql against a real PostgreSQL: the migrate user builds the schema, and
the API's and pipeline's IAM users can then read and write rows (default privileges) but not
change the schema, and the export's only read. The IAM users are plain login roles here."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import ProgrammingError

from appraiser import schema, store
from tests import pg

SCRIPT = Path(__file__).resolve().parents[1] / "infra" / "database-roles.sql"


def test_the_roles_let_each_component_do_its_part_only(monkeypatch: pytest.MonkeyPatch) -> None:
    suffix = uuid.uuid4().hex[:8]  # roles are the whole server's: names of this run only
    project = f"p{suffix}"
    users = {
        name: f"{name}@{project}.iam"
        for name in ("sa-api", "sa-pipeline", "sa-migrate", "sa-export")
    }
    groups = {g: f"{g}_{suffix}" for g in ("appraiser_app", "appraiser_readonly")}
    password = uuid.uuid4().hex
    maintenance = pg.postgres_url()
    for user in users.values():
        pg._autocommit(f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}'", maintenance)
    try:
        with pg.fresh_postgres_database() as url:
            script = SCRIPT.read_text().replace("PROJECT", project)
            for group, unique in groups.items():
                script = script.replace(group, unique)
            with store.engine(url).begin() as conn:
                conn.exec_driver_sql(script)

            def as_user(name: str) -> str:
                return (
                    make_url(url)
                    .set(username=users[name], password=password)
                    .render_as_string(hide_password=False)
                )

            migrate, api, export = as_user("sa-migrate"), as_user("sa-api"), as_user("sa-export")
            try:
                store.upgrade(migrate)  # the deploy step builds every table
                monkeypatch.setenv("APPRAISER_MIGRATE", "check")  # servers only check
                store.ready(api)
                uid = store.record_appraisal(schema.example_stone(), 1234.0, url=api)
                with store.engine(as_user("sa-pipeline")).connect() as conn:
                    found = conn.execute(
                        text("SELECT price FROM appraisals WHERE uid = :uid"), {"uid": uid}
                    ).scalar()
                    assert found == 1234.0
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
            finally:
                for each in (migrate, api, export, as_user("sa-pipeline")):
                    store.dispose(each)
    finally:
        for user in users.values():
            pg._autocommit(f'DROP ROLE IF EXISTS "{user}"', maintenance)
        for unique in groups.values():
            pg._autocommit(f'DROP ROLE IF EXISTS "{unique}"', maintenance)
