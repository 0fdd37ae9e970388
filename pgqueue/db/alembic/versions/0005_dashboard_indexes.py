"""The dashboard's index: FAILED and CANCELLED tasks in id order (tasks_problems_idx).

Revision ID: 0005
Revises: 0002
Create Date: 2026-12-20
"""

from alembic import context, op

from pgqueue.db.migrations import run_revision_sql

revision = "0005"
# Revisions 0003 (history) and 0004 come from branches merged beside this one: at the merge,
# this points at the last of them.
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The change, in the .sql file of this name beside it; the same index is in sql/schema.sql.
    run_revision_sql(__file__)


def downgrade() -> None:
    schema = context.config.attributes.get("schema", "pgqueue")
    op.execute(f'DROP INDEX IF EXISTS "{schema}".tasks_problems_idx')
