"""responses.ttft_ms: time to the first chunk of a streaming call

A nullable column without a default: PostgreSQL adds it to the catalogue only (no table
rewrite, no scan); the ACCESS EXCLUSIVE lock is held for milliseconds whatever the table's
size. Existing rows read NULL (their first-chunk time was not recorded).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("responses", sa.Column("ttft_ms", sa.Double(), nullable=True))


def downgrade() -> None:
    op.drop_column("responses", "ttft_ms")
