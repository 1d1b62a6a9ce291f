"""The Pulumi program (infra/) run offline against mocks, one stack per load level: what it
declares is checked against the design's IAM table and cost tables, the app's settings and CLI,
and the rules of section 7 (private database, pinned secrets, nothing public)."""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

import infra
from infra import cost, identities, mocks, services, spec, stack
from infra import database as db_part
from infra.mocks import Declared

REPO = Path(__file__).resolve().parents[1]
DESIGN = (REPO / "docs" / "cloud-architecture.md").read_text()
LEVELS = list(spec.LEVELS)
Grants = set[tuple[str, str, str, str]]  # (account, role, kind, resource name)
RUN_SERVICE, RUN_JOB = "cloudrunv2/service:Service", "cloudrunv2/job:Job"


@pytest.fixture(scope="module")
def declared() -> dict[str, list[Declared]]:
    return {name: mocks.declare(level).declared for name, level in spec.LEVELS.items()}


def of_type(found: list[Declared], kind: str) -> list[Declared]:
    """Resources of a type: "DatabaseInstance", or "cloudrunv2/service:Service" where the last
    part alone is ambiguous (a project's API is a Service too)."""
    return [d for d in found if kind in (d.type.split(":")[-1], d.type.split(":", 1)[1])]


def containers(found: list[Declared]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(service or job name, container) for every container the level runs."""
    for service in of_type(found, RUN_SERVICE):
        for container in service.inputs["template"]["containers"]:
            yield service.inputs["name"], container
    for job in of_type(found, RUN_JOB):
        for container in job.inputs["template"]["template"]["containers"]:
            yield job.inputs["name"], container


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueSource")) for e in container.get("envs", [])}


# --- IAM -----------------------------------------------------------------------------------------

_KIND = {
    "IAMMember": "project",
    "SecretIamMember": "secret",
    "BucketIAMMember": "bucket",
    "ServiceIamMember": "service",
    "JobIamMember": "job",
    "RepositoryIamMember": "repository",
    "DatasetIamMember": "dataset",
    "serviceaccount/iAMMember:IAMMember": "account",
}


def granted(found: list[Declared], project: str = "appraiser-test") -> Grants:
    """The grants the stack declares to its own service accounts."""
    out: Grants = set()
    for d in found:
        kind = _KIND.get(d.type.split(":", 1)[1]) or _KIND.get(d.type.split(":")[-1])
        if kind is None:
            continue
        account = re.fullmatch(
            rf"serviceAccount:(sa-[\w-]+)@{project}\.iam\.gserviceaccount\.com", d.inputs["member"]
        )
        if account is None:
            continue  # Google's own agents (IAP, Cloud Storage): asserted on their own below
        target = {
            "project": "",
            "secret": str(d.inputs.get("secretId", "")).removesuffix("-id"),
            "bucket": str(d.inputs.get("bucket", "")).removeprefix(f"{project}-"),
            "service": d.inputs.get("name", ""),
            "job": d.inputs.get("name", ""),
            "repository": d.inputs.get("repository", ""),
            "dataset": d.inputs.get("datasetId", ""),
            "account": str(d.inputs.get("serviceAccountId", "")).split("/")[-1].split("@")[0],
        }[kind]
        out.add((account[1], d.inputs["role"], kind, target))
    return out


def design_table() -> Grants:
    """Section 7's IAM table: each `sa-…` row's clauses, "`role` (project)" or
    "`role` on KIND `name`"."""
    section = DESIGN.split("### Projects and identities", 1)[1].split("\n### ", 1)[0]
    out: Grants = set()
    for row in re.findall(r"^\| `(sa-[\w-]+)` \|[^|]*\|([^|]*)\|", section, flags=re.M):
        account, roles = row
        for clause in roles.split(";"):
            found = re.fullmatch(
                r"\s*`(roles/[\w.]+)`\s+(?:\(project\)|on (\w+) `([\w-]+)`)\s*", clause
            )
            assert found, f"{account}: cannot read the clause {clause.strip()!r}"
            role, kind, name = found.groups()
            out.add((account, role, kind or "project", name or ""))
    return out


def mismatches(stack_grants: Grants, table: Grants) -> dict[str, Grants]:
    return {"not in the table": stack_grants - table, "missing": table - stack_grants}


@pytest.mark.parametrize("level", LEVELS)
def test_service_accounts_get_exactly_the_design_tables_roles(
    declared: dict[str, list[Declared]], level: str
) -> None:
    table = design_table()
    assert len(table) >= 25  # the parse read the table, not a fragment of it
    assert {(g.account, g.role, g.on, g.name) for g in spec.GRANTS} == table
    assert mismatches(granted(declared[level]), table) == {
        "not in the table": set(),
        "missing": set(),
    }


def test_a_role_outside_the_table_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = spec.Grant("sa-api", "roles/storage.admin", "project")
    monkeypatch.setattr(identities, "GRANTS", (*spec.GRANTS, extra))
    found = mocks.declare(spec.LEVELS["shop"]).declared
    assert mismatches(granted(found), design_table())["not in the table"] == {
        ("sa-api", "roles/storage.admin", "project", "")
    }


def test_a_misspelled_resource_argument_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The program itself, with one argument misspelled, refuses to run (so the fixture above,
    and `pulumi preview`, fail): nested arguments are Args classes, not dicts."""
    source = Path(db_part.__file__).read_text()
    right = "point_in_time_recovery_enabled=True"
    assert source.count(right) == 1
    mutant = types.ModuleType("infra.database")
    mutant.__file__ = db_part.__file__
    exec(
        compile(source.replace(right, "point_in_time_recovery_enable=True"), "mutant", "exec"),
        mutant.__dict__,
    )
    monkeypatch.setitem(sys.modules, "infra.database", mutant)
    monkeypatch.setattr(infra, "database", mutant)
    monkeypatch.setattr(stack, "database", mutant)  # the program's own reference to the part
    with pytest.raises(TypeError, match="point_in_time_recovery_enable"):
        mocks.declare(spec.LEVELS["shop"])


@pytest.mark.parametrize("level", LEVELS)
def test_nothing_is_public(declared: dict[str, list[Declared]], level: str) -> None:
    for d in declared[level]:
        # only additive members: a binding or policy would take over grants made elsewhere
        assert not d.type.endswith(("IamBinding", "IAMBinding", "IamPolicy", "IAMPolicy")), d.type
        if d.type.endswith(("IamMember", "IAMMember")):
            assert d.inputs["member"] not in {"allUsers", "allAuthenticatedUsers"}, d.name
    for service in of_type(declared[level], RUN_SERVICE):
        assert not service.inputs.get("invokerIamDisabled"), service.name
    shop = next(s for s in of_type(declared[level], RUN_SERVICE) if s.name == "appraiser-shop")
    assert shop.inputs["iapEnabled"] is True
    agents = {
        d.inputs["member"]
        for d in declared[level]
        if d.type.endswith("IamMember") and "gcp-sa-iap" in d.inputs["member"]
    }
    assert agents == {
        f"serviceAccount:service-{mocks.PROJECT_NUMBER}@gcp-sa-iap.iam.gserviceaccount.com"
    }
    (staff,) = of_type(declared[level], "WebCloudRunServiceIamMember")
    assert staff.inputs["role"] == "roles/iap.httpsResourceAccessor"
    assert staff.inputs["member"].startswith("group:")
    for bucket in of_type(declared[level], "Bucket"):
        assert bucket.inputs["publicAccessPrevention"] == "enforced", bucket.name
        assert bucket.inputs["uniformBucketLevelAccess"] is True, bucket.name


# --- the database --------------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_cloud_sql_is_private_recoverable_and_protected(
    declared: dict[str, list[Declared]], level: str
) -> None:
    (sql,) = of_type(declared[level], "DatabaseInstance")
    settings = sql.inputs["settings"]
    assert settings["ipConfiguration"]["ipv4Enabled"] is False  # no public IP at all
    assert settings["ipConfiguration"]["privateNetwork"]
    backups = settings["backupConfiguration"]
    assert backups["enabled"] and backups["pointInTimeRecoveryEnabled"]
    assert backups["transactionLogRetentionDays"] == 7
    assert sql.inputs["deletionProtection"] is True and settings["deletionProtectionEnabled"]
    flags = {f["name"]: f["value"] for f in settings["databaseFlags"]}
    assert flags["cloudsql.iam_authentication"] == "on"
    assert int(flags["max_connections"]) == spec.LEVELS[level].database.max_connections
    assert settings["tier"] == spec.LEVELS[level].database.tier
    # reached over TCP at its private IP (Direct VPC egress): no /cloudsql socket volumes, which
    # Cloud Run offers for instances with a public IP
    for run_resource in of_type(declared[level], RUN_SERVICE) + of_type(declared[level], RUN_JOB):
        template = run_resource.inputs["template"]
        template = template.get("template", template)
        assert not any("cloudSqlInstance" in v for v in template.get("volumes", []))
        assert template["vpcAccess"]["egress"] == "PRIVATE_RANGES_ONLY"
    assert sql.inputs["name"] == "appraiser-sql"  # the name the docs and secrets use
    iam_users = {u.inputs["name"] for u in of_type(declared[level], "User")}
    assert iam_users == {f"{a}@appraiser-test.iam" for a in spec.IAM_DATABASE_USERS}


@pytest.mark.parametrize("level", LEVELS)
def test_the_connection_budget_is_under_80_percent_of_max_connections(
    declared: dict[str, list[Declared]], level: str
) -> None:
    """Every process at its pool's limit, every service at its max instances (a service-level
    cap shared by the revisions with traffic) plus one instance of a tagged candidate revision
    (no traffic, outside that cap; section 8's rollout), every job running at once and the
    pipeline twice (the schedule and an upload): under 80% of max_connections (section 9)."""
    found = declared[level]
    services = {s.inputs["name"]: s for s in of_type(found, RUN_SERVICE)}
    demand: dict[str, int] = {}
    for name, container in containers(found):
        values = env(container)
        if name in services:
            capped = services[name].inputs["scaling"]["maxInstanceCount"]
            per_revision = services[name].inputs["template"].get("scaling", {})
            assert per_revision.get("maxInstanceCount", capped) == capped
            candidate = 0 if name == "mlflow" else 1  # MLflow is not deployed with a candidate
            instances = capped + candidate
        else:
            instances = 2 if name == "appraiser-pipeline" else 1  # a job: one task
        if container.get("name") == "collector":
            continue
        if container["commands"] == ["mlflow"]:
            args = container["args"]
            workers = int(args[args.index("--workers") + 1])
            per_process = int(values["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"]) + int(
                values["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"]
            )
            engines = 2  # MLflow's tracking store and model registry each keep a pool
            demand[name] = int(instances) * workers * engines * per_process
        else:
            per_process = int(values["APPRAISER_POOL_SIZE"]) + int(values["APPRAISER_MAX_OVERFLOW"])
            demand[name] = int(instances) * per_process
    (sql,) = of_type(found, "DatabaseInstance")
    flags = {f["name"]: f["value"] for f in sql.inputs["settings"]["databaseFlags"]}
    limit = int(flags["max_connections"])
    assert {"mlflow", "appraiser-shop", "appraiser-pipeline", "appraiser-retrain"} <= set(demand)
    assert sum(demand.values()) < 0.8 * limit, (level, demand, limit)


# --- what runs in the containers -----------------------------------------------------------------


def app_settings() -> set[str]:
    """The environment variables the app reads (its settings' names)."""
    from appraiser.config import Settings, StoreSettings

    names = set()
    for model in (Settings, StoreSettings):
        prefix = model.model_config.get("env_prefix", "")
        for name, info in model.model_fields.items():
            alias = info.validation_alias
            names.add(alias if isinstance(alias, str) else f"{prefix}{name}".upper())
    return names


def mlflow_settings() -> set[str]:
    import mlflow.environment_variables as variables
    from mlflow.cli import cli

    server = cli.commands["server"]
    return {n for n in dir(variables) if n.startswith("MLFLOW_")} | {
        p.envvar for p in server.params if isinstance(p.envvar, str)
    }


@pytest.mark.parametrize("level", LEVELS)
def test_every_environment_variable_is_a_setting_its_program_reads(
    declared: dict[str, list[Declared]], level: str
) -> None:
    app, mlflow_names = app_settings(), mlflow_settings()
    assert "APPRAISER_POOL_SIZE" in app and "MLFLOW_TRACKING_URI" in app
    seen = 0
    for name, container in containers(declared[level]):
        given = set(env(container))
        reads = mlflow_names if container.get("commands") == ["mlflow"] else app
        if container.get("name") == "collector":
            reads = set()
        assert given <= reads, (name, given - reads)
        seen += len(given)
    assert seen > 20


def _parse(group: Any, argv: list[str]) -> None:
    """Parse `argv` the way the CLI would, down to the command, without running it (Typer 0.29
    ships its own copy of click, so groups are recognised by what they do)."""
    ctx = group.make_context(group.name or "cli", list(argv), resilient_parsing=False)
    while hasattr(ctx.command, "get_command"):
        # the subcommand's name: click 8.3 keeps it in _protected_args (protected_args before)
        ahead = getattr(ctx, "_protected_args", None)
        ahead = [*(ctx.protected_args if ahead is None else ahead), *ctx.args]
        if not ahead:
            break
        name, *rest = ahead
        sub = ctx.command.get_command(ctx, name)
        if sub is None:
            raise click.UsageError(f"no command {name!r}")
        ctx = sub.make_context(name, rest, parent=ctx)


def parse(argv: list[str], env: dict[str, Any]) -> None:
    import typer.main
    from mlflow.cli import cli as mlflow_cli

    from appraiser.cli import app

    program, *args = argv
    if program == "appraiser":
        _parse(typer.main.get_command(app), args)
    elif program == "mlflow":
        with pytest.MonkeyPatch.context() as mp:
            for name, value in env.items():
                if isinstance(value, str):
                    mp.setenv(name, value)
            mp.setenv("MLFLOW_BACKEND_STORE_URI", "postgresql://u@/mlflow")  # from its secret
            _parse(mlflow_cli, args)
    elif argv[:2] == ["python", "-m"]:
        found = importlib.util.find_spec(args[1])
        assert found is not None and found.origin, args[1]
        assert 'if __name__ == "__main__":' in Path(found.origin).read_text()
    else:
        raise AssertionError(f"unknown program {program!r}")


@pytest.mark.parametrize(
    "argv",
    [
        ["appraiser", "pipeline", "run", "--inbx", "/data/inbox"],
        ["appraiser", "pipelines", "run"],
        ["appraiser", "export", "--day", "2026-01-01", "extra"],
        ["mlflow", "server", "--wokers", "2"],
    ],
)
def test_the_parse_check_catches_a_bad_command(argv: list[str]) -> None:
    with pytest.raises(Exception) as caught:  # click's, or Typer's own copy of click's
        parse(argv, {})
    assert getattr(caught.value, "exit_code", None) == 2  # a usage error


@pytest.mark.parametrize("level", LEVELS)
def test_container_commands_parse_with_the_real_cli(
    declared: dict[str, list[Declared]], level: str
) -> None:
    ran = set()
    for name, container in containers(declared[level]):
        if container.get("name") == "collector":
            continue
        argv = [*container["commands"], *container.get("args", [])]
        parse(argv, env(container))
        ran.add(name)
    assert {"appraiser-shop", "mlflow", "appraiser-pipeline", "appraiser-migrate"} <= ran


@pytest.mark.parametrize("level", LEVELS)
def test_the_mlflow_server_runs_its_own_image_and_the_app_the_lean_one(
    declared: dict[str, list[Declared]], level: str
) -> None:
    """The app image has MLflow's client only (no `mlflow server`): the Dockerfile's `mlflow`
    target, deployed as its own image, runs the server."""
    images = {}
    for name, container in containers(declared[level]):
        if container.get("name") != "collector":
            images[name] = container["image"].split("@")[0].rsplit("/", 1)[-1]
    assert images.pop("mlflow") == "appraiser-mlflow"
    assert set(images.values()) == {"appraiser"}, images


@pytest.mark.parametrize("level", LEVELS)
def test_runtime_processes_never_migrate_and_secrets_are_pinned(
    declared: dict[str, list[Declared]], level: str
) -> None:
    for name, container in containers(declared[level]):
        values = env(container)
        if "APPRAISER_MIGRATE" in values:
            expected = "auto" if name == "appraiser-migrate" else "check"
            assert values["APPRAISER_MIGRATE"] == expected, name
        for value in values.values():
            if isinstance(value, dict) and "secretKeyRef" in value:
                assert str(value["secretKeyRef"]["version"]).isdigit(), (name, value)


# --- monitoring ----------------------------------------------------------------------------------


def exported_metrics() -> set[str]:
    """Sample names the app's `GET /metrics` exposes (as Prometheus writes them)."""
    from prometheus_client import REGISTRY

    import appraiser.api.metrics  # noqa: F401  # registers the app's metrics

    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return {n for n in names if n.startswith("appraiser_")}


@pytest.mark.parametrize("level", LEVELS)
def test_alerts_watch_metrics_the_app_exports(
    declared: dict[str, list[Declared]], level: str
) -> None:
    exported = exported_metrics()
    queried = set()
    for policy in of_type(declared[level], "AlertPolicy"):
        for condition in policy.inputs["conditions"]:
            promql = condition.get("conditionPrometheusQueryLanguage")
            if promql:
                queried.update(re.findall(r"\bappraiser_\w+", promql["query"]))
    assert queried and queried <= exported, queried - exported
    # the promotion alert follows the champion's version: the load counter counts every new
    # instance's first load too, so it would fire on each scale-out
    assert "appraiser_model_loads_total" not in queried


# --- the rest of the design ----------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_what_a_region_outage_needs_lives_outside_the_region(
    declared: dict[str, list[Declared]], level: str
) -> None:
    (repository,) = of_type(declared[level], "Repository")
    assert repository.inputs["location"] == "us"
    buckets = {b.name: b.inputs for b in of_type(declared[level], "Bucket")}
    placement = buckets["mlflow-artifacts"]["customPlacementConfig"]["dataLocations"]
    assert len(placement) == 2 and "US-CENTRAL1" in placement


@pytest.mark.parametrize("level", LEVELS)
def test_triggers_reach_the_jobs(declared: dict[str, list[Declared]], level: str) -> None:
    schedules = {
        s.inputs["httpTarget"]["uri"].rsplit("/", 1)[1]: s.inputs["schedule"]
        for s in of_type(declared[level], "cloudscheduler/job:Job")
    }
    assert schedules == {
        "appraiser-pipeline:run": spec.LEVELS[level].pipeline_schedule,
        "appraiser-export:run": spec.LEVELS[level].export_schedule,
    }
    (trigger,) = of_type(declared[level], "Trigger")
    criteria = {c["attribute"]: c["value"] for c in trigger.inputs["matchingCriterias"]}
    assert criteria == {
        "type": "google.cloud.storage.object.v1.finalized",
        "bucket": "appraiser-test-inbox",
    }
    (workflow,) = of_type(declared[level], "Workflow")
    assert "jobs/appraiser-pipeline:run" in workflow.inputs["sourceContents"]


def test_each_level_has_a_stack_file_with_what_the_program_requires() -> None:
    project = yaml.safe_load((REPO / "infra" / "Pulumi.yaml").read_text())
    # services and jobs ignore their image (Cloud Build deploys it): without a refresh first, an
    # update would resend the image in the stack's state and roll production back
    assert project["options"]["refresh"] == "always"
    for level in LEVELS:
        config = yaml.safe_load((REPO / "infra" / f"Pulumi.{level}.yaml").read_text())["config"]
        assert {"gcp:project", "appraiser:image", "appraiser:alertEmail"} <= set(config)
        for image in ("appraiser:image", "appraiser:mlflowImage"):
            assert "@sha256:" in config[image]  # deployed by digest, never by tag
        assert set(config["appraiser:secretVersions"]) == set(spec.SECRETS)


# --- cost ----------------------------------------------------------------------------------------


def design_costs(level: spec.Level) -> tuple[dict[str, float], float]:
    """A level's table in section 10: item -> $ a month, and the production total."""
    heading = {"shop": "### Level 1", "partners": "### Level 2", "platform": "### Level 3"}
    section = DESIGN.split(heading[level.name], 1)[1].split("\n### ", 1)[0]
    rows: dict[str, float] = {}
    for item, figure in re.findall(r"^\| ([^|]+?) \|[^|]*\| ~?\$?([\d,.]+) \|$", section, re.M):
        rows[item] = float(figure.replace(",", ""))
    total = re.search(r"\*\*production\*\* \| \| \*\*~\$([\d,]+)\*\*", section)
    assert total, f"no production total for {level.name}"
    return rows, float(total[1].replace(",", ""))


@pytest.mark.parametrize("level", LEVELS)
def test_the_cost_table_computed_from_the_spec_matches_the_design(level: str) -> None:
    spec_level = spec.LEVELS[level]
    rows, design_total = design_costs(spec_level)
    for line in cost.lines(spec_level):
        matching = [figure for item, figure in rows.items() if item.startswith(line.item)]
        assert len(matching) == 1, (level, line.item, list(rows))
        assert matching[0] == pytest.approx(line.dollars, abs=0.01), (level, line.item)
    assert round(cost.total(spec_level)) == design_total


@pytest.mark.parametrize("level", LEVELS)
def test_billing_and_the_metrics_scrape_follow_the_design(
    declared: dict[str, list[Declared]], level: str
) -> None:
    """The API services keep their CPU (the champion poller and the writer run between
    requests), MLflow scales to zero between polls, and the Prometheus collector's default
    scrape (:8080/metrics) reaches the app's metrics port, which is not the port Cloud Run's
    ingress serves (so the figures are not public)."""
    billing = {s.name: s.instance_billing for s in spec.LEVELS[level].services}
    for service in of_type(declared[level], RUN_SERVICE):
        name = service.inputs["name"]
        app = service.inputs["template"]["containers"][0]
        assert app["resources"]["cpuIdle"] is (not billing.get(name, False)), name
        if name in billing:
            port = app["ports"]["containerPort"]
            assert port == services.APP_PORT != services.METRICS_PORT == 8080
            args = app["args"]
            assert args[args.index("--port") + 1] == str(int(port)) and args.count("--port") == 1
            env = {e["name"]: e.get("value") for e in app["envs"]}
            assert env["APPRAISER_METRICS_PORT"] == "8080"
            collector = service.inputs["template"]["containers"][1]
            assert collector["name"] == "collector" and collector["dependsOns"] == ["appraiser"]


def test_a_first_deploy_goes_in_stages() -> None:
    """foundation: nothing that runs (the secrets have no versions yet); jobs: MLflow and the
    jobs (migrate, a first champion) but no API; full: everything."""
    shop = spec.LEVELS["shop"]
    foundation = mocks.declare(shop, stage="foundation").declared
    assert not [d for d in foundation if d.type.startswith("gcp:cloudrunv2")]
    assert not of_type(foundation, "cloudscheduler/job:Job") and not of_type(foundation, "Trigger")
    assert of_type(foundation, "DatabaseInstance") and of_type(foundation, "Secret")
    jobs = mocks.declare(shop, stage="jobs").declared
    assert {s.inputs["name"] for s in of_type(jobs, RUN_SERVICE)} == {"mlflow"}
    assert {j.inputs["name"] for j in of_type(jobs, RUN_JOB)} == {j.name for j in shop.jobs}
    # nothing starts a pass before the first migration (each would fail its schema check)
    assert not of_type(jobs, "cloudscheduler/job:Job") and not of_type(jobs, "Trigger")
    with pytest.raises(ValueError, match="stage"):
        mocks.declare(shop, stage="everything")


def test_what_holds_data_is_protected_from_destroy() -> None:
    offline = mocks.declare(spec.LEVELS["shop"])
    protected = {r._name for r in offline.built.protected if r._protect}
    assert protected == {
        "appraiser-sql",
        "appraiser",  # the database and the dataset share the name
        "mlflow",
        "inbox",
        "mlflow-artifacts",
        "exports",
        "bq-appraisals",
        "bq-feedback",
    }
    for database in of_type(offline.declared, "sql/database:Database"):
        assert database.inputs["deletionPolicy"] == "ABANDON"
    tables = {t.inputs["tableId"]: t.inputs for t in of_type(offline.declared, "Table")}
    assert "expirationMs" not in tables["feedback"]["timePartitioning"]  # labels never expire
    assert tables["appraisals"]["timePartitioning"]["expirationMs"] > 0


def test_the_offline_run_survives_an_earlier_asyncio_run() -> None:
    """A test before this file that ran asyncio.run() leaves the main thread without an event
    loop, which Pulumi's outputs need (the full suite's 41 errors before mocks.declare made its
    own)."""
    import asyncio

    async def nothing() -> None:
        return None

    asyncio.run(nothing())
    assert of_type(mocks.declare(spec.LEVELS["shop"]).declared, "DatabaseInstance")
