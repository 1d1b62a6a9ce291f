"""Cloud Run: the API services (each with its Prometheus collector beside it), the MLflow server
and the jobs, all on the VPC through Direct VPC egress, with secrets at their pinned versions.

The database is reached over TCP at its private IP (Cloud Run's /cloudsql socket is for
instances with a public IP); the URL secrets carry the address and sslmode=require (the
instance accepts encrypted connections only)."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_gcp as gcp

from infra.context import Context
from infra.database import Network
from infra.spec import IMAGE_UID, INBOX_MOUNT, SERVE, Job, Service
from infra.storage import Storage

run = gcp.cloudrunv2

SIDECAR_IMAGE = (
    "us-docker.pkg.dev/cloud-ops-agents-artifacts/cloud-run-gmp-sidecar/cloud-run-gmp-sidecar:1.2.0"
)
# the API's port in Cloud Run (the container port, the only one its ingress reaches), and the
# metrics port beside it: the Prometheus collector's default scrape target (RunMonitoring's
# default endpoint is :8080/metrics), so it needs no configuration of its own, while nothing from
# outside the instance can reach it (the app answers /metrics there only)
APP_PORT = 8000
METRICS_PORT = 8080
MLFLOW_PORT = 8080
Env = dict[str, pulumi.Input[str]]


def mlflow_url(project_number: str, region: str) -> str:
    """Cloud Run's deterministic URL: known before the service exists, so clients and the
    server's allowed host can name it without a cycle."""
    return f"https://mlflow-{project_number}.{region}.run.app"


def declare(ctx: Context, net: Network, stored: Storage, grants: list[pulumi.Resource]) -> None:
    """The API services (stage full), then MLflow and the jobs (stages jobs and full). They wait
    for the `grants` that let their accounts read secrets and buckets."""
    level, built = ctx.level, ctx.built
    tracking = mlflow_url(ctx.number, ctx.region)
    built.extra["mlflow_url"] = tracking
    app_env: Env = {
        "MLFLOW_TRACKING_URI": tracking,
        "APPRAISER_MIGRATE": "check",  # only the migrate job changes the schema
        "APPRAISER_POOL_SIZE": str(level.pool.size),
        "APPRAISER_MAX_OVERFLOW": str(level.pool.overflow),
        "APPRAISER_POOL_PRE_PING": "true",
        "APPRAISER_DATABASE_IAM_AUTH": "true",  # the URL secrets name IAM users, no passwords
        "APPRAISER_LOG_FORMAT": "json",
    }
    network = run.ServiceTemplateVpcAccessArgs(
        network_interfaces=[
            run.ServiceTemplateVpcAccessNetworkInterfaceArgs(
                network=net.vpc.id, subnetwork=net.subnet.id
            )
        ],
        egress="PRIVATE_RANGES_ONLY",
    )
    if ctx.config.stage == "full":
        for spec in level.services:
            built.services[spec.name] = _api_service(ctx, spec, app_env, network, grants)
    if ctx.config.stage == "foundation":  # no Cloud Run yet: nothing to start or to schedule
        return
    built.services["mlflow"] = _mlflow(ctx, tracking, network, grants)
    for spec_job in level.jobs:
        built.jobs[spec_job.name] = _job(ctx, spec_job, app_env, net, stored, grants)


def _envs(
    ctx: Context, values: Env, secrets: tuple[tuple[str, str], ...] = (), *, job: bool = False
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
                    secret=ctx.built.secrets[secret].secret_id,
                    version=str(ctx.config.secret_versions[secret]),
                )
            ),
        )
        for name, secret in secrets
    ]
    return [env_args(name=k, value=v) for k, v in values.items()] + pinned


def _api_service(
    ctx: Context,
    spec: Service,
    app_env: Env,
    network: run.ServiceTemplateVpcAccessArgs,
    grants: list[pulumi.Resource],
) -> run.Service:
    env = {
        **app_env,
        "APPRAISER_RELOAD_SECONDS": "2",
        "APPRAISER_JOB_LAUNCHER": "cloud-run",
        "APPRAISER_RETRAIN_JOB": (
            f"projects/{ctx.project}/locations/{ctx.region}/jobs/appraiser-retrain"
        ),
        "APPRAISER_METRICS_PORT": str(METRICS_PORT),
        # the collector dials 0.0.0.0:8080 inside the instance; Cloud Run routes no outside
        # traffic to a port other than the container port
        "APPRAISER_METRICS_HOST": "0.0.0.0",
    }
    command, args = SERVE
    app = run.ServiceTemplateContainerArgs(
        name="appraiser",
        image=ctx.config.image,
        commands=list(command),
        args=[*args, "--port", str(APP_PORT)],
        ports=run.ServiceTemplateContainerPortsArgs(container_port=APP_PORT),
        envs=_envs(ctx, env, spec.secrets),
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
        location=ctx.region,
        ingress="INGRESS_TRAFFIC_ALL",
        iap_enabled=spec.iap,
        # service-level: the cap holds across revisions (a rollout runs two side by side),
        # which the database's connection budget relies on
        scaling=run.ServiceScalingArgs(
            min_instance_count=spec.min_instances, max_instance_count=spec.max_instances
        ),
        template=run.ServiceTemplateArgs(
            service_account=ctx.built.accounts[spec.account].email,
            # and per revision: a tagged candidate with no traffic is outside the
            # service-level cap (the budget counts one candidate instance per service)
            scaling=run.ServiceTemplateScalingArgs(max_instance_count=spec.max_instances),
            max_instance_request_concurrency=spec.concurrency,
            containers=[app, collector],
            vpc_access=network,
        ),
        opts=pulumi.ResourceOptions(
            depends_on=[*ctx.apis, *grants],
            # Cloud Build deploys new images (section 8); the stack owns everything else
            ignore_changes=["template.containers[0].image"],
        ),
    )


def _mlflow(
    ctx: Context,
    tracking: str,
    network: run.ServiceTemplateVpcAccessArgs,
    grants: list[pulumi.Resource],
) -> run.Service:
    level, built = ctx.level, ctx.built
    mlflow_env: Env = {
        "MLFLOW_ARTIFACTS_DESTINATION": built.buckets["mlflow-artifacts"].name.apply(
            lambda name: f"gs://{name}"
        ),
        "MLFLOW_SERVER_ALLOWED_HOSTS": tracking.removeprefix("https://"),
        "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(level.mlflow_pool.size),
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(level.mlflow_pool.overflow),
    }
    return run.Service(
        "mlflow",
        name="mlflow",
        location=ctx.region,
        ingress="INGRESS_TRAFFIC_ALL",  # IAM checks every call (design section 7)
        scaling=run.ServiceScalingArgs(
            min_instance_count=0, max_instance_count=level.mlflow_max_instances
        ),
        template=run.ServiceTemplateArgs(
            service_account=built.accounts["sa-mlflow"].email,
            containers=[
                run.ServiceTemplateContainerArgs(
                    name="mlflow",
                    image=ctx.config.mlflow_image,
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
                    envs=_envs(ctx, mlflow_env, (("MLFLOW_BACKEND_STORE_URI", "mlflow-db-url"),)),
                    resources=run.ServiceTemplateContainerResourcesArgs(
                        limits={"cpu": "1", "memory": "2Gi"},
                        cpu_idle=True,  # request-based billing: it scales to zero between polls
                    ),
                )
            ],
            vpc_access=network,
        ),
        opts=pulumi.ResourceOptions(
            depends_on=[*ctx.apis, *grants], ignore_changes=["template.containers[0].image"]
        ),
    )


def _job(
    ctx: Context,
    spec: Job,
    app_env: Env,
    net: Network,
    stored: Storage,
    grants: list[pulumi.Resource],
) -> run.Job:
    level, project = ctx.level, ctx.project
    env: Env = {
        **app_env,
        "APPRAISER_POOL_SIZE": str(level.job_pool.size),
        "APPRAISER_MAX_OVERFLOW": str(level.job_pool.overflow),
    }
    if spec.migrates:
        env["APPRAISER_MIGRATE"] = "auto"
    if spec.name == "appraiser-export":
        env["APPRAISER_EXPORT_TO"] = stored.exports.name.apply(lambda name: f"gs://{name}")
        env["APPRAISER_BIGQUERY_DATASET"] = stored.dataset.dataset_id.apply(
            lambda d: f"{project}.{d}"
        )
    volumes: list[run.JobTemplateTemplateVolumeArgs] = []
    mounts: list[run.JobTemplateTemplateContainerVolumeMountArgs] = []
    if spec.inbox_volume:
        volumes.append(
            run.JobTemplateTemplateVolumeArgs(
                name="inbox",
                gcs=run.JobTemplateTemplateVolumeGcsArgs(
                    bucket=stored.inbox.name,
                    mount_options=[f"uid={IMAGE_UID}", f"gid={IMAGE_UID}"],
                ),
            )
        )
        mounts.append(
            run.JobTemplateTemplateContainerVolumeMountArgs(name="inbox", mount_path=INBOX_MOUNT)
        )
    return run.Job(
        spec.name,
        name=spec.name,
        location=ctx.region,
        template=run.JobTemplateArgs(
            task_count=1,
            parallelism=1,
            template=run.JobTemplateTemplateArgs(
                service_account=ctx.built.accounts[spec.account].email,
                max_retries=0,  # the next scheduled pass is the retry
                timeout=f"{spec.timeout_seconds}s",
                containers=[
                    run.JobTemplateTemplateContainerArgs(
                        image=ctx.config.image,
                        commands=list(spec.command),
                        args=list(spec.args),
                        envs=_envs(ctx, env, spec.secrets, job=True),
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
                            network=net.vpc.id, subnetwork=net.subnet.id
                        )
                    ],
                    egress="PRIVATE_RANGES_ONLY",
                ),
            ),
        ),
        opts=pulumi.ResourceOptions(
            depends_on=[*ctx.apis, *grants],
            ignore_changes=["template.template.containers[0].image"],
        ),
    )
