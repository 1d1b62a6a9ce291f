"""What every part of the stack declares with: the project's settings (Config), the handles
declared so far (Built), and the two together with the level and the project's APIs (Context)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pulumi
import pulumi_gcp as gcp

from infra.spec import Level


@dataclass(frozen=True)
class Config:
    """What differs between projects: set with `pulumi config set` (Pulumi.<stack>.yaml)."""

    project: str
    image: str  # the app (the Dockerfile's last stage), by digest: ...@sha256:...
    mlflow_image: str  # the MLflow server (the Dockerfile's `mlflow` target), by digest
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
            mlflow_image=cfg.require("mlflowImage"),
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
    services: dict[str, gcp.cloudrunv2.Service] = field(default_factory=dict)
    jobs: dict[str, gcp.cloudrunv2.Job] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    protected: list[pulumi.Resource] = field(default_factory=list)  # data: never destroyed


@dataclass(frozen=True)
class Context:
    """One stack being declared: what each part reads, and `built`, where each records what it
    declared for the parts after it."""

    level: Level
    config: Config
    built: Built
    number: str  # the project's number: Cloud Run's URLs contain it
    apis: list[gcp.projects.Service]  # every resource waits for the APIs it is made through

    @property
    def project(self) -> str:
        return self.config.project

    @property
    def region(self) -> str:
        return self.config.region

    @property
    def after_apis(self) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(depends_on=self.apis)

    @property
    def keep(self) -> pulumi.ResourceOptions:
        """What holds data is protected: `pulumi destroy` (or a replacement) stops at it."""
        return pulumi.ResourceOptions(depends_on=self.apis, protect=True)
