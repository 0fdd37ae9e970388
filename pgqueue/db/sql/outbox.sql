-- pgqueue outbox and RabbitMQ task records. With the RabbitMQ broker, a task queued
-- inside the caller's transaction (connection=) goes into the outbox; a relay in every
-- RabbitMQ worker publishes it after commit and deletes it after the broker's confirm.
-- The task table keeps the records of RabbitMQ tasks (status tracking), through the
-- functions below plus the lifecycle functions of functions.sql.

CREATE TABLE pgqueue.outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id     uuid NOT NULL,
    queue       text NOT NULL,
    priority    smallint NOT NULL,
    message     text NOT NULL,      -- the message body (JSON), as the broker publishes it
    run_at      timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Relays wake up at commit (NOTIFY is delivered only then; a rollback sends nothing).
CREATE FUNCTION pgqueue.notify_outbox() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgqueue.outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify_insert
    AFTER INSERT ON pgqueue.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.notify_outbox();

-- name: broker_start_tasks
-- RabbitMQ worker: mark delivered messages RUNNING under a fresh fencing token; returns
-- the tasks to run. p_attempts are the runs each message says were made before. A
-- message is stale (not returned, acked and dropped) when its record has moved on:
-- finished, cancelled, or a later attempt already recorded (a retry published before
-- the original's ack was lost). A RUNNING record is taken over (redelivery after its
-- worker died), and that lost run counts as an attempt, as with the database broker.
-- Records missing (queued with status tracking off) are created first. Events: "started",
-- after "rescued" for a record taken over.
CREATE OR REPLACE FUNCTION pgqueue.broker_start_tasks(
    p_ids uuid[], p_names text[], p_queues text[], p_priorities integer[], p_kwargs jsonb[],
    p_max_retries integer[], p_run_ats timestamptz[], p_attempts integer[], p_worker_id text
) RETURNS TABLE (task_id uuid, task_attempts integer, task_lease_token integer)
LANGUAGE sql AS $$
    INSERT INTO pgqueue.tasks (id, name, queue, priority, kwargs, max_retries, run_at, attempts)
    SELECT m.id, m.name, m.queue, m.priority::smallint, m.kwargs, m.max_retries, m.run_at,
           m.attempts
    FROM unnest(p_ids, p_names, p_queues, p_priorities, p_kwargs, p_max_retries, p_run_ats,
                p_attempts) AS m(id, name, queue, priority, kwargs, max_retries, run_at, attempts)
    ON CONFLICT (id) DO NOTHING;

    WITH held AS (
        SELECT t.id, m.attempts AS delivered_attempts, t.status = 'RUNNING' AS taken_over,
               t.attempts, t.worker_id
        FROM unnest(p_ids, p_attempts) AS m(id, attempts)
        JOIN pgqueue.tasks AS t ON t.id = m.id
        WHERE (t.status IN ('PENDING', 'RETRYING') AND t.attempts <= m.attempts)
           OR (t.status = 'RUNNING' AND t.attempts <= m.attempts + 1)
        FOR UPDATE OF t
    ), started AS (
        UPDATE pgqueue.tasks AS t
        SET status = 'RUNNING',
            attempts = greatest(t.attempts, held.delivered_attempts) + 1,
            started_at = now(),
            finished_at = NULL,
            worker_id = p_worker_id,
            lease_token = t.lease_token + 1,
            lease_expires_at = NULL   -- RabbitMQ redelivers; the database rescue must not touch it
        FROM held
        WHERE t.id = held.id
        RETURNING t.id, t.attempts, t.lease_token, held.taken_over,
                  held.attempts AS lost_attempt, held.worker_id AS lost_worker_id
    ), recorded AS (
        -- "started"; after "rescued" (the run of the worker that lost it) for a take-over.
        INSERT INTO pgqueue.task_events (task_id, event, attempt, worker_id, error, details)
        SELECT s.id, e.event, e.attempt, e.worker_id, e.error, e.details
        FROM started AS s
        CROSS JOIN LATERAL (VALUES
            (1, 'rescued', s.lost_attempt, s.lost_worker_id,
             format('worker lost: redelivered by the broker after worker %s stopped',
                    s.lost_worker_id),
             '{"redelivered": true}'::jsonb),
            (2, 'started', s.attempts, p_worker_id, NULL, NULL)
        ) AS e(step, event, attempt, worker_id, error, details)
        WHERE (e.step = 2 OR s.taken_over) AND pgqueue.history_enabled()
        ORDER BY s.id, e.step
    )
    SELECT id, attempts, lease_token FROM started;
$$;
