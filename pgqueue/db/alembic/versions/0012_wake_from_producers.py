"""Producers wake sleeping workers themselves: pgqueue's inserts look for a sleeping worker
in the statement that writes their rows (marked producer_wakes), the insert trigger becomes a
row trigger for rows written by other SQL only, and the worker's announcement settles on a
try-lock of the task table instead of a per-queue advisory lock that every producer took.

The statement trigger, its advisory lock and its look cost busy producers 10-16 % of their
throughput while no worker slept (docs/performance.md, section 16).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from pgqueue.db.migrations import run_downgrade_sql, run_revision_sql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# Revision 0004's statement trigger and its function, as they were.
DOWNGRADE_SQL = """
DROP TRIGGER tasks_notify_insert ON pgqueue.tasks;
DROP FUNCTION pgqueue.notify_new_tasks();
DROP FUNCTION pgqueue.lock_out_writers();
ALTER TABLE pgqueue.tasks DROP COLUMN producer_wakes;
CREATE FUNCTION pgqueue.notify_new_tasks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtext('pgqueue.wake'), hashtext(queue))
    FROM (SELECT DISTINCT queue FROM new_tasks) AS queues;
    -- A statement of its own, so its snapshot is taken after the locks.
    PERFORM pg_notify('pgqueue.tasks', queue)
    FROM (SELECT DISTINCT queue FROM new_tasks) AS queues
    WHERE current_setting('transaction_isolation') <> 'read committed'
       OR EXISTS (SELECT FROM pgqueue.sleeping_workers AS s WHERE s.queue = queues.queue);
    RETURN NULL;
END;
$$;
CREATE TRIGGER tasks_notify_insert
    AFTER INSERT ON pgqueue.tasks
    REFERENCING NEW TABLE AS new_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.notify_new_tasks();
"""


def upgrade() -> None:
    # The change, in the .sql file of this name beside it (written for the schema "pgqueue",
    # like the live files); the same change is made in the live files of pgqueue/db/sql/.
    run_revision_sql(__file__)


def downgrade() -> None:
    run_downgrade_sql(DOWNGRADE_SQL)
