-- pgqueue queries: every statement Python sends, one named block each.
-- Parameters are bound (%(name)s); names of queues and tasks never reach SQL as text.

-- name: insert_task
-- Queue one task; run_at is computed with the database clock.
INSERT INTO pgqueue.tasks (id, name, queue, priority, kwargs, max_retries, run_at)
VALUES (%(id)s, %(name)s, %(queue)s, %(priority)s, %(kwargs)s::jsonb, %(max_retries)s,
        COALESCE(%(schedule_at)s::timestamptz, now() + %(delay)s * interval '1 second'));

-- name: run_at_for
-- The run_at a bulk insert gives all its rows (database clock).
SELECT COALESCE(%(schedule_at)s::timestamptz, now() + %(delay)s * interval '1 second');

-- name: copy_tasks
-- Bulk queueing: COPY is an order of magnitude faster than multi-row INSERT.
COPY pgqueue.tasks (id, name, queue, priority, kwargs, max_retries, run_at) FROM STDIN;

-- name: get_task
-- One task by id.
SELECT * FROM pgqueue.tasks WHERE id = %(id)s;

-- name: claim_tasks
-- Take up to %(limit)s due tasks for a worker (see the claim_tasks function).
SELECT * FROM pgqueue.claim_tasks(%(queues)s, %(limit)s, %(worker_id)s, %(lease_seconds)s);

-- name: seconds_until_next_task
-- How long until the earliest runnable task of these queues is due (negative: overdue).
SELECT EXTRACT(epoch FROM min(run_at) - now())::double precision
FROM pgqueue.tasks
WHERE queue = ANY(%(queues)s) AND status IN ('PENDING', 'RETRYING');

-- name: complete_tasks
-- Record many results in one statement; returns the ids accepted.
SELECT pgqueue.complete_tasks(%(ids)s, %(tokens)s, %(results)s::jsonb[]);

-- name: fail_task
-- Record a failed run; no row when the worker no longer holds the task.
SELECT * FROM pgqueue.fail_task(%(id)s, %(token)s, %(error)s, %(retryable)s);

-- name: reschedule_task
-- Put a running task back for later without recording a failure.
SELECT pgqueue.reschedule_task(%(id)s, %(token)s, %(delay)s, %(refund_attempt)s);

-- name: extend_leases
-- Heartbeat; returns the ids still held.
SELECT pgqueue.extend_leases(%(ids)s, %(tokens)s, %(lease_seconds)s);

-- name: release_tasks
-- Give running tasks back at shutdown.
SELECT pgqueue.release_tasks(%(ids)s, %(tokens)s);

-- name: rescue_expired_leases
-- Put back the tasks of vanished workers.
SELECT pgqueue.rescue_expired_leases();

-- name: cancel_task
-- Cancel one task; true if it is now CANCELLED.
SELECT pgqueue.cancel_task(%(id)s);

-- name: retry_task
-- Run a FAILED or CANCELLED task once more.
SELECT pgqueue.retry_task(%(id)s);

-- name: cleanup_tasks
-- Delete one batch of old finished tasks.
SELECT pgqueue.cleanup_tasks(%(older_than)s * interval '1 second', %(batch_size)s);

-- name: try_maintenance_lock
-- One maintenance runner at a time across all workers (session-level advisory lock).
SELECT pg_try_advisory_lock(hashtext('pgqueue.maintenance'));

-- name: release_maintenance_lock
-- Let another worker run maintenance.
SELECT pg_advisory_unlock(hashtext('pgqueue.maintenance'));

-- name: listen_tasks
-- Wake-ups: the insert trigger, retry and rescue notify this channel with the queue name.
LISTEN "pgqueue.tasks";
