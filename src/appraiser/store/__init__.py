"""The store: batches, accepted stones, rejected rows, appraisals and feedback, in one database.

A SQLite file under APPRAISER_HOME by default, any SQLAlchemy URL (PostgreSQL in production) when
APPRAISER_DATABASE_URL is set. In parts:

- `database`: the URL, one pooled engine per URL, sessions;
- `tables`: the ORM classes, which must match the Alembic migrations in `appraiser/migrations`;
- `migrate`: applying (or checking) those migrations, `ready` before any use;
- `appraisals`: public ids, the row a served price becomes, reading one back;
- `writer`: the background writer of served prices and its bulk insert.

Job queries live with the jobs (appraiser.jobs). The names below are the ones the rest of the
code uses as `store.X`.
"""

from __future__ import annotations

from appraiser.store.appraisals import (
    appraisal_row,
    get_appraisal,
    new_uid,
    new_uids,
    record_appraisal,
    uid_age,
)
from appraiser.store.database import database_url, dispose, driver_url, engine, session
from appraiser.store.migrate import (
    MIGRATION_LOCK_KEY,
    MIGRATIONS,
    StoreOutdated,
    alembic_config,
    check_schema,
    ready,
    revisions,
    upgrade,
)
from appraiser.store.tables import (
    APPRAISALS,
    BATCH_STATUSES,
    JOB_ACTIVE,
    STONE_COLUMNS,
    TABLES,
    ApiKey,
    Appraisal,
    AuditEvent,
    Base,
    Batch,
    Evaluation,
    Feedback,
    Job,
    ModelVersionRecord,
    Promotion,
    RejectedRow,
    StoredDiamond,
)
from appraiser.store.writer import AppraisalWriter, bulk_insert

__all__ = [
    "APPRAISALS",
    "BATCH_STATUSES",
    "JOB_ACTIVE",
    "MIGRATIONS",
    "MIGRATION_LOCK_KEY",
    "STONE_COLUMNS",
    "TABLES",
    "ApiKey",
    "Appraisal",
    "AppraisalWriter",
    "AuditEvent",
    "Base",
    "Batch",
    "Evaluation",
    "Feedback",
    "Job",
    "ModelVersionRecord",
    "Promotion",
    "RejectedRow",
    "StoreOutdated",
    "StoredDiamond",
    "alembic_config",
    "appraisal_row",
    "bulk_insert",
    "check_schema",
    "database_url",
    "dispose",
    "driver_url",
    "engine",
    "get_appraisal",
    "new_uid",
    "new_uids",
    "ready",
    "record_appraisal",
    "revisions",
    "session",
    "uid_age",
    "upgrade",
]
