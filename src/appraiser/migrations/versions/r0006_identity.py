"""A person behind every key, names that cannot look alike, and an append-only audit trail.

- `api_keys.name_key`: the name's canonical form (case folded, runs of spaces and '.', '_', '@',
  '-' as one space, none at the ends), unique. A key made before whose name looks like another's
  (a later `Shop` beside `shop`) or like the system's (`gate `, `api job ...`,
  `bootstrap-admin.`) is revoked here, with an audit row: such names let one holder pass for
  another in the audit trail.
- `api_keys.person`: who holds the key. A key made by another key belongs to that key's person
  (the review found admins making themselves a second key); a key made by the bootstrap key or
  the command line, which is how keys were handed to people, is its own person.
- `audit_events.person`: the person behind each action (empty for earlier rows and the system).
- `audit_events` refuses UPDATE and DELETE (triggers, on both backends; TRUNCATE too on
  PostgreSQL), and on PostgreSQL no role but the table's owner keeps UPDATE, DELETE or TRUNCATE
  on it (infra/database-roles.sql grants the app role the rest through default privileges).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MIGRATION_ACTOR = "system:migration 0006"
# copies of audit.canonical and auth's refused names, as they were when this ran: a migration's
# effect must not change when the code does
_SEPARATORS = re.compile(r"[\s._@-]+")
_RESERVED = {"bootstrap admin", "anonymous", "gate", "pipeline", "unknown", "api", "cli", "system"}
_PREFIXES = ("api job", "cli", "system")

APPEND_ONLY = "audit_events is append-only: its rows are never updated nor deleted"
SQLITE_TRIGGERS = {
    "audit_events_no_update": "UPDATE",
    "audit_events_no_delete": "DELETE",
}
PG_FUNCTION = "audit_events_append_only"


def _canonical(name: str) -> str:
    return " ".join(part for part in _SEPARATORS.split(name.casefold()) if part)


def _system_like(key: str) -> bool:
    return key in _RESERVED or any(key == p or key.startswith(p + " ") for p in _PREFIXES)


def upgrade() -> None:
    """Add and fill api_keys.name_key/person, revoking look-alikes; audit_events.person; guard
    audit_events against change."""
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("name_key", sa.String(120), nullable=True))
        batch.add_column(sa.Column("person", sa.String(100), nullable=True))
    _fill_keys()
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("name_key", existing_type=sa.String(120), nullable=False)
        batch.alter_column("person", existing_type=sa.String(100), nullable=False)
        batch.create_index("ix_api_keys_name_key", ["name_key"], unique=True)
        batch.create_index("ix_api_keys_person", ["person"])
    op.add_column("audit_events", sa.Column("person", sa.String(100), nullable=True))
    op.create_index("ix_audit_events_person", "audit_events", ["person"])
    _guard_audit_trail()


def _fill_keys() -> None:
    conn = op.get_bind()
    keys = sa.table(
        "api_keys",
        sa.column("id", sa.Integer),
        sa.column("name", sa.String),
        sa.column("role", sa.String),
        sa.column("created_by", sa.String),
        sa.column("revoked_at", sa.DateTime(timezone=True)),
        sa.column("revoked_by", sa.String),
        sa.column("name_key", sa.String),
        sa.column("person", sa.String),
    )
    audit = sa.table(
        "audit_events",
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("actor", sa.String),
        sa.column("action", sa.String),
        sa.column("details", sa.Text),
    )
    now = datetime.now(UTC)
    if conn.dialect.name == "sqlite":  # the store keeps UTC naive there (appraiser.clock)
        now = now.replace(tzinfo=None)
    taken: set[str] = set()
    persons: dict[str, str] = {}
    rows = conn.execute(
        sa.select(
            keys.c.id, keys.c.name, keys.c.role, keys.c.created_by, keys.c.revoked_at
        ).order_by(keys.c.id)
    ).all()
    for key_id, name, role, maker, revoked in rows:
        key = _canonical(name)
        person = persons.get(maker) or (key if key else f"key {key_id}")
        persons[name] = person
        look_alike = not key or key in taken or _system_like(key)
        values: dict[str, object] = {"person": person[:100]}
        if look_alike:
            values["name_key"] = f"{key} #{key_id}"[:120]  # kept, distinct, never matched
            if revoked is None:
                values.update(revoked_at=now, revoked_by=MIGRATION_ACTOR)
                why = "its name looks like another key's or the system's"
                conn.execute(
                    sa.insert(audit).values(
                        created_at=now,
                        actor=MIGRATION_ACTOR,
                        action="key_revoked",
                        details=json.dumps({"name": name, "role": role, "reason": why}),
                    )
                )
        else:
            values["name_key"] = key
            taken.add(key)
        conn.execute(sa.update(keys).where(keys.c.id == key_id).values(**values))


def _guard_audit_trail() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        for name, operation in SQLITE_TRIGGERS.items():
            op.execute(
                f"CREATE TRIGGER {name} BEFORE {operation} ON audit_events "
                f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
            )
        return
    if conn.dialect.name != "postgresql":
        return
    op.execute(
        f"CREATE FUNCTION {PG_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN RAISE EXCEPTION '{APPEND_ONLY} (% refused)', TG_OP "
        "USING ERRCODE = 'insufficient_privilege'; END $$"
    )
    op.execute(
        "CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events "
        f"FOR EACH ROW EXECUTE FUNCTION {PG_FUNCTION}()"
    )
    op.execute(
        "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {PG_FUNCTION}()"
    )
    # every grantee but the owner (the app role through default privileges, PUBLIC if anyone
    # granted it) loses UPDATE, DELETE and TRUNCATE; INSERT and SELECT stay
    op.execute(
        """
        DO $$
        DECLARE grantee_name text;
        BEGIN
          FOR grantee_name IN
            SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                 ELSE quote_ident(r.rolname) END
            FROM pg_class c
            CROSS JOIN LATERAL aclexplode(c.relacl) a
            LEFT JOIN pg_roles r ON r.oid = a.grantee
            WHERE c.oid = 'audit_events'::regclass
              AND a.grantee <> c.relowner
              AND a.privilege_type IN ('UPDATE', 'DELETE', 'TRUNCATE')
          LOOP
            EXECUTE 'REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM ' || grantee_name;
          END LOOP;
        END $$
        """
    )


def downgrade() -> None:
    """Drop the guard (privileges revoked stay revoked: grant them again by hand), the persons
    and the canonical names (revoked look-alikes stay revoked)."""
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    elif conn.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events")
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_change ON audit_events")
        op.execute(f"DROP FUNCTION IF EXISTS {PG_FUNCTION}()")
    op.drop_index("ix_audit_events_person", table_name="audit_events")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("person")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index("ix_api_keys_person")
        batch.drop_index("ix_api_keys_name_key")
        batch.drop_column("person")
        batch.drop_column("name_key")
