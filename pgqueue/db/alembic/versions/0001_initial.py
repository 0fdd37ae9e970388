"""The task table, its status type, indexes, wake-up trigger and lifecycle functions.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from alembic import context, op

from pgqueue.db.migrations import run_revision_sql

revision = "0001"
down_revision = None
branch_labels = ("pgqueue",)
depends_on = None


def upgrade() -> None:
    # Frozen: 0001_initial.sql beside this file is a copy of the live files of sql/ as they
    # were when this revision was frozen. Editing those files never changes what this
    # revision builds; every schema change is a new revision.
    run_revision_sql(__file__)


def downgrade() -> None:
    """Drop every pgqueue object but alembic's own version table."""
    schema = context.config.attributes.get("schema", "pgqueue")
    op.execute(
        f"""
        DO $drop$
        DECLARE
            item record;
        BEGIN
            FOR item IN
                SELECT format('%I.%I', schemaname, tablename) AS name FROM pg_tables
                WHERE schemaname = '{schema}' AND tablename <> 'alembic_version'
            LOOP
                EXECUTE 'DROP TABLE IF EXISTS ' || item.name || ' CASCADE';
            END LOOP;
            FOR item IN
                SELECT p.oid::regprocedure AS signature FROM pg_proc AS p
                JOIN pg_namespace AS n ON n.oid = p.pronamespace WHERE n.nspname = '{schema}'
            LOOP
                EXECUTE 'DROP FUNCTION IF EXISTS ' || item.signature || ' CASCADE';
            END LOOP;
            EXECUTE format('DROP TYPE IF EXISTS %I.task_status CASCADE', '{schema}');
        END
        $drop$;
        """
    )
