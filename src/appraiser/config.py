"""Settings from the environment, read in one place."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REGISTERED_MODEL = "diamond-pricer"
DEFAULT_TRIALS = 12  # Optuna trials per tuned candidate
DEFAULT_TIMEOUT = 120.0  # seconds of tuning in all, shared by the tuned candidates
RETRAIN_THRESHOLD = 500  # accepted stones since the champion's training that call for a retrain
EXPERIMENT = "diamond-appraiser"
STORE_FILE = "appraiser.db"  # the SQLite store under APPRAISER_HOME when no database is named
MAX_BATCH = 10_000  # stones per POST /v1/appraisals/batch
MIN_API_KEY_CHARS = 24  # a bootstrap key shorter than this is refused at start
# per client (key, else address) and per server process: above what one process serves from one
# client (about 2,000 single stones/s measured, docs/measurements.md), so it never binds an
# honest client or the loopback benchmark, yet a runaway client or a flood of cheap requests
# (unknown keys, 404s) is cut off; a known audience sets a tighter one (compose: 50/second)
DEFAULT_RATE_LIMIT = "5000/second"


class StoreSettings(BaseSettings):
    """The store's settings, read on every use (store.database_url on every call; `appraiser
    predict` reads the URL before choosing how to open the store)."""

    model_config = SettingsConfigDict(env_prefix="APPRAISER_", extra="ignore")

    database_url: str | None = None
    migrate: Literal["auto", "check"] = Field(
        default="auto",
        description=(
            "auto: each process brings the store's schema up to date on first use (one machine); "
            "check: processes only check it is current and refuse to work on an older one, "
            "`appraiser db upgrade` migrates once per deploy (runtime roles need no DDL rights)"
        ),
    )
    pool_size: int = Field(
        default=5, ge=1, description="connections kept open per process (PostgreSQL)"
    )
    max_overflow: int = Field(
        default=10, ge=0, description="connections opened past pool_size at peaks (PostgreSQL)"
    )
    pool_pre_ping: bool = Field(
        default=True,
        description=(
            "test a pooled connection before use and replace a dead one (PostgreSQL: a restart, "
            "failover or idle timeout drops them); SQLite files never need it"
        ),
    )
    database_iam_auth: bool = Field(
        default=False,
        description=(
            "Cloud SQL IAM database login: each connection's password is the service account's "
            "access token (cloudsql_auth.py); the URL names its IAM user and no password"
        ),
    )


class Settings(BaseSettings):
    """Where the appraiser keeps its state and finds its data; every field has a working default."""

    model_config = SettingsConfigDict(env_prefix="APPRAISER_", extra="ignore")

    home: Path = Field(
        default=Path(".appraiser"),
        description="folder for the MLflow store, model artifacts and run outputs",
    )
    data: Path | None = Field(
        default=Path("../shared/data/diamonds.csv"),
        description="Francesco's collection, used by notebooks and benchmarks when present",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias="MLFLOW_TRACKING_URI",
        description="a tracking server; by default a SQLite file under `home`",
    )
    seed: int = 42
    candidates: str = Field(
        default="",
        description=(
            "comma-separated candidates that training and retraining tune when none are named "
            "(`appraiser train --candidate`); empty: all of them. A small machine, or a test of "
            "the loop rather than of the models, may keep one"
        ),
    )
    # the API (appraiser serve)
    api_key: SecretStr | None = Field(
        default=None,
        description=(
            "bootstrap admin key (Authorization: Bearer ...): makes the first real keys "
            "(`appraiser keys create`); unset, only keys from the store are accepted"
        ),
    )
    require_keys: bool = Field(
        default=False,
        description="true: appraising needs a key too (staff or above); false: anyone may",
    )
    rate_limit: str = Field(
        default=DEFAULT_RATE_LIMIT,
        description=(
            "requests each client (its key, else its IP) may make per server process, e.g. "
            "'50/second' or '50/second;1000/minute' (the `limits` notation); 'none': no limit. "
            "/health and /ready are never limited"
        ),
    )
    trusted_proxies: str = Field(
        default="",
        description=(
            "comma-separated addresses or networks of the proxies in front whose "
            "X-Forwarded-For / X-Forwarded-Proto name the client ('*' is refused); empty: "
            "none, the client is the peer of the connection (rate limits and logs count it)"
        ),
    )
    request_body_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "a batch or list body must arrive within this many seconds, else 408; read before "
            "it takes one of the max_batch_calls places, so a slow sender holds only its own"
        ),
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description=(
            "`appraiser serve` answers GET /metrics on this port only (never on the API's); "
            "unset: no metrics endpoint. Keep it off the public network (compose: the "
            "containers' network; Cloud Run: not the container port)"
        ),
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="the interface the metrics port listens on"
    )
    max_queued: int = Field(
        default=2000, description="single-stone requests waiting to be priced; more get 503"
    )
    max_batch_calls: int = Field(
        default=4, description="batch calls priced at once; more get 503 with Retry-After"
    )
    cors_origins: str = Field(
        default="",
        description="comma-separated origins allowed to call the API from a browser ('*': any)",
    )
    max_request_bytes: int = Field(
        default=16 * 1024 * 1024, description="larger request bodies are refused with 413"
    )
    reload_seconds: float = Field(
        default=2.0, description="how often a server checks the registry for a new champion"
    )
    native_trees: bool = Field(
        default=True,
        description=(
            "price with the LightGBM trees compiled for this machine (lleaves, cached under "
            "`home`/cache/native): the same prices, several times faster"
        ),
    )
    job_launcher: Literal["local", "cloud-run"] = Field(
        default="local",
        description=(
            "how POST /v1/retrain starts its job: local, a process on this machine; cloud-run, an "
            "execution of the Cloud Run job APPRAISER_RETRAIN_JOB with the job id as argument"
        ),
    )
    retrain_job: str | None = Field(
        default=None,
        description="the Cloud Run job to run: projects/PROJECT/locations/REGION/jobs/NAME",
    )
    export_to: str | None = Field(
        default=None,
        description="where `appraiser export` writes: a folder or fsspec URL (gs://bucket/prefix)",
    )
    bigquery_dataset: str | None = Field(
        default=None,
        description=(
            "PROJECT.DATASET: `appraiser export` to gs:// then loads the day into its tables "
            "`appraisals` and `feedback` (one partition per day, replaced on a re-export)"
        ),
    )
    settle_heap: bool = Field(
        default=True,
        description=(
            "once a server's model is loaded, freeze the objects it holds out of the garbage "
            "collector's sight and enlarge its young generation: a full collection over them "
            "paused serving for ~0.3 s every few seconds under batch load"
        ),
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description=(
            "text: uvicorn's lines; json: one JSON object per line, as Google Cloud Logging "
            "reads them, with one line per request (id, route, status, latency, model version)"
        ),
    )

    def check_serving(self) -> None:
        """ValueError naming each setting a server must not start with, and the rule."""
        problems = []
        key = self.api_key.get_secret_value() if self.api_key is not None else ""
        if key and len(key) < MIN_API_KEY_CHARS:  # empty: no bootstrap key, as unset
            problems.append(
                f"APPRAISER_API_KEY: the bootstrap admin key must be at least "
                f"{MIN_API_KEY_CHARS} characters (it has {len(key)}); make one with "
                'python -c "import secrets; print(secrets.token_urlsafe(32))"'
            )
        if "*" in self.trusted_proxy_list:  # any peer could then name any client
            problems.append(
                "APPRAISER_TRUSTED_PROXIES: name the proxies' addresses or networks, not '*' "
                "(with '*' every caller chooses the address its rate limit counts)"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def trusted_proxy_list(self) -> list[str]:
        return [p.strip() for p in self.trusted_proxies.split(",") if p.strip()]

    @property
    def candidate_list(self) -> list[str]:
        return [c.strip() for c in self.candidates.split(",") if c.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        return (self.home / "mlartifacts").resolve()

    @property
    def runs_dir(self) -> Path:
        return (self.home / "runs").resolve()


@cache
def settings() -> Settings:
    """The process's settings (cached; tests clear the cache after changing the environment)."""
    return Settings()
