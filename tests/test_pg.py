"""The PostgreSQL test harness (tests/pg.py) itself: dropping a test database must not fail while a
process of another role is briefly in it, as an autovacuum worker is after a test's writes (CI's
role is not a superuser, and PostgreSQL 15 then refuses DROP DATABASE ... WITH (FORCE))."""

from __future__ import annotations

import threading
import uuid

from sqlalchemy import create_engine, make_url
from sqlalchemy.pool import NullPool

from tests import pg


def test_a_database_is_dropped_once_another_roles_process_leaves() -> None:
    admin = pg.postgres_url()
    suffix = uuid.uuid4().hex[:8]
    owner, visitor, password = f"harness_owner_{suffix}", f"harness_visitor_{suffix}", "pw"
    database = f"harness_{suffix}"
    made: list[str] = []

    def url(user: str, db: str) -> str:
        base = make_url(admin).set(username=user, password=password, database=db)
        return base.render_as_string(hide_password=False)

    try:
        for role, extra in ((owner, "CREATEDB"), (visitor, "")):
            pg._autocommit(f"CREATE ROLE {role} LOGIN {extra} PASSWORD '{password}'", admin)
            made.append(role)
        pg._autocommit(f"GRANT {owner} TO CURRENT_USER", admin)  # to drop its database if need be
        pg._autocommit(f"CREATE DATABASE {database}", url(owner, "postgres"))
        # the visitor stands in for the autovacuum worker: a process the owner may not end
        visiting = create_engine(url(visitor, database), poolclass=NullPool).connect()
        leaves = threading.Timer(1.0, visiting.close)
        leaves.start()
        try:
            pg.drop_database(database, url(owner, "postgres"))
        finally:
            leaves.join()
        gone = create_engine(admin, poolclass=NullPool)
        with gone.connect() as conn:
            found = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_database WHERE datname = %(name)s", {"name": database}
            ).scalar_one()
        gone.dispose()
        assert found == 0
    finally:
        pg.drop_database(database, admin)
        for role in reversed(made):
            pg._autocommit(f"DROP ROLE IF EXISTS {role}", admin)
