"""MLflow behind Cloud Run's IAM (mlflow_auth.py): an ID token for the server's URL on every
MLflow request when the tracking URI is a run.app URL, nothing anywhere else."""

from __future__ import annotations

from typing import Any

import pytest

from appraiser import mlflow_auth

SERVICE = "https://mlflow-abc123-ew.a.run.app"


class FakeCredentials:
    """google-auth ID token credentials: a token that lasts until `expire()`."""

    def __init__(self, audience: str) -> None:
        self.audience, self.refreshes = audience, 0
        self.token: str | None = None

    @property
    def valid(self) -> bool:
        return self.token is not None

    def refresh(self, _request: Any) -> None:
        self.refreshes += 1
        self.token = f"token-{self.refreshes}-for-{self.audience}"

    def expire(self) -> None:
        self.token = None


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> list[FakeCredentials]:
    import google.oauth2.id_token

    made: list[FakeCredentials] = []

    def fetch(audience: str, _request: Any) -> FakeCredentials:
        made.append(FakeCredentials(audience))
        return made[-1]

    monkeypatch.setattr(google.oauth2.id_token, "fetch_id_token_credentials", fetch)
    monkeypatch.setattr(mlflow_auth, "_credentials", {})
    return made


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (SERVICE, SERVICE),
        (f"{SERVICE}/", SERVICE),
        (f"{SERVICE}/some/path", SERVICE),
        ("http://mlflow-abc123-ew.a.run.app", None),  # never send a token in clear
        ("https://mlflow.example.com", None),
        ("https://run.app.example.com", None),
        ("sqlite:////tmp/mlflow.db", None),
        ("file:///tmp/mlruns", None),
        ("http://127.0.0.1:5000", None),
    ],
)
def test_only_a_cloud_run_url_gets_a_token(uri: str, expected: str | None) -> None:
    assert mlflow_auth.audience(uri) == expected


def test_a_token_is_kept_until_it_expires(credentials: list[FakeCredentials]) -> None:
    first = mlflow_auth.id_token(SERVICE)
    assert mlflow_auth.id_token(SERVICE) == first  # kept: no call to the metadata server
    assert len(credentials) == 1 and credentials[0].refreshes == 1
    credentials[0].expire()
    assert mlflow_auth.id_token(SERVICE) != first  # near expiry: refreshed
    assert credentials[0].audience == SERVICE


def test_mlflow_sends_the_token_to_a_server_on_cloud_run(
    credentials: list[FakeCredentials],
) -> None:
    """Through MLflow's own registry of providers (the package's entry point)."""
    import os

    import mlflow
    from mlflow.tracking.request_header.registry import resolve_request_headers

    # set_tracking_uri exports MLFLOW_TRACKING_URI; left behind, every later test would read it as
    # a user's server and share one registry (CI's 21 failures), so the environment is put back
    exported = {
        name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    }
    before = mlflow.get_tracking_uri()  # other tests set it for this process
    try:
        mlflow.set_tracking_uri(f"{SERVICE}/")
        headers = resolve_request_headers()
        assert headers["Authorization"] == f"Bearer token-1-for-{SERVICE}"
        mlflow.set_tracking_uri("http://127.0.0.1:5000")
        assert "Authorization" not in resolve_request_headers()
    finally:
        mlflow.set_tracking_uri(before)
        for name, value in exported.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
