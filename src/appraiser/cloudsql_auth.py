"""IAM database login for Cloud SQL for PostgreSQL (APPRAISER_DATABASE_IAM_AUTH=true): each new
connection's password is an OAuth 2 access token of the process's service account, and the URL
names the database user made for it (`sa-api@PROJECT.iam`), with no password of its own.

This is Cloud SQL's "manual" IAM authentication, with the driver the store already uses (psycopg,
over TCP to the instance's private IP, encrypted: a token is never sent without TLS): the Cloud
SQL Python Connector would do the same but only with the pg8000 or asyncpg drivers. Tokens last an
hour; one is kept per process and refreshed when google-auth says it is near expiry, so a pool's
new connections never wait on the metadata server but every few tens of minutes."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

SCOPE = "https://www.googleapis.com/auth/sqlservice.login"

_lock = threading.Lock()
_credentials: Any = None  # google.auth credentials, made on first use


def access_token() -> str:
    """A valid access token for database login (refreshed when near expiry)."""
    global _credentials
    with _lock:
        if _credentials is None:
            import google.auth

            _credentials, _ = google.auth.default(scopes=[SCOPE])
        if not _credentials.valid:
            import google.auth.transport.requests

            _credentials.refresh(google.auth.transport.requests.Request())
        return str(_credentials.token)


def login(params: dict[str, Any]) -> None:
    """The driver's connection parameters, given the token as password and, unless the URL names
    one, TLS required: the token is a credential, never sent in clear."""
    params.setdefault("sslmode", "require")
    params["password"] = access_token()


def install(engine: Engine) -> None:
    """Give every connection `engine` opens a fresh token as its password."""

    def token_as_password(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
        login(params)

    event.listen(engine, "do_connect", token_as_password)
