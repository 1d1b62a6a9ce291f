"""The PostgreSQL test harness (tests/pg.py) itself: dropping a test database must not fail while a
process of a role the dropper may not signal is in it. On CI that process is an autovacuum worker
(no role) after a test's writes, CI's role is not a superuser, and PostgreSQL refuses DROP DATABASE
... WITH (FORCE). Here a session of another role stands in for the worker: both make FORCE fail
with 42501, and a plain DROP gets past both (the server ends autovacuum workers itself, and waits
a few seconds for a session to leave)."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import create_engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from tests import pg


def test_a_database_is_dropped_while_a_process_of_another_role_is_leaving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = pg.postgres_url()
    suffix = uuid.uuid4().hex[:8]
    owner, visitor, password = f"harness_owner_{suffix}", f"harness_visitor_{suffix}", suffix
    database = f"harness_{suffix}"
    made: list[str] = []

    def url(user: str, db: str) -> str:
        base = make_url(admin).set(username=user, password=password, database=db)
        return base.render_as_string(hide_password=False)

    statements: list[tuple[str, str | None]] = []  # (statement, SQLSTATE or None when it worked)
    run = pg._autocommit

    def recorded(sql: str, target: str) -> None:
        try:
            run(sql, target)
        except DBAPIError as error:
            statements.append((sql, getattr(error.orig, "sqlstate", "?")))
            raise
        statements.append((sql, None))

    try:
        for role, extra in ((owner, "CREATEDB"), (visitor, "")):
            run(f"CREATE ROLE {role} LOGIN {extra} PASSWORD '{password}'", admin)
            made.append(role)
        run(f"GRANT {owner} TO CURRENT_USER", admin)  # to drop its database if need be
        run(f"CREATE DATABASE {database}", url(owner, "postgres"))
        visiting = create_engine(url(visitor, database), poolclass=NullPool).connect()
        leaves = threading.Timer(1.0, visiting.close)
        leaves.start()
        try:
            with monkeypatch.context() as patch:
                patch.setattr(pg, "_autocommit", recorded)
                pg.drop_database(database, url(owner, "postgres"))
        finally:
            leaves.join()
        assert statements == [
            (f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)', "42501"),
            (f'DROP DATABASE IF EXISTS "{database}"', None),
        ]
        gone = create_engine(admin, poolclass=NullPool)
        with gone.connect() as conn:
            found = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_database WHERE datname = %(name)s", {"name": database}
            ).scalar_one()
        gone.dispose()
        assert found == 0
    finally:
        try:
            pg.drop_database(database, admin)
        finally:
            for role in reversed(made):
                run(f"DROP ROLE IF EXISTS {role}", admin)
