"""The design (docs/cloud-architecture.md) as Pulumi resources, for one load level (spec.py).

`build(level, config)` declares everything a project needs: the network and Cloud SQL (private
IP only, point-in-time recovery, deletion protection, IAM database authentication), the buckets,
the Artifact Registry repository, secrets, one service account per component with exactly the
IAM table's roles, the Cloud Run services and jobs, Cloud Scheduler, Eventarc with its workflow,
and alert policies on metrics the app exports. Nested arguments use the provider's `...Args`
classes, never dicts: a misspelled argument is then a TypeError when the program runs (and in
the offline tests), not a key the provider would silently drop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pulumi
import pulumi_gcp as gcp

from infra.spec import (
    ACCOUNTS,
    GRANTS,
    IAM_DATABASE_USERS,
    IMAGE_UID,
    INBOX_MOUNT,
    SECRETS,
    SERVE,
    Grant,
    Job,
    Level,
    Service,
)

run = gcp.cloudrunv2

SIDECAR_IMAGE = (
    "us-docker.pkg.dev/cloud-ops-agents-artifacts/cloud-run-gmp-sidecar/cloud-run-gmp-sidecar:1.2.0"
)
APIS = (
    "run.googleapis.com",
    "sqladmin.googleapis.com",
    "secretmanager.googleapis.com",
    "artifactregistry.googleapis.com",
    "cloudscheduler.googleapis.com",
    "eventarc.googleapis.com",
    "workflows.googleapis.com",
    "workflowexecutions.googleapis.com",
    "servicenetworking.googleapis.com",
    "compute.googleapis.com",
    "monitoring.googleapis.com",
    "bigquery.googleapis.com",
    "iap.googleapis.com",
    "iam.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "pubsub.googleapis.com",  # Eventarc's transport for Cloud Storage events
)
# the port the app serves on in Cloud Run: the Prometheus collector's default scrape target
# (RunMonitoring's default endpoint is :8080/metrics), so it needs no configuration of its own
APP_PORT = 8080
MLFLOW_PORT = 8080


@dataclass(frozen=True)
class Config:
    """What differs between projects: set with `pulumi config set` (Pulumi.<stack>.yaml)."""

    project: str
    image: str  # by digest: ...@sha256:...
    secret_versions: dict[str, int]  # pinned: a deploy names the version it was tested with
    alert_email: str
    region: str = "us-central1"
    # what to declare: "foundation" (no Cloud Run yet: the secrets get their versions, the image
    # is pushed), "jobs" (+ MLflow and the jobs: migrate, first champion), "full" (+ the API)
    stage: Literal["foundation", "jobs", "full"] = "full"
    staff_group: str | None = None  # e.g. group:staff@example.com, may open the shop through IAP

    @classmethod
    def from_pulumi(cls) -> Config:
        cfg = pulumi.Config("appraiser")
        return cls(
            project=pulumi.Config("gcp").require("project"),
            image=cfg.require("image"),
            secret_versions={k: int(v) for k, v in cfg.require_object("secretVersions").items()},
            alert_email=cfg.require("alertEmail"),
            region=pulumi.Config("gcp").get("region") or "us-central1",
            stage=cfg.get("stage") or "full",  # type: ignore[arg-type]  # checked in build()
            staff_group=cfg.get("staffGroup"),
        )


@dataclass
class Built:
    """Handles on what `build` declared, by name (for exports and the tests)."""

    accounts: dict[str, gcp.serviceaccount.Account] = field(default_factory=dict)
    secrets: dict[str, gcp.secretmanager.Secret] = field(default_factory=dict)
    buckets: dict[str, gcp.storage.Bucket] = field(default_factory=dict)
    services: dict[str, run.Service] = field(default_factory=dict)
    jobs: dict[str, run.Job] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    protected: list[pulumi.Resource] = field(default_factory=list)  # data: never destroyed


def member(account: gcp.serviceaccount.Account) -> pulumi.Output[str]:
    return account.email.apply(lambda email: f"serviceAccount:{email}")


def mlflow_url(project_number: str, region: str) -> str:
    """Cloud Run's deterministic URL: known before the service exists, so clients and the
    server's allowed host can name it without a cycle."""
    return f"https://mlflow-{project_number}.{region}.run.app"


def build(level: Level, config: Config) -> Built:
    if config.stage not in ("foundation", "jobs", "full"):
        raise ValueError(f"appraiser:stage is foundation, jobs or full, not {config.stage!r}")
    built = Built()
    _declare(level, config, built)  # as far as the stage goes
    _alerts(level, config)
    _exports(built, config.project)
    return built


def _declare(level: Level, config: Config, built: Built) -> None:
    project, region = config.project, config.region
    number = gcp.organizations.get_project(project_id=project).number
    apis = [
        gcp.projects.Service(api.split(".")[0], service=api, disable_on_destroy=False)
        for api in APIS
    ]
    after_apis = pulumi.ResourceOptions(depends_on=apis)
    # what holds data is protected: `pulumi destroy` (or a replacement) stops at it
    keep = pulumi.ResourceOptions(depends_on=apis, protect=True)

    # --- identities ---------------------------------------------------------------------------
    for name in ACCOUNTS:
        built.accounts[name] = gcp.serviceaccount.Account(
            name, account_id=name, display_name=f"appraiser {name}", opts=after_apis
        )

    # --- network and database -------------------------------------------------------------------
    vpc = gcp.compute.Network("appraiser-vpc", auto_create_subnetworks=False, opts=after_apis)
    subnet = gcp.compute.Subnetwork(
        "appraiser-run", network=vpc.id, region=region, ip_cidr_range="10.8.0.0/24"
    )
    peering_range = gcp.compute.GlobalAddress(
        "private-services",
        purpose="VPC_PEERING",
        address_type="INTERNAL",
        prefix_length=16,
        network=vpc.id,
    )
    peering = gcp.servicenetworking.Connection(
        "private-services",
        network=vpc.id,
        service="servicenetworking.googleapis.com",
        reserved_peering_ranges=[peering_range.name],
    )
    db = level.database
    sql = gcp.sql.DatabaseInstance(
        "appraiser-sql",
        name="appraiser-sql",  # the name the secrets and the docs use (not an auto-name)
        database_version="POSTGRES_16",
        region=region,
        deletion_protection=True,  # Pulumi refuses to delete it
        settings=gcp.sql.DatabaseInstanceSettingsArgs(
            tier=db.tier,
            edition="ENTERPRISE",
            availability_type="REGIONAL" if db.high_availability else "ZONAL",
            disk_size=db.disk_gb,
            disk_autoresize=True,
            deletion_protection_enabled=True,  # and so does the Cloud SQL API itself
            ip_configuration=gcp.sql.DatabaseInstanceSettingsIpConfigurationArgs(
                ipv4_enabled=False,
                private_network=vpc.id,
                ssl_mode="ENCRYPTED_ONLY",
            ),
            backup_configuration=gcp.sql.DatabaseInstanceSettingsBackupConfigurationArgs(
                enabled=True,
                point_in_time_recovery_enabled=True,
                transaction_log_retention_days=7,
                start_time="03:00",
            ),
            database_flags=[
                gcp.sql.DatabaseInstanceSettingsDatabaseFlagArgs(
                    name="cloudsql.iam_authentication", value="on"
                ),
                gcp.sql.DatabaseInstanceSettingsDatabaseFlagArgs(
                    name="max_connections", value=str(db.max_connections)
                ),
            ],
        ),
        opts=pulumi.ResourceOptions(depends_on=[peering], protect=True),
    )
    built.protected.append(sql)
    for database in ("appraiser", "mlflow"):
        built.protected.append(
            gcp.sql.Database(
                database,
                name=database,
                instance=sql.name,
                deletion_policy="ABANDON",  # removing it from the stack never drops the data
                opts=pulumi.ResourceOptions(protect=True),
            )
        )
    # database users that log in with their service account's IAM identity, not a password
    for name in IAM_DATABASE_USERS:
        gcp.sql.User(
            f"db-{name}",
            instance=sql.name,
            type="CLOUD_IAM_SERVICE_ACCOUNT",
            name=built.accounts[name].email.apply(
                lambda email: email.removesuffix(".gserviceaccount.com")
            ),
        )

    # --- storage, images, secrets, warehouse ---------------------------------------------------
    def bucket(name: str, **kwargs: Any) -> gcp.storage.Bucket:
        built.buckets[name] = gcp.storage.Bucket(
            name,
            name=f"{project}-{name}",
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            force_destroy=False,
            opts=keep,
            **kwargs,
        )
        built.protected.append(built.buckets[name])
        return built.buckets[name]

    inbox = bucket(
        "inbox",
        location=region.upper(),
        # a processed file is in the store (its batch, stones and rejected rows): 90 days is
        # for an audit; failed files stay until someone reads their reason
        lifecycle_rules=[
            gcp.storage.BucketLifecycleRuleArgs(
                action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
                condition=gcp.storage.BucketLifecycleRuleConditionArgs(
                    age=90, matches_prefixes=["processed/"]
                ),
            )
        ],
    )
    # dual-region: the MLflow models must outlive a region outage (section 11)
    bucket(
        "mlflow-artifacts",
        location="US",
        custom_placement_config=gcp.storage.BucketCustomPlacementConfigArgs(
            data_locations=["US-CENTRAL1", "US-EAST1"]
        ),
        versioning=gcp.storage.BucketVersioningArgs(enabled=True),
    )
    exports = bucket("exports", location=region.upper())
    repository = gcp.artifactregistry.Repository(
        "appraiser",
        repository_id="appraiser",
        location="us",  # multi-region, for the same reason
        format="DOCKER",
        opts=after_apis,
    )
    for name in SECRETS:
        built.secrets[name] = gcp.secretmanager.Secret(
            name,
            secret_id=name,
            replication=gcp.secretmanager.SecretReplicationArgs(
                auto=gcp.secretmanager.SecretReplicationAutoArgs()
            ),
            opts=after_apis,
        )
    dataset = gcp.bigquery.Dataset("appraiser", dataset_id="appraiser", location="US", opts=keep)
    built.protected.append(dataset)
    # the export's tables, one partition per day (archive.load_into_bigquery): appraisals expire
    # with the warehouse's retention; the experts' prices never do (they are the labels)
    for table, days in (("appraisals", level.bigquery_partition_days), ("feedback", None)):
        built.protected.append(
            gcp.bigquery.Table(
                f"bq-{table}",
                dataset_id=dataset.dataset_id,
                table_id=table,
                time_partitioning=gcp.bigquery.TableTimePartitioningArgs(
                    type="DAY", expiration_ms=days * 86_400_000 if days else None
                ),
                deletion_protection=True,
                opts=keep,
            )
        )

    # --- IAM: exactly the table's grants (those on Cloud Run resources once these exist) ----------
    secret_grants = [
        _grant(grant, built, project, region, repository, dataset)
        for grant in GRANTS
        if grant.on not in ("service", "job")
    ]

    # --- Cloud Run ----------------------------------------------------------------------------
    tracking = mlflow_url(number, region)
    built.extra.update(sql=sql, mlflow_url=tracking)
    retrain_job = f"projects/{project}/locations/{region}/jobs/appraiser-retrain"
    app_env: dict[str, pulumi.Input[str]] = {
        "MLFLOW_TRACKING_URI": tracking,
        "APPRAISER_MIGRATE": "check",  # only the migrate job changes the schema
        "APPRAISER_POOL_SIZE": str(level.pool.size),
        "APPRAISER_MAX_OVERFLOW": str(level.pool.overflow),
        "APPRAISER_POOL_PRE_PING": "true",
        "APPRAISER_DATABASE_IAM_AUTH": "true",  # the URL secrets name IAM users, no passwords
        "APPRAISER_LOG_FORMAT": "json",
    }

    def envs(
        values: dict[str, pulumi.Input[str]],
        secrets: tuple[tuple[str, str], ...] = (),
        *,
        job: bool = False,
    ) -> list[Any]:
        """A service's (or a job's) container env: plain values, then secrets at their pinned
        versions. The provider's Args classes differ for services and jobs only by name."""
        if job:
            env_args: Any = run.JobTemplateTemplateContainerEnvArgs
            source: Any = run.JobTemplateTemplateContainerEnvValueSourceArgs
            ref: Any = run.JobTemplateTemplateContainerEnvValueSourceSecretKeyRefArgs
        else:
            env_args = run.ServiceTemplateContainerEnvArgs
            source = run.ServiceTemplateContainerEnvValueSourceArgs
            ref = run.ServiceTemplateContainerEnvValueSourceSecretKeyRefArgs
        pinned = [
            env_args(
                name=name,
                value_source=source(
                    secret_key_ref=ref(
                        secret=built.secrets[secret].secret_id,
                        version=str(config.secret_versions[secret]),
                    )
                ),
            )
            for name, secret in secrets
        ]
        return [env_args(name=k, value=v) for k, v in values.items()] + pinned

    network = run.ServiceTemplateVpcAccessArgs(
        network_interfaces=[
            run.ServiceTemplateVpcAccessNetworkInterfaceArgs(network=vpc.id, subnetwork=subnet.id)
        ],
        egress="PRIVATE_RANGES_ONLY",
    )
    # the database is reached over TCP at its private IP through Direct VPC egress (Cloud Run's
    # /cloudsql socket is for instances with a public IP); the URL secrets carry the address
    # and sslmode=require (the instance accepts encrypted connections only)

    def api_service(spec: Service) -> run.Service:
        env = {
            **app_env,
            "APPRAISER_RELOAD_SECONDS": "2",
            "APPRAISER_JOB_LAUNCHER": "cloud-run",
            "APPRAISER_RETRAIN_JOB": retrain_job,
        }
        command, args = SERVE
        app = run.ServiceTemplateContainerArgs(
            name="appraiser",
            image=config.image,
            commands=list(command),
            args=[*args, "--port", str(APP_PORT)],
            ports=run.ServiceTemplateContainerPortsArgs(container_port=APP_PORT),
            envs=envs(env, spec.secrets),
            resources=run.ServiceTemplateContainerResourcesArgs(
                limits={"cpu": str(spec.cpu), "memory": f"{spec.memory_gib:g}Gi"},
                cpu_idle=not spec.instance_billing,
                startup_cpu_boost=True,
            ),
            startup_probe=run.ServiceTemplateContainerStartupProbeArgs(
                http_get=run.ServiceTemplateContainerStartupProbeHttpGetArgs(path="/ready"),
                period_seconds=5,
                failure_threshold=24,
            ),
        )
        collector = run.ServiceTemplateContainerArgs(
            name="collector",
            image=SIDECAR_IMAGE,
            depends_ons=["appraiser"],
            resources=run.ServiceTemplateContainerResourcesArgs(
                limits={"cpu": "500m", "memory": "512Mi"}
            ),
        )
        return run.Service(
            spec.name,
            name=spec.name,
            location=region,
            ingress="INGRESS_TRAFFIC_ALL",
            iap_enabled=spec.iap,
            # service-level: the cap holds across revisions (a rollout runs two side by side),
            # which the database's connection budget relies on
            scaling=run.ServiceScalingArgs(
                min_instance_count=spec.min_instances, max_instance_count=spec.max_instances
            ),
            template=run.ServiceTemplateArgs(
                service_account=built.accounts[spec.account].email,
                # and per revision: a tagged candidate with no traffic is outside the
                # service-level cap (the budget counts one candidate instance per service)
                scaling=run.ServiceTemplateScalingArgs(max_instance_count=spec.max_instances),
                max_instance_request_concurrency=spec.concurrency,
                containers=[app, collector],
                vpc_access=network,
            ),
            opts=pulumi.ResourceOptions(
                depends_on=[*apis, *secret_grants],
                # Cloud Build deploys new images (section 8); the stack owns everything else
                ignore_changes=["template.containers[0].image"],
            ),
        )

    if config.stage == "full":
        for spec in level.services:
            built.services[spec.name] = api_service(spec)

    mlflow_env: dict[str, pulumi.Input[str]] = {
        "MLFLOW_ARTIFACTS_DESTINATION": built.buckets["mlflow-artifacts"].name.apply(
            lambda name: f"gs://{name}"
        ),
        "MLFLOW_SERVER_ALLOWED_HOSTS": tracking.removeprefix("https://"),
        "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(level.mlflow_pool.size),
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(level.mlflow_pool.overflow),
    }
    if config.stage == "foundation":  # no Cloud Run yet: nothing to start or to schedule
        return
    built.services["mlflow"] = run.Service(
        "mlflow",
        name="mlflow",
        location=region,
        ingress="INGRESS_TRAFFIC_ALL",  # IAM checks every call (design section 7)
        scaling=run.ServiceScalingArgs(
            min_instance_count=0, max_instance_count=level.mlflow_max_instances
        ),
        template=run.ServiceTemplateArgs(
            service_account=built.accounts["sa-mlflow"].email,
            containers=[
                run.ServiceTemplateContainerArgs(
                    name="mlflow",
                    image=config.image,
                    commands=["mlflow"],
                    args=[
                        "server",
                        "--host",
                        "0.0.0.0",
                        "--port",
                        str(MLFLOW_PORT),
                        "--workers",
                        str(level.mlflow_workers),
                        "--serve-artifacts",
                    ],
                    ports=run.ServiceTemplateContainerPortsArgs(container_port=MLFLOW_PORT),
                    envs=envs(mlflow_env, (("MLFLOW_BACKEND_STORE_URI", "mlflow-db-url"),)),
                    resources=run.ServiceTemplateContainerResourcesArgs(
                        limits={"cpu": "1", "memory": "2Gi"},
                        cpu_idle=True,  # request-based billing: it scales to zero between polls
                    ),
                )
            ],
            vpc_access=network,
        ),
        opts=pulumi.ResourceOptions(
            depends_on=[*apis, *secret_grants], ignore_changes=["template.containers[0].image"]
        ),
    )

    def job(spec: Job) -> run.Job:
        env: dict[str, pulumi.Input[str]] = {
            **app_env,
            "APPRAISER_POOL_SIZE": str(level.job_pool.size),
            "APPRAISER_MAX_OVERFLOW": str(level.job_pool.overflow),
        }
        if spec.migrates:
            env["APPRAISER_MIGRATE"] = "auto"
        if spec.name == "appraiser-export":
            env["APPRAISER_EXPORT_TO"] = exports.name.apply(lambda name: f"gs://{name}")
            env["APPRAISER_BIGQUERY_DATASET"] = dataset.dataset_id.apply(lambda d: f"{project}.{d}")
        volumes: list[run.JobTemplateTemplateVolumeArgs] = []
        mounts: list[run.JobTemplateTemplateContainerVolumeMountArgs] = []
        if spec.inbox_volume:
            volumes.append(
                run.JobTemplateTemplateVolumeArgs(
                    name="inbox",
                    gcs=run.JobTemplateTemplateVolumeGcsArgs(
                        bucket=inbox.name,
                        mount_options=[f"uid={IMAGE_UID}", f"gid={IMAGE_UID}"],
                    ),
                )
            )
            mounts.append(
                run.JobTemplateTemplateContainerVolumeMountArgs(
                    name="inbox", mount_path=INBOX_MOUNT
                )
            )
        return run.Job(
            spec.name,
            name=spec.name,
            location=region,
            template=run.JobTemplateArgs(
                task_count=1,
                parallelism=1,
                template=run.JobTemplateTemplateArgs(
                    service_account=built.accounts[spec.account].email,
                    max_retries=0,  # the next scheduled pass is the retry
                    timeout=f"{spec.timeout_seconds}s",
                    containers=[
                        run.JobTemplateTemplateContainerArgs(
                            image=config.image,
                            commands=list(spec.command),
                            args=list(spec.args),
                            envs=envs(env, spec.secrets, job=True),
                            resources=run.JobTemplateTemplateContainerResourcesArgs(
                                limits={"cpu": str(spec.cpu), "memory": f"{spec.memory_gib:g}Gi"}
                            ),
                            volume_mounts=mounts,
                        )
                    ],
                    volumes=volumes,
                    vpc_access=run.JobTemplateTemplateVpcAccessArgs(
                        network_interfaces=[
                            run.JobTemplateTemplateVpcAccessNetworkInterfaceArgs(
                                network=vpc.id, subnetwork=subnet.id
                            )
                        ],
                        egress="PRIVATE_RANGES_ONLY",
                    ),
                ),
            ),
            opts=pulumi.ResourceOptions(
                depends_on=[*apis, *secret_grants],
                ignore_changes=["template.template.containers[0].image"],
            ),
        )

    for spec_job in level.jobs:
        built.jobs[spec_job.name] = job(spec_job)

    for grant in GRANTS:
        if grant.on in ("service", "job"):
            _grant(grant, built, project, region, repository, dataset)
    # Google's own agents: IAP calls the shop service; Cloud Storage publishes bucket events
    if "appraiser-shop" in built.services:
        shop = built.services["appraiser-shop"]
        iap_agent = gcp.projects.ServiceIdentity(
            "iap-agent", project=project, service="iap.googleapis.com", opts=after_apis
        )
        gcp.cloudrunv2.ServiceIamMember(
            "iap-invokes-shop",
            name=shop.name,
            location=region,
            role="roles/run.invoker",
            member=iap_agent.email.apply(lambda email: f"serviceAccount:{email}"),
        )
        if config.staff_group:  # the people who may open the page (a Google group)
            gcp.iap.WebCloudRunServiceIamMember(
                "staff-open-shop",
                cloud_run_service_name=shop.name,
                location=region,
                role="roles/iap.httpsResourceAccessor",
                member=config.staff_group,
            )
    storage_agent = gcp.storage.get_project_service_account(project=project)
    publishes = gcp.projects.IAMMember(
        "gcs-publishes-events",
        project=project,
        role="roles/pubsub.publisher",
        member=f"serviceAccount:{storage_agent.email_address}",
    )

    # --- triggers: the schedule, the nightly export, an upload ------------------------------------
    # only once everything runs: before the first migration every pass would fail its schema check
    if config.stage != "full":
        return

    def run_uri(name: str) -> str:
        return (
            f"https://run.googleapis.com/v2/projects/{project}/locations/{region}/jobs/{name}:run"
        )

    for name, schedule in (
        ("appraiser-pipeline", level.pipeline_schedule),
        ("appraiser-export", level.export_schedule),
    ):
        gcp.cloudscheduler.Job(
            f"schedule-{name}",
            region=region,
            schedule=schedule,
            time_zone="Etc/UTC",
            http_target=gcp.cloudscheduler.JobHttpTargetArgs(
                uri=run_uri(name),
                http_method="POST",
                oauth_token=gcp.cloudscheduler.JobHttpTargetOauthTokenArgs(
                    service_account_email=built.accounts["sa-scheduler"].email
                ),
            ),
            opts=after_apis,
        )
    workflow = gcp.workflows.Workflow(
        "inbox-upload",
        region=region,
        service_account=built.accounts["sa-events"].id,
        source_contents=_WORKFLOW.replace("JOB_URI", run_uri("appraiser-pipeline")),
        opts=after_apis,
    )
    gcp.eventarc.Trigger(
        "inbox-upload",
        location=region,
        matching_criterias=[
            gcp.eventarc.TriggerMatchingCriteriaArgs(
                attribute="type", value="google.cloud.storage.object.v1.finalized"
            ),
            gcp.eventarc.TriggerMatchingCriteriaArgs(attribute="bucket", value=inbox.name),
        ],
        destination=gcp.eventarc.TriggerDestinationArgs(workflow=workflow.id),
        service_account=built.accounts["sa-events"].email,
        # Eventarc refuses a Cloud Storage trigger until the storage agent may publish
        opts=pulumi.ResourceOptions(depends_on=[*apis, publishes]),
    )

    built.extra.update(workflow=workflow)


def _exports(built: Built, project: str) -> None:
    """What the operator needs next (section 15): the database's address for the URL secrets."""
    sql = built.extra["sql"]
    pulumi.export("mlflow_url", built.extra["mlflow_url"])
    pulumi.export("image_repository", f"us-docker.pkg.dev/{project}/appraiser")
    pulumi.export("sql_private_ip", sql.private_ip_address)
    pulumi.export("sql_connection_name", sql.connection_name)
    for name, service in built.services.items():
        pulumi.export(f"{name}_url", service.uri)


# The workflow an upload starts: files the pass itself moved (processed/, failed/, reasons) are
# ignored; anything else starts a pipeline execution (a pass already running makes it exit busy).
_WORKFLOW = """\
main:
  params: [event]
  steps:
    - skip_own_moves:
        switch:
          - condition: ${text.match_regex(event.data.name, "^(processed|failed)/")}
            return: "ignored: moved by a pass"
    - run_pass:
        call: http.post
        args:
          url: JOB_URI
          auth:
            type: OAuth2
        result: execution
    - done:
        return: ${execution.body.name}
"""


def _grant(
    grant: Grant,
    built: Built,
    project: str,
    region: str,
    repository: gcp.artifactregistry.Repository,
    dataset: gcp.bigquery.Dataset,
) -> pulumi.Resource:
    who = member(built.accounts[grant.account])
    label = f"{grant.account}-{grant.role.removeprefix('roles/')}-{grant.name or 'project'}"
    if grant.on == "project":
        return gcp.projects.IAMMember(label, project=project, role=grant.role, member=who)
    elif grant.on == "secret":
        return gcp.secretmanager.SecretIamMember(
            label, secret_id=built.secrets[grant.name].id, role=grant.role, member=who
        )
    elif grant.on == "bucket":
        return gcp.storage.BucketIAMMember(
            label, bucket=built.buckets[grant.name].name, role=grant.role, member=who
        )
    elif grant.on == "service":
        return gcp.cloudrunv2.ServiceIamMember(
            label,
            name=built.services[grant.name].name,
            location=region,
            role=grant.role,
            member=who,
        )
    elif grant.on == "job":
        return gcp.cloudrunv2.JobIamMember(
            label, name=built.jobs[grant.name].name, location=region, role=grant.role, member=who
        )
    elif grant.on == "repository":
        return gcp.artifactregistry.RepositoryIamMember(
            label,
            repository=repository.name,
            location=repository.location,
            role=grant.role,
            member=who,
        )
    elif grant.on == "account":  # deploys may run services and jobs as this account only
        return gcp.serviceaccount.IAMMember(
            label, service_account_id=built.accounts[grant.name].name, role=grant.role, member=who
        )
    elif grant.on == "dataset":
        return gcp.bigquery.DatasetIamMember(
            label, dataset_id=dataset.dataset_id, role=grant.role, member=who
        )
    raise ValueError(f"no way to grant on {grant.on!r}")


# Alert policies on what the app exports (`GET /metrics`, scraped by the sidecar into Managed
# Service for Prometheus, queried here in PromQL) and on Cloud Run's and Cloud SQL's own metrics.
PROMQL_ALERTS = {
    "appraisals not reaching the store": (
        "sum(rate(appraiser_store_write_failures_total[5m])) > 0",
        "300s",
    ),
    "appraisals dropped": ("sum(increase(appraiser_appraisals_dropped_total[10m])) > 0", "0s"),
    "instances disagree on the champion": (
        "max(appraiser_champion_version) - min(appraiser_champion_version) > 0",
        "300s",
    ),
    # the champion's version, not the load counter: every new instance's first load counts too
    "promotion happened": ("changes(max(appraiser_champion_version)[10m:1m]) > 0", "0s"),
    "newest batch drifts": ("max(appraiser_batch_drifted_features) > 0", "0s"),
}
BUILT_IN_ALERTS = {
    "pipeline execution failed": (
        'metric.type = "run.googleapis.com/job/completed_execution_count"'
        ' AND resource.type = "cloud_run_job" AND metric.labels.result = "failed"',
        0.0,
    ),
}


def _alerts(level: Level, config: Config) -> None:
    channel = gcp.monitoring.NotificationChannel(
        "operators", type="email", labels={"email_address": config.alert_email}
    )

    def policy(title: str, **condition: Any) -> None:
        gcp.monitoring.AlertPolicy(
            title.replace(" ", "-").replace("%", "pct"),
            display_name=title,
            combiner="OR",
            notification_channels=[channel.id],
            conditions=[gcp.monitoring.AlertPolicyConditionArgs(display_name=title, **condition)],
        )

    for title, (query, duration) in PROMQL_ALERTS.items():
        policy(
            title,
            condition_prometheus_query_language=gcp.monitoring.AlertPolicyConditionConditionPrometheusQueryLanguageArgs(
                query=query, duration=duration
            ),
        )
    budget = int(level.database.max_connections * 0.8)
    thresholds = {
        **BUILT_IN_ALERTS,
        "database connections over 80%": (
            'metric.type = "cloudsql.googleapis.com/database/postgresql/num_backends"'
            ' AND resource.type = "cloudsql_database"',
            float(budget),
        ),
    }
    for title, (metric_filter, threshold) in thresholds.items():
        policy(
            title,
            condition_threshold=gcp.monitoring.AlertPolicyConditionConditionThresholdArgs(
                filter=metric_filter,
                comparison="COMPARISON_GT",
                threshold_value=threshold,
                duration="300s",
                aggregations=[
                    # summed over the series (num_backends is per database; the budget is the
                    # instance's)
                    gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs(
                        alignment_period="300s",
                        per_series_aligner="ALIGN_MAX",
                        cross_series_reducer="REDUCE_SUM",
                    )
                ],
            ),
        )
