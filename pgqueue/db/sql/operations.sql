-- pgqueue operations: documented, stable views for monitoring, in psql or from the CLI.
-- `pgqueue status`, `pgqueue workers` and `pgqueue tasks` read these views and keep no
-- copy of their queries; docs/operations.md shows each one as a psql one-liner.
-- Columns are only ever added to these views, never renamed or removed.

-- Tasks per queue and status (only the pairs that have tasks).
CREATE OR REPLACE VIEW pgqueue.status_counts AS
SELECT t.queue, t.status, count(*) AS tasks
FROM pgqueue.tasks AS t
GROUP BY t.queue, t.status;

COMMENT ON VIEW pgqueue.status_counts IS
    'Tasks per queue and status (only the pairs that have tasks).';

-- Every queue at a glance: counts per status, how long the oldest due task has waited,
-- what finished in the last minute, and whether the queue is paused.
CREATE OR REPLACE VIEW pgqueue.queue_stats AS
WITH counts AS (
    SELECT
        t.queue,
        count(*) FILTER (WHERE t.status = 'PENDING') AS pending,
        count(*) FILTER (WHERE t.status = 'RUNNING') AS running,
        count(*) FILTER (WHERE t.status = 'RETRYING') AS retrying,
        count(*) FILTER (WHERE t.status = 'COMPLETED') AS completed,
        count(*) FILTER (WHERE t.status = 'FAILED') AS failed,
        count(*) FILTER (WHERE t.status = 'CANCELLED') AS cancelled,
        -- As text: the migrations run in one transaction, which may not name the value
        -- WAITING that it added to the type (revision 0008).
        count(*) FILTER (WHERE t.status::text = 'WAITING') AS waiting,
        count(*) FILTER (WHERE t.status IN ('PENDING', 'RETRYING') AND t.run_at <= now()) AS due,
        count(*) FILTER (WHERE t.status IN ('PENDING', 'RETRYING') AND t.run_at > now())
            AS scheduled,
        min(t.run_at) FILTER (WHERE t.status IN ('PENDING', 'RETRYING') AND t.run_at <= now())
            AS oldest_due_run_at,
        count(*) FILTER (WHERE t.status = 'COMPLETED'
                           AND t.finished_at >= now() - interval '1 minute')
            AS completed_last_minute,
        count(*) FILTER (WHERE t.status = 'FAILED'
                           AND t.finished_at >= now() - interval '1 minute')
            AS failed_last_minute,
        count(*) AS total
    FROM pgqueue.tasks AS t
    GROUP BY t.queue
)
SELECT
    coalesce(c.queue, p.queue) AS queue,
    p.queue IS NOT NULL AS paused,
    coalesce(c.pending, 0) AS pending,
    coalesce(c.running, 0) AS running,
    coalesce(c.retrying, 0) AS retrying,
    coalesce(c.completed, 0) AS completed,
    coalesce(c.failed, 0) AS failed,
    coalesce(c.cancelled, 0) AS cancelled,
    coalesce(c.due, 0) AS due,
    coalesce(c.scheduled, 0) AS scheduled,
    coalesce(c.total, 0) AS total,
    EXTRACT(epoch FROM now() - c.oldest_due_run_at)::double precision AS oldest_pending_seconds,
    coalesce(c.completed_last_minute, 0) AS completed_last_minute,
    coalesce(c.failed_last_minute, 0) AS failed_last_minute,
    -- Added by revision 0011, hence last: tasks waiting for their parents (workflows).
    coalesce(c.waiting, 0) AS waiting
FROM counts AS c
FULL JOIN pgqueue.paused_queues AS p ON p.queue = c.queue;

COMMENT ON VIEW pgqueue.queue_stats IS
    'One row per queue (with tasks, or paused): tasks per status, due (runnable now) and '
    'scheduled (later) counts, oldest_pending_seconds (how long the oldest due task has '
    'waited since its run_at), completed and failed in the last minute, paused.';

-- Tasks that could run now but no worker has started: a backlog, a paused queue, or no
-- worker listening on the queue. limits.sql defines it again, the same rows read through
-- the two partial indexes (rows without keys, keyed rows), once the key columns exist.
CREATE OR REPLACE VIEW pgqueue.due_tasks AS
SELECT
    t.id, t.name, t.queue, t.priority, t.status, t.attempts, t.max_retries,
    t.run_at, t.created_at,
    EXTRACT(epoch FROM now() - t.run_at)::double precision AS waiting_seconds,
    EXISTS (SELECT 1 FROM pgqueue.paused_queues AS p WHERE p.queue = t.queue) AS paused
FROM pgqueue.tasks AS t
WHERE t.status IN ('PENDING', 'RETRYING') AND t.run_at <= now();

COMMENT ON VIEW pgqueue.due_tasks IS
    'Tasks due (PENDING or RETRYING, run_at reached) that no worker has started, with how '
    'long each has waited and whether its queue is paused.';

-- Failures with their last error: FAILED tasks (retries spent) and RETRYING ones that
-- failed and will run again at next_run_at. Cleanup bounds how far back this goes.
CREATE OR REPLACE VIEW pgqueue.recent_failures AS
SELECT
    t.id, t.name, t.queue, t.status, t.attempts, t.max_retries,
    coalesce(t.finished_at, t.started_at) AS failed_at,
    CASE WHEN t.status = 'RETRYING' THEN t.run_at END AS next_run_at,
    split_part(t.error, E'\n', 1) AS last_error,
    t.error,
    t.worker_id
FROM pgqueue.tasks AS t
WHERE t.status = 'FAILED' OR (t.status = 'RETRYING' AND t.error IS NOT NULL);

COMMENT ON VIEW pgqueue.recent_failures IS
    'FAILED tasks and RETRYING tasks that failed: last_error is the first line of the '
    'error, error the whole text with its traceback; next_run_at is the next attempt.';

-- Workers that heartbeated within three of their leases: what `pgqueue workers` lists.
CREATE OR REPLACE VIEW pgqueue.live_workers AS
SELECT
    w.id, w.host, w.pid, w.queues, w.concurrency, w.tasks_running, w.version,
    w.started_at, w.last_heartbeat,
    EXTRACT(epoch FROM now() - w.last_heartbeat)::double precision AS heartbeat_age_seconds,
    EXTRACT(epoch FROM now() - w.started_at)::double precision AS uptime_seconds
FROM pgqueue.workers AS w
WHERE w.last_heartbeat >= now() - make_interval(secs => 3 * w.lease_seconds);

COMMENT ON VIEW pgqueue.live_workers IS
    'Registered workers that heartbeated within three of their leases: host, pid, queues, '
    'concurrency, tasks running at the last heartbeat, version, start and heartbeat times.';
