"""Where data and images live: the buckets (inbox, MLflow's artifacts, exports), the Artifact
Registry repository, the secrets (their versions are added by hand, then pinned in config), and
the BigQuery dataset the nightly export loads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi_gcp as gcp

from infra.context import Context
from infra.spec import SECRETS


@dataclass(frozen=True)
class Storage:
    """The handles later parts need besides `Built`'s buckets and secrets."""

    inbox: gcp.storage.Bucket
    exports: gcp.storage.Bucket
    repository: gcp.artifactregistry.Repository
    dataset: gcp.bigquery.Dataset


def declare(ctx: Context) -> Storage:
    """Buckets, repository, secrets and warehouse; what holds data is protected."""
    built, region = ctx.built, ctx.region

    def bucket(name: str, **kwargs: Any) -> gcp.storage.Bucket:
        built.buckets[name] = gcp.storage.Bucket(
            name,
            name=f"{ctx.project}-{name}",
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            force_destroy=False,
            opts=ctx.keep,
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
        opts=ctx.after_apis,
    )
    for name in SECRETS:
        built.secrets[name] = gcp.secretmanager.Secret(
            name,
            secret_id=name,
            replication=gcp.secretmanager.SecretReplicationArgs(
                auto=gcp.secretmanager.SecretReplicationAutoArgs()
            ),
            opts=ctx.after_apis,
        )
    dataset = gcp.bigquery.Dataset(
        "appraiser", dataset_id="appraiser", location="US", opts=ctx.keep
    )
    built.protected.append(dataset)
    # the export's tables, one partition per day (archive.load_into_bigquery): appraisals expire
    # with the warehouse's retention; the experts' prices never do (they are the labels)
    for table, days in (("appraisals", ctx.level.bigquery_partition_days), ("feedback", None)):
        built.protected.append(
            gcp.bigquery.Table(
                f"bq-{table}",
                dataset_id=dataset.dataset_id,
                table_id=table,
                time_partitioning=gcp.bigquery.TableTimePartitioningArgs(
                    type="DAY", expiration_ms=days * 86_400_000 if days else None
                ),
                deletion_protection=True,
                opts=ctx.keep,
            )
        )
    return Storage(inbox, exports, repository, dataset)
