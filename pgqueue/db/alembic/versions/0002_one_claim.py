"""Drop the function claim_tasks: the claim has one text, the statement of sql/queries.sql.

Workers ran that statement (prepared) already; only tests called the function, a copy of
its body that could drift from it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-14
"""

from pgqueue.db.migrations import run_revision_sql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The change, in the .sql file of this name beside it (written for the schema "pgqueue",
    # like the live files); the same change is made in the live files of pgqueue/db/sql/.
    run_revision_sql(__file__)


def downgrade() -> None:
    # Nothing to put back: no code of revision 0001's time called the function either.
    pass
