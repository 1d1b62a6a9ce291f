"""A Google ID token on every MLflow request when the tracking server is a Cloud Run URL.

On GCP the MLflow server is a private Cloud Run service (docs/cloud-architecture.md): each request
must carry an ID token whose audience is the service's URL, or Cloud Run's IAM check refuses it.
MLflow asks every registered request-header provider (the `mlflow.request_header_provider` entry
point, pyproject.toml) for headers; this one answers only when the tracking URI is an
`https://….run.app` URL, with a token for the environment's service account (the metadata server
on Cloud Run, or a key or impersonation file named by GOOGLE_APPLICATION_CREDENTIALS elsewhere:
google-auth mints ID tokens from those, not from a user's `gcloud auth application-default
login`), kept until it nears expiry.
Everywhere else (a local file, SQLite, an `http://` server) it adds nothing.

MLflow imports this module whenever it loads: it imports nothing heavy until a token is needed.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

from mlflow.tracking.request_header.abstract_request_header_provider import (
    RequestHeaderProvider,
)

_credentials: dict[str, Any] = {}  # audience -> google-auth ID token credentials
_lock = threading.Lock()


def audience(tracking_uri: str) -> str | None:
    """The Cloud Run service URL a token must name, or None when the URI is not one."""
    parts = urlsplit(tracking_uri)
    host = parts.hostname or ""
    if parts.scheme != "https" or not host.endswith(".run.app"):
        return None
    return f"https://{parts.netloc}"


def id_token(service_url: str) -> str:
    """A valid ID token for `service_url`, refreshed when missing or near its expiry (google-auth
    counts a token as invalid shortly before it expires)."""
    import google.auth.transport.requests
    import google.oauth2.id_token

    request = google.auth.transport.requests.Request()
    with _lock:
        credentials = _credentials.get(service_url)
        if credentials is None:
            credentials = google.oauth2.id_token.fetch_id_token_credentials(service_url, request)
            _credentials[service_url] = credentials
        if not credentials.valid:
            credentials.refresh(request)
        return str(credentials.token)


class GoogleIdTokenHeaderProvider(RequestHeaderProvider):
    """`Authorization: Bearer <ID token>` for an MLflow server on Cloud Run."""

    def _audience(self) -> str | None:
        from mlflow.tracking import get_tracking_uri

        return audience(get_tracking_uri())

    def in_context(self) -> bool:
        return self._audience() is not None

    def request_headers(self) -> dict[str, str]:
        service_url = self._audience()
        if service_url is None:
            return {}
        return {"Authorization": f"Bearer {id_token(service_url)}"}
