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


def upgrade() -> None:
    schema = context.config.attributes.get("schema", "pgqueue")
    run_sql_file(op.get_bind(), "schema.sql", schema)
    run_sql_file(op.get_bind(), "functions.sql", schema)


def downgrade() -> None:
    schema = context.config.attributes.get("schema", "pgqueue")
    op.execute(f'DROP TABLE IF EXISTS "{schema}".tasks CASCADE')
    op.execute(f'DROP TYPE IF EXISTS "{schema}".task_status CASCADE')
