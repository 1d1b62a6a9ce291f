"""The monthly cost of a level, computed from its spec (spec.py) with section 10's list prices:
the lines a resource's size decides (services, their Prometheus sidecars, Cloud SQL, secrets)
are arithmetic here; the usage lines are the spec's estimates. `python -m infra.cost` prints the
tables the design shows; tests/test_infra.py checks the design's figures against them."""

from __future__ import annotations

from dataclasses import dataclass

from infra.spec import LEVELS, MONTH_SECONDS, SECRETS, Database, Level, Service

MONTH_HOURS = 730
# list prices, us-central1, USD (design section 10)
RUN_VCPU_SECOND = 0.000018  # instance-based billing
RUN_GIB_SECOND = 0.000002
SQL_VCPU_HOUR = 0.0413
SQL_GB_HOUR = 0.0070
SQL_SSD_GB_MONTH = 0.17  # doubled with HA
SQL_BACKUP_GB_MONTH = 0.08
SECRET_VERSION_MONTH = 0.06

# the Managed Service for Prometheus collector beside each API instance (its own CPU and memory,
# billed with the instance): Google's sample gives it half a vCPU and 512 MiB
SIDECAR_CPU = 0.5
SIDECAR_MEMORY_GIB = 0.5


@dataclass(frozen=True)
class Line:
    item: str
    dollars: float


def run_rate(cpu: float, memory_gib: float) -> float:
    """Dollars per instance-second of Cloud Run at this size (instance-based billing)."""
    return cpu * RUN_VCPU_SECOND + memory_gib * RUN_GIB_SECOND


def service_seconds(service: Service) -> float:
    """Instance-seconds a month: the minimum, kept all month, plus the busy extra (platform)."""
    return service.min_instances * MONTH_SECONDS + service.busy_instance_seconds


def database_month(db: Database) -> float:
    ha = 2 if db.high_availability else 1
    hourly = db.hourly_price or (db.vcpus * SQL_VCPU_HOUR + db.memory_gb * SQL_GB_HOUR)
    compute = hourly * MONTH_HOURS * ha
    return compute + db.disk_gb * SQL_SSD_GB_MONTH * ha + db.backups_gb * SQL_BACKUP_GB_MONTH


def lines(level: Level) -> list[Line]:
    out: list[Line] = []
    for service in level.services:
        rate = run_rate(service.cpu, service.memory_gib)
        out.append(Line(f"`{service.name}`", service_seconds(service) * rate))
    sidecar_rate = run_rate(SIDECAR_CPU, SIDECAR_MEMORY_GIB)
    sidecars = sum(service_seconds(s) for s in level.services) * sidecar_rate
    out.append(Line("Prometheus sidecars", sidecars))
    out.append(Line("Cloud SQL", database_month(level.database)))
    out.append(Line("Secret Manager", len(SECRETS) * SECRET_VERSION_MONTH))
    out.extend(Line(item, dollars) for item, dollars in level.usage.items())
    return out


def total(level: Level) -> float:
    return sum(line.dollars for line in lines(level))


if __name__ == "__main__":
    for name, level in LEVELS.items():
        print(f"{name}: {level.summary}")
        for line in lines(level):
            print(f"  {line.item:<45} {line.dollars:>9.2f}")
        print(f"  {'total':<45} {total(level):>9.2f}")
