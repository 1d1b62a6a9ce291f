"""IAM database login (cloudsql_auth.py, APPRAISER_DATABASE_IAM_AUTH): the URL carries no
password and every new connection gets the service account's access token as one. Against the
test PostgreSQL server, whose TCP logins need a password (scram-sha-256): the token stands in."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import OperationalError

from appraiser import cloudsql_auth, store
from tests import pg


def test_a_connection_logs_in_with_a_fresh_token(monkeypatch: pytest.MonkeyPatch) -> None:
    with pg.fresh_postgres_database() as url:
        full = make_url(url)
        # the IAM user's URL: no password; the test server has no TLS, so the URL says so (the
        # hook requires TLS only when the URL names no sslmode)
        bare = url.replace(f":{full.password}@", "@") + "?sslmode=disable"
        assert make_url(bare).password is None
        handed: list[str] = []

        def token() -> str:  # what google-auth would give: here the role's real password
            handed.append("token")
            return str(full.password)

        monkeypatch.setattr(cloudsql_auth, "access_token", token)
        # without IAM login the passwordless URL is refused: the server asks for a password
        monkeypatch.setenv("APPRAISER_DATABASE_IAM_AUTH", "false")
        with pytest.raises(OperationalError), store.engine(bare).connect() as conn:
            conn.execute(text("SELECT 1"))
        store.dispose(bare)

        monkeypatch.setenv("APPRAISER_DATABASE_IAM_AUTH", "true")
        try:
            with store.engine(bare).connect() as conn:
                assert conn.execute(text("SELECT current_user")).scalar() == full.username
            assert handed == ["token"]
            store.engine(bare).pool.dispose()  # the next connection is a new login
            with store.engine(bare).connect() as conn:
                conn.execute(text("SELECT 1"))
            assert handed == ["token", "token"]  # each login asks; the provider caches
        finally:
            store.dispose(bare)


class FakeCredentials:
    def __init__(self) -> None:
        self.token: str | None = None
        self.refreshes = 0

    @property
    def valid(self) -> bool:
        return self.token is not None

    def refresh(self, _request: Any) -> None:
        self.refreshes += 1
        self.token = f"token-{self.refreshes}"


def test_the_token_is_kept_until_near_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    import google.auth

    made: list[FakeCredentials] = []

    def default(scopes: list[str]) -> tuple[FakeCredentials, str]:
        assert scopes == [cloudsql_auth.SCOPE]
        made.append(FakeCredentials())
        return made[-1], "appraiser-prod"

    monkeypatch.setattr(google.auth, "default", default)
    monkeypatch.setattr(cloudsql_auth, "_credentials", None)
    assert cloudsql_auth.access_token() == "token-1"
    assert cloudsql_auth.access_token() == "token-1"  # kept: no call to the metadata server
    made[0].token = None  # google-auth reports it invalid near expiry
    assert cloudsql_auth.access_token() == "token-2"
    assert len(made) == 1 and made[0].refreshes == 2


def test_tls_is_required_unless_the_url_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cloudsql_auth, "access_token", lambda: "token-x")
    params: dict[str, Any] = {"user": "sa-api@p.iam"}
    cloudsql_auth.login(params)
    assert params == {"user": "sa-api@p.iam", "sslmode": "require", "password": "token-x"}
    chosen: dict[str, Any] = {"sslmode": "verify-full"}
    cloudsql_auth.login(chosen)
    assert chosen["sslmode"] == "verify-full" and chosen["password"] == "token-x"
