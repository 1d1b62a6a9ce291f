"""Who may do what: one service account per component, exactly the design's IAM table (spec.GRANTS)
as additive members, and Google's own agents (IAP calls the shop; Cloud Storage publishes the
inbox's events)."""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from infra.context import Context
from infra.spec import ACCOUNTS, GRANTS, Grant
from infra.storage import Storage

RUN_RESOURCES = ("service", "job")  # granted on only once Cloud Run's services and jobs exist


def member(account: gcp.serviceaccount.Account) -> pulumi.Output[str]:
    """The IAM member string of one of the stack's service accounts."""
    return account.email.apply(lambda email: f"serviceAccount:{email}")


def accounts(ctx: Context) -> None:
    """One service account per component (spec.ACCOUNTS), before anything grants to them."""
    for name in ACCOUNTS:
        ctx.built.accounts[name] = gcp.serviceaccount.Account(
            name, account_id=name, display_name=f"appraiser {name}", opts=ctx.after_apis
        )


def grants(ctx: Context, stored: Storage, *, on_run: bool) -> list[pulumi.Resource]:
    """The table's grants on Cloud Run services and jobs (`on_run`), or on everything else."""
    return [_grant(grant, ctx, stored) for grant in GRANTS if (grant.on in RUN_RESOURCES) == on_run]


def google_agents(ctx: Context) -> pulumi.Resource:
    """IAP may invoke the shop service (and the staff group may open it); Cloud Storage's agent
    may publish events. Returns the latter: Eventarc's trigger waits for it."""
    project, region, built = ctx.project, ctx.region, ctx.built
    if "appraiser-shop" in built.services:
        shop = built.services["appraiser-shop"]
        iap_agent = gcp.projects.ServiceIdentity(
            "iap-agent", project=project, service="iap.googleapis.com", opts=ctx.after_apis
        )
        gcp.cloudrunv2.ServiceIamMember(
            "iap-invokes-shop",
            name=shop.name,
            location=region,
            role="roles/run.invoker",
            member=iap_agent.email.apply(lambda email: f"serviceAccount:{email}"),
        )
        if ctx.config.staff_group:  # the people who may open the page (a Google group)
            gcp.iap.WebCloudRunServiceIamMember(
                "staff-open-shop",
                cloud_run_service_name=shop.name,
                location=region,
                role="roles/iap.httpsResourceAccessor",
                member=ctx.config.staff_group,
            )
    storage_agent = gcp.storage.get_project_service_account(project=project)
    return gcp.projects.IAMMember(
        "gcs-publishes-events",
        project=project,
        role="roles/pubsub.publisher",
        member=f"serviceAccount:{storage_agent.email_address}",
    )


def _grant(grant: Grant, ctx: Context, stored: Storage) -> pulumi.Resource:
    built, region = ctx.built, ctx.region
    who = member(built.accounts[grant.account])
    label = f"{grant.account}-{grant.role.removeprefix('roles/')}-{grant.name or 'project'}"
    if grant.on == "project":
        return gcp.projects.IAMMember(label, project=ctx.project, role=grant.role, member=who)
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
            repository=stored.repository.name,
            location=stored.repository.location,
            role=grant.role,
            member=who,
        )
    elif grant.on == "account":  # deploys may run services and jobs as this account only
        return gcp.serviceaccount.IAMMember(
            label, service_account_id=built.accounts[grant.name].name, role=grant.role, member=who
        )
    elif grant.on == "dataset":
        return gcp.bigquery.DatasetIamMember(
            label, dataset_id=stored.dataset.dataset_id, role=grant.role, member=who
        )
    raise ValueError(f"no way to grant on {grant.on!r}")
