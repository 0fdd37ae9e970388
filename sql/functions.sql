-- pgqueue functions: the task lifecycle, in the database. Workers and the TaskManager
-- call these; Python never re-implements what they decide (ordering, back-off, fencing).
-- Every write by a worker is fenced by (id, lease_token, status = 'RUNNING'): a worker
-- whose lease was taken over is refused and changes nothing.

-- name: retry_backoff
-- Delay before retry number p_attempts: 1 s, 2 s, 4 s, ... capped at one hour, +/-25% jitter.
CREATE OR REPLACE FUNCTION pgqueue.retry_backoff(p_attempts integer) RETURNS interval
LANGUAGE sql VOLATILE AS $$
    SELECT make_interval(secs => least(power(2, greatest(p_attempts, 1) - 1), 3600)
                                 * (0.75 + random() * 0.5));
$$;

-- name: claim_tasks
-- Atomically take up to p_limit due tasks from p_queues, highest priority first, then
-- oldest run_at, then id; mark them RUNNING under a fresh lease and fencing token.
-- One index scan per queue (LATERAL), so each scan reads the partial index in order.
CREATE OR REPLACE FUNCTION pgqueue.claim_tasks(
    p_queues text[], p_limit integer, p_worker_id text, p_lease_seconds double precision
) RETURNS SETOF pgqueue.tasks
LANGUAGE sql AS $$
    WITH candidates AS (
        SELECT due.id, due.priority, due.run_at
        FROM unnest(p_queues) AS wanted(queue)
        CROSS JOIN LATERAL (
            SELECT t.id, t.priority, t.run_at
            FROM pgqueue.tasks AS t
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
        UPDATE pgqueue.tasks AS t
        SET status = 'RUNNING',
            attempts = t.attempts + 1,
            started_at = now(),
            worker_id = p_worker_id,
            lease_expires_at = now() + make_interval(secs => p_lease_seconds),
            lease_token = t.lease_token + 1
        FROM candidates
        WHERE t.id = candidates.id
        RETURNING t.*
    )
    SELECT * FROM claimed ORDER BY priority DESC, run_at, id;
$$;

-- name: complete_tasks
-- Record the results of finished runs, many per call; returns the ids it accepted.
CREATE OR REPLACE FUNCTION pgqueue.complete_tasks(
    p_ids uuid[], p_tokens integer[], p_results jsonb[]
) RETURNS SETOF uuid
LANGUAGE sql AS $$
    UPDATE pgqueue.tasks AS t
    SET status = 'COMPLETED', result = done.result, finished_at = now(), lease_expires_at = NULL
    FROM unnest(p_ids, p_tokens, p_results) AS done(id, token, result)
    WHERE t.id = done.id AND t.lease_token = done.token AND t.status = 'RUNNING'
    RETURNING t.id;
$$;

-- name: fail_task
-- Record a failed run: RETRYING after retry_backoff while attempts <= max_retries (and
-- p_retryable), else FAILED. Returns the new status and run_at; no row when refused.
CREATE OR REPLACE FUNCTION pgqueue.fail_task(
    p_id uuid, p_token integer, p_error text, p_retryable boolean DEFAULT true
) RETURNS TABLE (new_status pgqueue.task_status, new_run_at timestamptz)
LANGUAGE sql AS $$
    WITH decision AS (
        SELECT t.id, (p_retryable AND t.attempts <= t.max_retries) AS will_retry
        FROM pgqueue.tasks AS t
        WHERE t.id = p_id AND t.lease_token = p_token AND t.status = 'RUNNING'
    )
    UPDATE pgqueue.tasks AS t
    SET status = CASE WHEN d.will_retry THEN 'RETRYING' ELSE 'FAILED' END::pgqueue.task_status,
        run_at = CASE WHEN d.will_retry THEN now() + pgqueue.retry_backoff(t.attempts)
                      ELSE t.run_at END,
        finished_at = CASE WHEN d.will_retry THEN NULL ELSE now() END,
        error = p_error,
        lease_expires_at = NULL
    FROM decision AS d
    WHERE t.id = d.id
    RETURNING t.status, t.run_at;
$$;

-- name: reschedule_task
-- Put a running task back to run after p_delay_seconds without recording a failure
-- (Retry, Snooze). With p_refund_attempt the run does not count as an attempt.
CREATE OR REPLACE FUNCTION pgqueue.reschedule_task(
    p_id uuid, p_token integer, p_delay_seconds double precision, p_refund_attempt boolean
) RETURNS timestamptz
LANGUAGE sql AS $$
    UPDATE pgqueue.tasks AS t
    SET status = 'RETRYING',
        run_at = now() + make_interval(secs => p_delay_seconds),
        attempts = CASE WHEN p_refund_attempt THEN greatest(t.attempts - 1, 0) ELSE t.attempts END,
        lease_expires_at = NULL
    WHERE t.id = p_id AND t.lease_token = p_token AND t.status = 'RUNNING'
    RETURNING t.run_at;
$$;

-- name: extend_leases
-- Heartbeat: renew the leases a worker still holds; returns the ids it still holds.
CREATE OR REPLACE FUNCTION pgqueue.extend_leases(
    p_ids uuid[], p_tokens integer[], p_lease_seconds double precision
) RETURNS SETOF uuid
LANGUAGE sql AS $$
    UPDATE pgqueue.tasks AS t
    SET lease_expires_at = now() + make_interval(secs => p_lease_seconds)
    FROM unnest(p_ids, p_tokens) AS held(id, token)
    WHERE t.id = held.id AND t.lease_token = held.token AND t.status = 'RUNNING'
    RETURNING t.id;
$$;

-- name: release_tasks
-- Graceful shutdown: give running tasks back, PENDING, their attempt not counted.
CREATE OR REPLACE FUNCTION pgqueue.release_tasks(p_ids uuid[], p_tokens integer[])
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    released integer;
    queues text[];
BEGIN
    WITH freed AS (
        UPDATE pgqueue.tasks AS t
        SET status = 'PENDING', attempts = greatest(t.attempts - 1, 0), started_at = NULL,
            worker_id = NULL, lease_expires_at = NULL
        FROM unnest(p_ids, p_tokens) AS held(id, token)
        WHERE t.id = held.id AND t.lease_token = held.token AND t.status = 'RUNNING'
        RETURNING t.queue
    )
    SELECT count(*), array_agg(DISTINCT queue) INTO released, queues FROM freed;
    PERFORM pg_notify('pgqueue.tasks', q) FROM unnest(queues) AS q;
    RETURN released;
END;
$$;

-- name: rescue_expired_leases
-- Tasks whose worker vanished (lease expired): the lost run counts as an attempt, so a
-- task that kills its worker ends FAILED ("worker lost") instead of looping forever.
CREATE OR REPLACE FUNCTION pgqueue.rescue_expired_leases() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    rescued integer;
    queues text[];
BEGIN
    WITH expired AS (
        SELECT t.id FROM pgqueue.tasks AS t
        WHERE t.status = 'RUNNING' AND t.lease_expires_at < now()
        FOR UPDATE SKIP LOCKED
    ), moved AS (
        UPDATE pgqueue.tasks AS t
        SET status = CASE WHEN t.attempts > t.max_retries THEN 'FAILED'
                          ELSE 'RETRYING' END::pgqueue.task_status,
            finished_at = CASE WHEN t.attempts > t.max_retries THEN now() END,
            run_at = CASE WHEN t.attempts > t.max_retries THEN t.run_at ELSE now() END,
            error = format('worker lost: worker %s stopped renewing its lease (expired at %s)',
                           t.worker_id, t.lease_expires_at),
            lease_expires_at = NULL
        FROM expired
        WHERE t.id = expired.id
        RETURNING t.queue, t.status
    )
    SELECT count(*), array_agg(DISTINCT queue) FILTER (WHERE status = 'RETRYING')
    INTO rescued, queues FROM moved;
    PERFORM pg_notify('pgqueue.tasks', q) FROM unnest(queues) AS q;
    RETURN rescued;
END;
$$;

-- name: cancel_task
-- Cancel a task that has not finished; True if it is now CANCELLED. A RUNNING task's
-- worker loses its lease at the next heartbeat and its outcome is refused.
CREATE OR REPLACE FUNCTION pgqueue.cancel_task(p_id uuid) RETURNS boolean
LANGUAGE sql AS $$
    WITH cancelled AS (
        UPDATE pgqueue.tasks
        SET status = 'CANCELLED', finished_at = now(), lease_expires_at = NULL
        WHERE id = p_id AND status IN ('PENDING', 'RETRYING', 'RUNNING')
        RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM cancelled);
$$;

-- name: retry_task
-- Run a FAILED or CANCELLED task once more, now; its attempts keep counting.
CREATE OR REPLACE FUNCTION pgqueue.retry_task(p_id uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    task_queue text;
BEGIN
    UPDATE pgqueue.tasks
    SET status = 'PENDING', run_at = now(), started_at = NULL, finished_at = NULL,
        result = NULL, lease_expires_at = NULL
    WHERE id = p_id AND status IN ('FAILED', 'CANCELLED')
    RETURNING queue INTO task_queue;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_notify('pgqueue.tasks', task_queue);
    RETURN true;
END;
$$;

-- name: cleanup_tasks
-- Delete up to p_batch_size finished tasks (COMPLETED, FAILED, CANCELLED) older than
-- p_older_than; callers loop until it returns less than p_batch_size, so no
-- transaction holds many row locks for long.
CREATE OR REPLACE FUNCTION pgqueue.cleanup_tasks(p_older_than interval, p_batch_size integer)
RETURNS integer
LANGUAGE sql AS $$
    WITH doomed AS (
        SELECT id FROM pgqueue.tasks
        WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED')
          AND finished_at < now() - p_older_than
        ORDER BY finished_at
        LIMIT p_batch_size
        FOR UPDATE SKIP LOCKED
    ), deleted AS (
        DELETE FROM pgqueue.tasks AS t USING doomed WHERE t.id = doomed.id RETURNING 1
    )
    SELECT count(*)::integer FROM deleted;
$$;
