"""Add tasks.trace_context: the OpenTelemetry context current at .delay(), continued by the run.

Revision ID: 0006
Revises: 0002 (0003 to 0005 are other branches' numbers: once they are merged, this
    revision follows 0005)
Create Date: 2026-12-20
"""

from pgqueue.db.migrations import run_revision_sql

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The change, in the .sql file of this name beside it; the same change is made in the
    # live file pgqueue/db/sql/features.sql.
    run_revision_sql(__file__)


def downgrade() -> None:
    # Nothing to take back: a NULL column that older code ignores (it selects by name).
    pass
