# The appraiser image: the API by default, a pipeline pass (or any `appraiser` command) on demand.
# It installs the same hash-pinned versions as the tested path: requirements-runtime.txt is
# requirements.txt without the dev extra (same versions, same hashes; tests/test_container.py checks).
#
#   docker build -t appraiser .
#   docker run -p 8000:8000 -e APPRAISER_API_KEY=... appraiser                # the API
#   docker run -v "$PWD/inbox:/data/inbox" appraiser appraiser pipeline run --inbox /data/inbox
#
# State (the SQLite store and MLflow files when no server is named) lives in APPRAISER_HOME,
# /var/lib/appraiser: mount a volume there, or point APPRAISER_DATABASE_URL and MLFLOW_TRACKING_URI
# at PostgreSQL and an MLflow server (compose.yaml does).

# --- builder: a virtualenv with the pinned dependencies and the project ----------------------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build

# dependencies first, so editing the code does not reinstall them; every wheel is hash-checked
COPY requirements-runtime.txt ./
RUN pip install --require-hashes -r requirements-runtime.txt

# the project itself, built by the pinned setuptools (in requirements-runtime.txt) without reaching
# for an unpinned build environment
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-deps --no-build-isolation . \
    && appraiser --help >/dev/null

# --- runtime: the virtualenv, the OpenMP runtime LightGBM needs, a non-root user -------------------
FROM python:3.11-slim AS runtime

RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 appraiser \
    && useradd --system --uid 10001 --gid appraiser --home-dir /var/lib/appraiser \
        --no-create-home --shell /usr/sbin/nologin appraiser \
    && mkdir -p /var/lib/appraiser /data/inbox \
    && chown appraiser:appraiser /var/lib/appraiser /data/inbox

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    APPRAISER_HOME=/var/lib/appraiser

WORKDIR /app
USER appraiser

EXPOSE 8000
# slim has no curl: ask the API's health endpoint with the standard library (non-2xx raises)
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

CMD ["appraiser", "serve", "--host", "0.0.0.0", "--port", "8000"]
