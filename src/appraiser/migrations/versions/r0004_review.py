"""Who may teach the model: API keys with roles, reviewed expert prices, an audit trail.

- `feedback`: status (pending, approved, rejected), who sent it, the stone's key, a screening
  flag, who reviewed it and when. Prices sent before review existed stay pending: nobody vouched
  for them, so they teach nothing until an admin approves them.
- `api_keys`: the SHA-256 of each key (never the key), its role, name, who made and revoked it.
- `audit_events`: every admin and expert action.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Review columns on feedback; create api_keys and audit_events."""
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(
            sa.Column("status", sa.String(20), nullable=False, server_default="pending")
        )
        batch.add_column(sa.Column("actor", sa.String(200), nullable=True))
        batch.add_column(sa.Column("stone_key", sa.String(16), nullable=True))
        batch.add_column(sa.Column("flag", sa.Text(), nullable=True))
        batch.add_column(sa.Column("reviewed_by", sa.String(200), nullable=True))
        batch.add_column(sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("review_note", sa.Text(), nullable=True))
        batch.create_index("ix_feedback_status", ["status"])
        batch.create_unique_constraint("uq_feedback_appraisal_actor", ["appraisal_id", "actor"])
        batch.create_unique_constraint("uq_feedback_actor_stone", ["actor", "stone_key"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(200), nullable=True),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
    )
    op.create_index("ix_audit_events_created_at", "audit_events", ["created_at"])
    op.create_index("ix_audit_events_actor", "audit_events", ["actor"])
    op.create_index("ix_audit_events_action", "audit_events", ["action"])


def downgrade() -> None:
    """Drop the audit trail, the keys and the review columns (every price becomes plain again)."""
    op.drop_table("audit_events")
    op.drop_table("api_keys")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_constraint("uq_feedback_actor_stone", type_="unique")
        batch.drop_constraint("uq_feedback_appraisal_actor", type_="unique")
        batch.drop_index("ix_feedback_status")
        for column in (
            "review_note",
            "reviewed_at",
            "reviewed_by",
            "flag",
            "stone_key",
            "actor",
            "status",
        ):
            batch.drop_column(column)
