"""The network and Cloud SQL: a private VPC peered with Google's services, and the PostgreSQL
instance on it (private IP only, point-in-time recovery, deletion protection, IAM database
authentication) with the `appraiser` and `mlflow` databases and their IAM users."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from infra.context import Context
from infra.spec import IAM_DATABASE_USERS


@dataclass(frozen=True)
class Network:
    """What Cloud Run's services and jobs attach to: the VPC and its subnet, and the database."""

    vpc: gcp.compute.Network
    subnet: gcp.compute.Subnetwork
    sql: gcp.sql.DatabaseInstance


def declare(ctx: Context) -> Network:
    """The VPC, its peering with Google's services, and the instance with its databases."""
    built, region = ctx.built, ctx.region
    vpc = gcp.compute.Network("appraiser-vpc", auto_create_subnetworks=False, opts=ctx.after_apis)
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
    db = ctx.level.database
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
    built.extra["sql"] = sql
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
    return Network(vpc, subnet, sql)
