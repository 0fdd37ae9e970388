"""The dashboard's index: FAILED and CANCELLED tasks in id order (tasks_problems_idx).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-20
"""

from pgqueue.db.migrations import run_downgrade_sql, run_revision_sql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The change, in the .sql file of this name beside it; the same index is in sql/schema.sql.
    run_revision_sql(__file__)


def downgrade() -> None:
    run_downgrade_sql("DROP INDEX IF EXISTS pgqueue.tasks_problems_idx;")
