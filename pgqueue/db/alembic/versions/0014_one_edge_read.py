"""Workflows: release_children reads the edges of the parents it settles once, not twice.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

from pathlib import Path

from pgqueue.db.migrations import frozen_function, run_downgrade_sql, run_revision_sql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The change, in the .sql file of this name beside it; the same function is in
    # sql/functions.sql.
    run_revision_sql(__file__)


def downgrade() -> None:
    """Put back release_children as revision 0013 made it."""
    chain_steps = (Path(__file__).parent / "0013_chain_steps.sql").read_text(encoding="utf-8")
    run_downgrade_sql(frozen_function(chain_steps, "release_children"))
