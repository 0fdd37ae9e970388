"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from pgqueue.db.migrations import run_revision_sql

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade() -> None:
    # The change, in the .sql file of this name beside it (written for the schema "pgqueue",
    # like the live files); make the same change in the live files of pgqueue/db/sql/.
    ${upgrades if upgrades else "run_revision_sql(__file__)"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
