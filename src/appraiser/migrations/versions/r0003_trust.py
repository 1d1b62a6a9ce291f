"""What a trustworthy learning loop keeps: lineage, promotion history, evaluations, held batches.

- `model_versions`: for each registered version, the keys of the stones it trained on, the store
  batches they came from and the decision made about it;
- `promotions`: every move of the champion alias in order, so a rollback walks it back;
- `evaluations`: a model measured on stones it never saw (the sealed set over time, each new batch);
- `batches.status`: a batch whose prices the champion finds far from everything known is held.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add batches.status/status_reason; create model_versions, promotions and evaluations."""
    with op.batch_alter_table("batches") as batch:
        batch.add_column(
            sa.Column("status", sa.String(20), nullable=False, server_default="accepted")
        )
        batch.add_column(sa.Column("status_reason", sa.Text(), nullable=True))
        batch.create_index("ix_batches_status", ["status"])
    op.create_table(
        "model_versions",
        sa.Column("version", sa.String(40), primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("source", sa.String(2000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stones", sa.Integer(), nullable=False),
        sa.Column("batches", sa.Text(), nullable=False),
        sa.Column("max_batch_id", sa.Integer(), nullable=True),
        sa.Column("max_feedback_id", sa.Integer(), nullable=True),
        sa.Column("training_keys", sa.LargeBinary(), nullable=False),
        sa.Column("decision", sa.Text(), nullable=True),
    )
    op.create_table(
        "promotions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("version", sa.String(40), nullable=False),
        sa.Column("previous", sa.String(40), nullable=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("model_version", sa.String(40), nullable=False),
        sa.Column("batch_id", sa.BigInteger(), nullable=True),
        sa.Column("stones", sa.Integer(), nullable=False),
        sa.Column("mape", sa.Double(), nullable=True),
        sa.Column("coverage", sa.Double(), nullable=True),
        sa.Column("bias", sa.Double(), nullable=True),
        sa.Column("details", sa.Text(), nullable=True),
    )
    op.create_index("ix_evaluations_kind", "evaluations", ["kind"])


def downgrade() -> None:
    """Drop the three tables and the batch status."""
    op.drop_index("ix_evaluations_kind", table_name="evaluations")
    op.drop_table("evaluations")
    op.drop_table("promotions")
    op.drop_table("model_versions")
    with op.batch_alter_table("batches") as batch:
        batch.drop_index("ix_batches_status")
        batch.drop_column("status_reason")
        batch.drop_column("status")
