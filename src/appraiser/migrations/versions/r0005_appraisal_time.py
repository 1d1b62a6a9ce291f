"""An index on appraisals.created_at: a day's export and the retention rule select by time.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_appraisals_created_at", "appraisals", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_appraisals_created_at", table_name="appraisals")
