"""What each load level deploys, typed: the one place the stack (stack.py), the cost table
(cost.py) and the tests read sizes, scaling, pools, schedules and the IAM table from.

The levels are docs/cloud-architecture.md section 10's: `shop` (Francesco alone, ~1,000
appraisals a day), `partners` (~100,000 a day), `platform` (~10 million a day)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

INBOX_MOUNT = "/data/inbox"  # the folder the image prepares for the inbox bucket
IMAGE_UID = 10001  # the image's non-root user: the bucket mount must belong to it
MONTH_SECONDS = 2_628_000  # 730 hours, the month Google's prices use


@dataclass(frozen=True)
class Service:
    """A Cloud Run service running the appraiser image (`appraiser serve`)."""

    name: str
    account: str
    cpu: int
    memory_gib: float
    min_instances: int
    max_instances: int
    concurrency: int
    instance_billing: bool  # CPU always allocated: the champion poller and the writer run
    secrets: tuple[tuple[str, str], ...]  # (environment variable, secret id)
    iap: bool = False
    # Cloud Run instance-seconds a month beyond the minimum's, for the cost table (platform)
    busy_instance_seconds: float = 0.0


@dataclass(frozen=True)
class Job:
    """A Cloud Run job running the appraiser image: one task, never retried (the next pass is)."""

    name: str
    account: str
    cpu: int
    memory_gib: float
    command: tuple[str, ...]
    args: tuple[str, ...]
    secrets: tuple[tuple[str, str], ...]
    timeout_seconds: int = 3600
    inbox_volume: bool = False
    migrates: bool = False  # the deploy step's job: the only process that changes the schema


@dataclass(frozen=True)
class Database:
    """The Cloud SQL for PostgreSQL instance holding the `appraiser` and `mlflow` databases."""

    tier: str
    vcpus: float  # for the cost table; shared-core tiers are priced per hour instead
    memory_gb: float
    high_availability: bool
    disk_gb: int
    backups_gb: int
    # Cloud SQL's default for the tier's memory, set explicitly so the budget below is checked
    # against a number the stack states rather than one that changes with the tier
    max_connections: int
    hourly_price: float | None = None  # shared-core tiers (db-g1-small) have their own price


@dataclass(frozen=True)
class Pool:
    """SQLAlchemy pool per process: size + overflow connections at most."""

    size: int
    overflow: int

    @property
    def most(self) -> int:
        return self.size + self.overflow


@dataclass(frozen=True)
class Level:
    name: str
    summary: str
    services: tuple[Service, ...]
    jobs: tuple[Job, ...]
    database: Database
    pool: Pool  # the app's servers (APPRAISER_POOL_SIZE, APPRAISER_MAX_OVERFLOW)
    mlflow_workers: int
    mlflow_max_instances: int
    # section 10's usage estimates, in $ a month, for the lines no resource's size decides
    usage: dict[str, float] = field(default_factory=dict)
    # each MLflow server worker holds two engines (tracking and model registry), each with this
    # pool (MLFLOW_SQLALCHEMYSTORE_POOL_SIZE, MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW)
    mlflow_pool: Pool = Pool(1, 1)
    pipeline_schedule: str = "*/15 * * * *"  # cron, in the scheduler's time zone (UTC)
    export_schedule: str = "30 2 * * *"
    # a job is one process doing one thing at a time: a smaller pool, so all four jobs running
    # at once still fit the budget
    job_pool: Pool = Pool(2, 1)
    region: str = "us-central1"
    bigquery_partition_days: int = 730  # retention in the warehouse, by partition expiry


# --- the IAM table (design section 7): account -> what it may do, and on what -----------------

Target = Literal[
    "project", "secret", "bucket", "service", "job", "repository", "dataset", "account"
]


@dataclass(frozen=True)
class Grant:
    account: str
    role: str
    on: Target
    name: str = ""  # the resource's name; "" for the project


# the app's identities, which log in to the database with IAM (APPRAISER_DATABASE_IAM_AUTH); the
# MLflow server keeps a password in its backend URI (MLflow has no such hook)
IAM_DATABASE_USERS = ("sa-api", "sa-pipeline", "sa-migrate", "sa-export")

GRANTS: tuple[Grant, ...] = (
    # the API services
    Grant("sa-api", "roles/cloudsql.instanceUser", "project"),  # IAM database login
    Grant("sa-api", "roles/secretmanager.secretAccessor", "secret", "store-db-url"),
    Grant("sa-api", "roles/secretmanager.secretAccessor", "secret", "admin-api-key"),
    Grant("sa-api", "roles/run.invoker", "service", "mlflow"),
    Grant("sa-api", "roles/run.jobsExecutorWithOverrides", "job", "appraiser-retrain"),
    Grant("sa-api", "roles/run.viewer", "job", "appraiser-retrain"),
    Grant("sa-api", "roles/monitoring.metricWriter", "project"),
    # the pipeline and retrain jobs
    Grant("sa-pipeline", "roles/cloudsql.instanceUser", "project"),  # IAM database login
    Grant("sa-pipeline", "roles/secretmanager.secretAccessor", "secret", "pipeline-db-url"),
    Grant("sa-pipeline", "roles/run.invoker", "service", "mlflow"),
    Grant("sa-pipeline", "roles/storage.objectUser", "bucket", "inbox"),
    # the MLflow server
    Grant("sa-mlflow", "roles/secretmanager.secretAccessor", "secret", "mlflow-db-url"),
    Grant("sa-mlflow", "roles/storage.objectUser", "bucket", "mlflow-artifacts"),
    # the migrate job: the only identity whose database role may change the schema
    Grant("sa-migrate", "roles/cloudsql.instanceUser", "project"),  # IAM database login
    Grant("sa-migrate", "roles/secretmanager.secretAccessor", "secret", "migrate-db-url"),
    # Cloud Scheduler: starts the pipeline and export jobs (run.invoker holds run.jobs.run)
    Grant("sa-scheduler", "roles/run.invoker", "job", "appraiser-pipeline"),
    Grant("sa-scheduler", "roles/run.invoker", "job", "appraiser-export"),
    # Eventarc and the workflow it starts on an upload
    Grant("sa-events", "roles/eventarc.eventReceiver", "project"),
    Grant("sa-events", "roles/workflows.invoker", "project"),
    Grant("sa-events", "roles/run.invoker", "job", "appraiser-pipeline"),
    # the nightly export to Cloud Storage and BigQuery
    Grant("sa-export", "roles/cloudsql.instanceUser", "project"),  # IAM database login
    Grant("sa-export", "roles/secretmanager.secretAccessor", "secret", "export-db-url"),
    Grant("sa-export", "roles/bigquery.dataEditor", "dataset", "appraiser"),
    Grant("sa-export", "roles/bigquery.jobUser", "project"),
    Grant("sa-export", "roles/storage.objectUser", "bucket", "exports"),
    # Cloud Build's deploy account
    Grant("sa-deploy", "roles/artifactregistry.writer", "repository", "appraiser"),
    Grant("sa-deploy", "roles/run.developer", "project"),
    Grant("sa-deploy", "roles/iam.serviceAccountUser", "account", "sa-api"),
    Grant("sa-deploy", "roles/iam.serviceAccountUser", "account", "sa-pipeline"),
    Grant("sa-deploy", "roles/iam.serviceAccountUser", "account", "sa-mlflow"),
    Grant("sa-deploy", "roles/iam.serviceAccountUser", "account", "sa-migrate"),
    Grant("sa-deploy", "roles/iam.serviceAccountUser", "account", "sa-export"),
    Grant("sa-deploy", "roles/logging.logWriter", "project"),
)

ACCOUNTS = tuple(dict.fromkeys(g.account for g in GRANTS))

SECRETS = (
    "store-db-url",
    "pipeline-db-url",
    "mlflow-db-url",
    "migrate-db-url",
    "export-db-url",
    "admin-api-key",
)

# --- the containers --------------------------------------------------------------------------

SERVE = ("appraiser",), ("serve", "--host", "0.0.0.0", "--no-access-log")  # + --port
API_SECRETS = (("APPRAISER_DATABASE_URL", "store-db-url"), ("APPRAISER_API_KEY", "admin-api-key"))
PIPELINE_SECRETS = (("APPRAISER_DATABASE_URL", "pipeline-db-url"),)


def _shop() -> Service:
    return Service("appraiser-shop", "sa-api", 1, 1, 1, 3, 20, True, API_SECRETS, iap=True)


def _api(max_instances: int, busy_instance_seconds: float = 0.0) -> Service:
    return Service(
        "appraiser-api",
        "sa-api",
        1,
        1,
        2,
        max_instances,
        20,
        True,
        API_SECRETS,
        busy_instance_seconds=busy_instance_seconds,
    )


def _jobs(cpu: int, memory_gib: float) -> tuple[Job, ...]:
    return (
        Job(
            "appraiser-pipeline",
            "sa-pipeline",
            cpu,
            memory_gib,
            ("appraiser",),
            ("pipeline", "run", "--inbox", INBOX_MOUNT),
            PIPELINE_SECRETS,
            inbox_volume=True,
        ),
        # POST /v1/retrain starts an execution with the job id as its only argument
        Job(
            "appraiser-retrain",
            "sa-pipeline",
            cpu,
            memory_gib,
            ("python", "-m", "appraiser.jobs"),
            (),
            PIPELINE_SECRETS,
        ),
        Job(
            "appraiser-migrate",
            "sa-migrate",
            1,
            1,
            ("appraiser",),
            ("db", "upgrade"),
            (("APPRAISER_DATABASE_URL", "migrate-db-url"),),
            timeout_seconds=900,
            migrates=True,
        ),
        # yesterday's appraisals and reviewed prices to the export bucket, then BigQuery
        Job(
            "appraiser-export",
            "sa-export",
            1,
            2,
            ("appraiser",),
            ("export",),
            (("APPRAISER_DATABASE_URL", "export-db-url"),),
        ),
    )


LEVELS: dict[str, Level] = {
    level.name: level
    for level in (
        Level(
            name="shop",
            summary="Francesco's shop alone, ~1,000 appraisals a day",
            services=(_shop(),),
            jobs=_jobs(2, 4),
            database=Database(
                "db-g1-small", 0, 1.7, False, 10, 5, max_connections=50, hourly_price=0.035
            ),
            pool=Pool(3, 2),
            mlflow_workers=1,
            mlflow_max_instances=1,
            usage={
                "MLflow server": 5,
                "pipeline job": 4,
                "Cloud Storage (inbox, MLflow artifacts)": 0.20,
                "Artifact Registry": 0.50,
                "Managed Prometheus": 0.80,
            },
        ),
        Level(
            name="partners",
            summary="a few partner businesses, ~100,000 appraisals a day",
            services=(_shop(), _api(max_instances=5)),
            jobs=_jobs(2, 4),
            database=Database("db-custom-1-3840", 1, 3.75, True, 20, 10, max_connections=100),
            pool=Pool(3, 2),
            mlflow_workers=1,
            mlflow_max_instances=2,
            usage={
                "MLflow server": 14,
                "pipeline job": 4.30,
                "API Gateway": 3.12,
                "Managed Prometheus": 2.40,
                "egress": 0.25,
                "BigQuery, export job, GCS, AR": 1,
            },
        ),
        Level(
            name="platform",
            summary="a platform, ~10 million appraisals a day",
            # 8 M instance-seconds a month in all (design section 10), 2 of them the minimum
            services=(
                _shop(),
                _api(max_instances=20, busy_instance_seconds=8e6 - 2 * MONTH_SECONDS),
            ),
            jobs=_jobs(4, 8),
            database=Database("db-custom-2-8192", 2, 8, True, 500, 500, max_connections=400),
            pool=Pool(5, 5),
            mlflow_workers=2,
            mlflow_max_instances=4,
            usage={
                "MLflow server": 18,
                "pipeline job": 5.50,
                "BigQuery, after a year": 29,
                "export job": 1,
                "load balancer": 21.65,
                "Cloud Armor": 235,
                "egress": 36.50,
                "Managed Prometheus": 3.20,
                "GCS, AR": 2,
            },
        ),
    )
}
