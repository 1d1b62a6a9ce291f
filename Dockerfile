# The appraiser image: the API by default, a pipeline pass (or any `appraiser` command) on demand;
# its `mlflow` target is the MLflow tracking server (compose's `mlflow`, the cloud's MLflow service).
# Both install the same hash-pinned versions as the tested path: requirements-runtime.txt and
# requirements-mlflow.txt are requirements.txt without the dev extra (same versions, same hashes;
# tests/test_container.py checks), and tests/test_image.py builds and runs this file.
#
#   docker build -t appraiser .                                  # the app (the last stage)
#   docker build --target mlflow -t appraiser-mlflow .           # the MLflow server
#   docker run -p 8000:8000 -e APPRAISER_API_KEY=... appraiser                # the API
#   docker run -v "$PWD/inbox:/data/inbox" appraiser appraiser pipeline run --inbox /data/inbox
#
# State (the SQLite store and MLflow files when no server is named) lives in APPRAISER_HOME,
# /var/lib/appraiser: mount a volume there, or point APPRAISER_DATABASE_URL and MLFLOW_TRACKING_URI
# at PostgreSQL and an MLflow server (compose.yaml does).

# --- builder: a virtualenv with the pinned dependencies --------------------------------------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build

# the installers first, pinned and hash-checked: the pip a base image brings depends on the day it
# was built, and older ones (23.x) refuse a pinned package's extras in hash-checking mode
COPY requirements-bootstrap.txt ./
RUN pip install --require-hashes --only-binary :all: -r requirements-bootstrap.txt

# dependencies next, so editing the code does not reinstall them; every wheel is hash-checked,
# and only wheels are taken (a source build would fetch unpinned build tools)
COPY requirements-runtime.txt ./
RUN pip install --require-hashes --only-binary :all: -r requirements-runtime.txt

# what only building or testing the libraries needs leaves each final virtualenv: their own test
# suites, C, C++ and Cython sources and headers, and the installer (deploy/slim-venv.sh)
COPY deploy/slim-venv.sh ./

# --- the MLflow server's dependencies: the app's, plus the server and its UI -----------------------
FROM builder AS mlflow-deps
COPY requirements-mlflow.txt ./
RUN pip install --require-hashes --only-binary :all: -r requirements-mlflow.txt \
    && mlflow server --help >/dev/null

# --- each image's dependencies, slimmed: unchanged by a code change, so cached -------------------
FROM builder AS app-venv
RUN sh slim-venv.sh /opt/venv

FROM mlflow-deps AS mlflow-venv
RUN sh slim-venv.sh /opt/venv

# --- the project, built by the pinned setuptools (in requirements-runtime.txt) without reaching
# for an unpinned build environment; its installed files are set apart in /project, which both
# images copy over their virtualenv as a small last layer: a code change rebuilds only that -------
FROM builder AS project
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-deps --no-build-isolation . \
    && appraiser --help >/dev/null \
    && site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
    && mkdir -p /project/site-packages /project/bin \
    && cp -a "$site"/appraiser "$site"/appraiser-*.dist-info /project/site-packages/ \
    && cp -a /opt/venv/bin/appraiser /project/bin/

# --- base: the OpenMP runtime LightGBM needs, a non-root user --------------------------------------
FROM python:3.11-slim AS base

RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 appraiser \
    && useradd --system --uid 10001 --gid appraiser --home-dir /var/lib/appraiser \
        --no-create-home --shell /usr/sbin/nologin appraiser \
    && mkdir -p /var/lib/appraiser /data/inbox \
    && chown appraiser:appraiser /var/lib/appraiser /data/inbox

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    APPRAISER_HOME=/var/lib/appraiser

WORKDIR /app

# --- mlflow: the tracking server (`docker build --target mlflow`) ----------------------------------
FROM base AS mlflow

COPY --from=mlflow-venv /opt/venv /opt/venv
COPY --from=project /project/site-packages/ /opt/venv/lib/python3.11/site-packages/
COPY --from=project /project/bin/ /opt/venv/bin/
USER appraiser
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]

# --- runtime: the app (the default target) ---------------------------------------------------------
FROM base AS runtime

COPY --from=app-venv /opt/venv /opt/venv
COPY --from=project /project/site-packages/ /opt/venv/lib/python3.11/site-packages/
COPY --from=project /project/bin/ /opt/venv/bin/
USER appraiser

EXPOSE 8000
# slim has no curl: ask the API's health endpoint with the standard library (non-2xx raises)
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

CMD ["appraiser", "serve", "--host", "0.0.0.0", "--port", "8000"]
