"""The task table, its status type, indexes, wake-up trigger and lifecycle functions.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from alembic import context, op

from pgqueue.db.migrations import run_sql_file

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
