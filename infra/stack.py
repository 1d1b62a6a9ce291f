"""The design (docs/cloud-architecture.md) as Pulumi resources, for one load level (spec.py).

`build(level, config)` declares everything a project needs, one module per part, in the order
the parts depend on each other:

- identities.py: one service account per component, the IAM table's grants, Google's agents;
- database.py: the network and Cloud SQL (private IP only, point-in-time recovery, deletion
  protection, IAM database authentication);
- storage.py: the buckets, the Artifact Registry repository, secrets, the BigQuery dataset;
- services.py: the Cloud Run services and jobs;
- triggers.py: Cloud Scheduler, Eventarc with its workflow;
- alerts.py: alert policies on metrics the app exports.

Each part reads a `Context` (context.py: the level, the config, what was declared so far).
Nested arguments use the provider's `...Args` classes, never dicts: a misspelled argument is
then a TypeError when the program runs (and in the offline tests), not a key the provider would
silently drop."""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from infra import alerts, database, identities, services, storage, triggers
from infra.context import Built, Config, Context
from infra.spec import Level

__all__ = ["Built", "Config", "build"]

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


def build(level: Level, config: Config) -> Built:
    """Declare `level` for `config`'s project, as far as its stage goes; then alerts, exports."""
    if config.stage not in ("foundation", "jobs", "full"):
        raise ValueError(f"appraiser:stage is foundation, jobs or full, not {config.stage!r}")
    number = gcp.organizations.get_project(project_id=config.project).number
    apis = [
        gcp.projects.Service(api.split(".")[0], service=api, disable_on_destroy=False)
        for api in APIS
    ]
    ctx = Context(level, config, Built(), number, apis)
    _declare(ctx)  # as far as the stage goes
    alerts.declare(ctx)
    _exports(ctx.built, config.project)
    return ctx.built


def _declare(ctx: Context) -> None:
    """The parts in the order they depend on each other, stopping where the stage ends."""
    identities.accounts(ctx)
    net = database.declare(ctx)
    stored = storage.declare(ctx)
    # Cloud Run's services and jobs start only once their accounts may read secrets and buckets
    ready = identities.grants(ctx, stored, on_run=False)
    services.declare(ctx, net, stored, ready)
    if ctx.config.stage == "foundation":  # no Cloud Run yet: nothing to grant on or to schedule
        return
    identities.grants(ctx, stored, on_run=True)
    publishes = identities.google_agents(ctx)
    # only once everything runs: before the first migration every pass would fail its schema check
    if ctx.config.stage != "full":
        return
    triggers.declare(ctx, stored.inbox, publishes)


def _exports(built: Built, project: str) -> None:
    """What the operator needs next (section 15): the database's address for the URL secrets."""
    sql = built.extra["sql"]
    pulumi.export("mlflow_url", built.extra["mlflow_url"])
    pulumi.export("image_repository", f"us-docker.pkg.dev/{project}/appraiser")
    pulumi.export("sql_private_ip", sql.private_ip_address)
    pulumi.export("sql_connection_name", sql.connection_name)
    for name, service in built.services.items():
        pulumi.export(f"{name}_url", service.uri)
