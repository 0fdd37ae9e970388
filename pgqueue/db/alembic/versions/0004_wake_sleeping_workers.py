"""Wake-ups only for queues with a sleeping worker: the table sleeping_workers, and an
insert trigger that notifies only when a worker of the task's queue sleeps on LISTEN.

NOTIFY takes a database-wide lock at commit, so notifying commits cannot share a WAL
flush: busy producers paid about 30 % of their throughput for wake-ups nobody needed.

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-20
"""

from alembic import context, op

from pgqueue.db.migrations import run_revision_sql
from pgqueue.db.queries import DEFAULT_SCHEMA, for_schema

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None

# Revision 0001's trigger function: one NOTIFY per queue and statement, always.
DOWNGRADE_SQL = """
CREATE OR REPLACE FUNCTION pgqueue.notify_new_tasks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgqueue.tasks', queue)
    FROM (SELECT DISTINCT queue FROM new_tasks) AS queues;
    RETURN NULL;
END;
$$;
DROP TABLE pgqueue.sleeping_workers;
"""


def upgrade() -> None:
    # The change, in the .sql file of this name beside it (written for the schema "pgqueue",
    # like the live files); the same change is made in the live files of pgqueue/db/sql/.
    run_revision_sql(__file__)


def downgrade() -> None:
    schema = context.config.attributes.get("schema", DEFAULT_SCHEMA)
    driver_connection = op.get_bind().connection.driver_connection
    assert driver_connection is not None
    driver_connection.execute(for_schema(DOWNGRADE_SQL, schema).encode())
