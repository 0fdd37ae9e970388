"""The task table, its status type, indexes, wake-up trigger and lifecycle functions.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from alembic import context, op
from pgqueue.migrations import run_sql_file

revision = "0001"
down_revision = None
branch_labels = ("pgqueue",)
depends_on = None


# Until the first release, revision 0001 builds the whole schema from these files, in
# this order; after it, every change is a new revision.
SQL_FILES = ("schema.sql", "functions.sql", "operations.sql", "outbox.sql", "features.sql")


def upgrade() -> None:
    schema = context.config.attributes.get("schema", "pgqueue")
    for filename in SQL_FILES:
        run_sql_file(op.get_bind(), filename, schema)


def downgrade() -> None:
    schema = context.config.attributes.get("schema", "pgqueue")
    op.execute(f'DROP TABLE IF EXISTS "{schema}".tasks CASCADE')
    op.execute(f'DROP TYPE IF EXISTS "{schema}".task_status CASCADE')
