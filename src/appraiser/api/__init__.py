"""The REST API and the web page: a thin layer over the Appraiser, the store and the registry.

`appraiser serve` runs it under uvicorn; `create_app()` builds it (tests call it directly).
Every client mistake is a 4xx whose body says what to fix: `{"message": "...", "detail": ...}`.

Layout (as in FastAPI's full-stack template): `app.py` assembles; `routers/` holds one router per
resource (appraisals, feedback review, diamonds, models and jobs, keys and audit, operations);
`deps.py` the dependencies (the running context, the caller and their role, rate limits);
`schemas.py` the request and response models; `metrics.py` the Prometheus metrics (summed over
workers); `request_log.py` the JSON request log; `middleware.py`, `batching.py`, `errors.py`.
"""

from appraiser.api.app import create_app

__all__ = ["create_app"]
