"""The initial store: batches, diamonds, rejected rows, appraisals, feedback.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the five tables and the indexes the foreign keys are looked up by."""
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("file_name", sa.String(2000), nullable=False),
        sa.Column("file_hash", sa.String(64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rows_read", sa.Integer(), nullable=False),
        sa.Column("rows_accepted", sa.Integer(), nullable=False),
        sa.Column("rows_rejected", sa.Integer(), nullable=False),
        sa.UniqueConstraint("file_hash"),
    )
    op.create_table(
        "diamonds",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("batch_id", sa.Integer(), sa.ForeignKey("batches.id"), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("carat", sa.Double(), nullable=False),
        sa.Column("cut", sa.String(20), nullable=False),
        sa.Column("color", sa.String(20), nullable=False),
        sa.Column("clarity", sa.String(20), nullable=False),
        sa.Column("depth", sa.Double(), nullable=False),
        sa.Column("table", sa.Double(), nullable=False),
        sa.Column("x", sa.Double(), nullable=False),
        sa.Column("y", sa.Double(), nullable=False),
        sa.Column("z", sa.Double(), nullable=False),
        sa.Column("price", sa.Double(), nullable=False),
    )
    op.create_index("ix_diamonds_batch_id", "diamonds", ["batch_id"])
    op.create_table(
        "rejected_rows",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("batch_id", sa.Integer(), sa.ForeignKey("batches.id"), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=False),
    )
    op.create_index("ix_rejected_rows_batch_id", "rejected_rows", ["batch_id"])
    op.create_table(
        "appraisals",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("price", sa.Double(), nullable=False),
        sa.Column("price_low", sa.Double(), nullable=True),
        sa.Column("price_high", sa.Double(), nullable=True),
        sa.Column("model_version", sa.String(100), nullable=True),
        sa.Column("latency_ms", sa.Double(), nullable=True),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("appraisal_id", sa.Integer(), sa.ForeignKey("appraisals.id"), nullable=False),
        sa.Column("price", sa.Double(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_feedback_appraisal_id", "feedback", ["appraisal_id"])


def downgrade() -> None:
    """Drop everything (the store's data with it)."""
    op.drop_index("ix_feedback_appraisal_id", table_name="feedback")
    op.drop_table("feedback")
    op.drop_table("appraisals")
    op.drop_index("ix_rejected_rows_batch_id", table_name="rejected_rows")
    op.drop_table("rejected_rows")
    op.drop_index("ix_diamonds_batch_id", table_name="diamonds")
    op.drop_table("diamonds")
    op.drop_table("batches")
