"""What the API needs: public appraisal ids, their warnings, and background jobs.

Appraisals get a `uid`: a random id the serving process makes itself, so a response can carry it
before the row is written (writes are batched in the background) and several processes never
collide. Jobs (retrains started through the API) live in the store so that every API process can
report on them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add appraisals.uid (filled in for existing rows) and appraisals.warnings; create jobs."""
    with op.batch_alter_table("appraisals") as batch:
        batch.add_column(sa.Column("uid", sa.String(32), nullable=True))
        batch.add_column(sa.Column("warnings", sa.Text(), nullable=True))
    appraisals = sa.table("appraisals", sa.column("id", sa.Integer), sa.column("uid", sa.String))
    connection = op.get_bind()
    for (row_id,) in connection.execute(sa.select(appraisals.c.id)).all():
        connection.execute(
            appraisals.update().where(appraisals.c.id == row_id).values(uid=uuid.uuid4().hex)
        )
    with op.batch_alter_table("appraisals") as batch:
        batch.alter_column("uid", existing_type=sa.String(32), nullable=False)
        batch.create_index("ix_appraisals_uid", ["uid"], unique=True)
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )


def downgrade() -> None:
    """Drop jobs and the two appraisal columns."""
    op.drop_table("jobs")
    with op.batch_alter_table("appraisals") as batch:
        batch.drop_index("ix_appraisals_uid")
        batch.drop_column("warnings")
        batch.drop_column("uid")
