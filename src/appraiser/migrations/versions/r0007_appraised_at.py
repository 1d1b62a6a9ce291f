"""The day each labelled stone was priced, and the market level estimated from those days.

- `diamonds.appraised_at`: the day the file said the price was given (nullable: a row without it,
  and every row stored before, was priced the day its batch arrived).
- `market_levels`: one row per month of the market level (appraiser.market), rewritten whole by
  each refresh.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("diamonds") as batch:
        batch.add_column(sa.Column("appraised_at", sa.Date(), nullable=True))
    op.create_table(
        "market_levels",
        sa.Column("month", sa.Date(), primary_key=True),
        sa.Column("level", sa.Double(), nullable=False),
        sa.Column("low", sa.Double(), nullable=False),
        sa.Column("high", sa.Double(), nullable=False),
        sa.Column("observed", sa.Double(), nullable=True),
        sa.Column("stones", sa.Integer(), nullable=False),
        sa.Column("excluded", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(40), nullable=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("details", sa.Text(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("market_levels")
    with op.batch_alter_table("diamonds") as batch:
        batch.drop_column("appraised_at")
