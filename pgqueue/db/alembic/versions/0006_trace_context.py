"""Add tasks.trace_context: the OpenTelemetry context current at .delay(), continued by the run.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-20
"""

from pgqueue.db.migrations import run_downgrade_sql, run_revision_sql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The change, in the .sql file of this name beside it; the same change is made in the
    # live file pgqueue/db/sql/features.sql.
    run_revision_sql(__file__)


def downgrade() -> None:
    run_downgrade_sql("ALTER TABLE pgqueue.tasks DROP COLUMN IF EXISTS trace_context;")
