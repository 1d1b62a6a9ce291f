"""Property-based tests generated from the OpenAPI schema (schemathesis): no input, however odd,
makes the server answer 5xx, and every answer matches the documented schema."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from appraiser.api import create_app
from tests.conftest import API_KEY

# the app's own schema (building the app starts nothing); the calls go to a live server
schema = schemathesis.openapi.from_dict(create_app().openapi())


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,  # no example database left in the project folder
)
def test_no_server_errors_and_answers_match_the_schema(
    case: schemathesis.Case, live_server: str
) -> None:
    # with auth on: the admin key is sent so that admin endpoints do real work, except the
    # retrain, which would start a training process per example (it gets 401; test_api.py runs
    # one); every other route sees a key and its role checks
    headers = {} if case.path == "/v1/retrain" else {"Authorization": f"Bearer {API_KEY}"}
    case.call_and_validate(
        base_url=live_server,
        headers=headers,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )


def test_every_endpoint_is_in_the_schema() -> None:
    paths = set(schema.raw_schema["paths"])
    assert {
        "/v1/appraisals",
        "/v1/appraisals/batch",
        "/v1/appraisals/{appraisal_id}",
        "/v1/appraisals/{appraisal_id}/feedback",
        "/v1/diamonds/similar",
        "/v1/diamonds",
        "/v1/models",
        "/v1/models/{version}/promote",
        "/v1/retrain",
        "/v1/jobs/{job_id}",
        "/health",
        "/v1/feedback",
        "/v1/feedback/{feedback_id}/{verdict}",
        "/v1/keys",
        "/v1/keys/{name}/revoke",
        "/v1/audit",
    } <= paths
