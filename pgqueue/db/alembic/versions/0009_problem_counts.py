"""The problem index carries each task's queue: the dashboard counts FAILED and CANCELLED
tasks per queue from the index alone (an index-only scan), not from their heap rows.

Revision ID: 0009
Revises: 0008
Create Date: 2027-02-10
"""

from pgqueue.db.migrations import run_downgrade_sql, run_revision_sql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The change, in the .sql file of this name beside it; the same index is in sql/schema.sql.
    run_revision_sql(__file__)


def downgrade() -> None:
    run_downgrade_sql(
        "DROP INDEX IF EXISTS pgqueue.tasks_problems_idx;\n"
        "CREATE INDEX tasks_problems_idx ON pgqueue.tasks (status, id)\n"
        "    WHERE status IN ('FAILED', 'CANCELLED');"
    )
