"""Drop the function claim_tasks: the claim has one text, the statement of sql/queries.sql.

Workers ran that statement (prepared) already; only tests called the function, a copy of
its body that could drift from it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-14
"""

from alembic import context, op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SIGNATURE = "claim_tasks(text[], integer, text, double precision, integer)"


def upgrade() -> None:
    schema = context.config.attributes.get("schema", "pgqueue")
    op.execute(f"DROP FUNCTION IF EXISTS {schema}.{SIGNATURE}")


def downgrade() -> None:
    """The function as revision 0001 made it (frozen here: history, not a live copy)."""
    schema = context.config.attributes.get("schema", "pgqueue")
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION {schema}.claim_tasks(
            p_queues text[], p_limit integer, p_worker_id text, p_lease_seconds double precision,
            p_start_now integer DEFAULT NULL
        ) RETURNS SETOF {schema}.tasks
        LANGUAGE sql AS $$
            WITH candidates AS (
                SELECT due.id, due.priority, due.run_at
                FROM (
                    SELECT requested.queue FROM unnest(p_queues) AS requested(queue)
                    WHERE requested.queue <> ALL (ARRAY(SELECT queue FROM {schema}.paused_queues))
                ) AS wanted
                CROSS JOIN LATERAL (
                    SELECT t.id, t.priority, t.run_at
                    FROM {schema}.tasks AS t
                    WHERE t.queue = wanted.queue
                      AND t.status IN ('PENDING', 'RETRYING')
                      AND t.run_at <= now()
                    ORDER BY t.priority DESC, t.run_at, t.id
                    LIMIT p_limit
                    FOR UPDATE SKIP LOCKED
                ) AS due
                ORDER BY due.priority DESC, due.run_at, due.id
                LIMIT p_limit
            ), claimed AS (
                UPDATE {schema}.tasks AS t
                SET status = 'RUNNING',
                    attempts = t.attempts + 1,
                    started_at = CASE WHEN p_start_now IS NULL
                                        OR t.id = ANY (ARRAY(
                                            SELECT c.id FROM candidates AS c
                                            ORDER BY c.priority DESC, c.run_at, c.id
                                            LIMIT p_start_now))
                                      THEN now() END,
                    worker_id = p_worker_id,
                    lease_expires_at = now() + make_interval(secs => p_lease_seconds),
                    lease_token = t.lease_token + 1
                WHERE t.id = ANY (ARRAY(SELECT candidates.id FROM candidates))
                RETURNING t.*
            )
            SELECT * FROM claimed ORDER BY priority DESC, run_at, id;
        $$;
        """
    )
