-- The web dashboard's reads (pgqueue/ops/dashboard.py). Each one stays fast with millions
-- of tasks: it reads through an index (the runnable, lease, finished and problem partial
-- indexes, the primary key in id order) or a bounded window, never the whole table.
-- Bound parameters only; a NULL filter means "any".

-- name: dashboard_active_counts
-- Unfinished tasks per queue: their statuses, due and scheduled, how long the oldest due
-- one has waited. Four branches, each matching the predicate of one partial index (runnable
-- tasks without keys, keyed ones, running tasks, tasks waiting for their parents), so none
-- reads a finished row.
SELECT
    a.queue,
    sum(a.pending)::bigint AS pending,
    sum(a.retrying)::bigint AS retrying,
    sum(a.running)::bigint AS running,
    sum(a.waiting)::bigint AS waiting,
    sum(a.due)::bigint AS due,
    sum(a.scheduled)::bigint AS scheduled,
    EXTRACT(epoch FROM now() - min(a.oldest_due))::double precision AS oldest_due_seconds
FROM (
    SELECT t.queue,
           count(*) FILTER (WHERE t.status = 'PENDING') AS pending,
           count(*) FILTER (WHERE t.status = 'RETRYING') AS retrying,
           0 AS running,
           0 AS waiting,
           count(*) FILTER (WHERE t.run_at <= now()) AS due,
           count(*) FILTER (WHERE t.run_at > now()) AS scheduled,
           min(t.run_at) FILTER (WHERE t.run_at <= now()) AS oldest_due
    FROM pgqueue.tasks AS t
    WHERE t.status IN ('PENDING', 'RETRYING') AND t.limit_keys IS NULL AND t.fair_key IS NULL
    GROUP BY t.queue
    UNION ALL
    -- Keyed rows (limits, fair share: sql/limits.sql) have a partial index of their own.
    SELECT t.queue,
           count(*) FILTER (WHERE t.status = 'PENDING'),
           count(*) FILTER (WHERE t.status = 'RETRYING'),
           0,
           0,
           count(*) FILTER (WHERE t.run_at <= now()),
           count(*) FILTER (WHERE t.run_at > now()),
           min(t.run_at) FILTER (WHERE t.run_at <= now())
    FROM pgqueue.tasks AS t
    WHERE t.status IN ('PENDING', 'RETRYING')
      AND (t.limit_keys IS NOT NULL OR t.fair_key IS NOT NULL)
    GROUP BY t.queue
    UNION ALL
    SELECT t.queue, 0, 0, count(*), 0, 0, 0, NULL
    FROM pgqueue.tasks AS t
    WHERE t.status = 'RUNNING'
    GROUP BY t.queue
    UNION ALL
    SELECT t.queue, 0, 0, 0, count(*), 0, 0, NULL
    FROM pgqueue.tasks AS t
    WHERE t.status = 'WAITING'
    GROUP BY t.queue
) AS a
GROUP BY a.queue;

-- name: dashboard_problem_counts
-- FAILED and CANCELLED tasks per queue, all of them: an index-only scan of the problem
-- index (it holds only those, with their queue).
SELECT t.queue,
       count(*) FILTER (WHERE t.status = 'FAILED') AS failed,
       count(*) FILTER (WHERE t.status = 'CANCELLED') AS cancelled
FROM pgqueue.tasks AS t
WHERE t.status IN ('FAILED', 'CANCELLED')
GROUP BY t.queue;

-- name: dashboard_recent_activity
-- What finished since %(since)s, per queue and bucket of %(bucket_seconds)s: completed,
-- failed, and the waits between run_at and start (their sum in seconds and how many). One
-- scan of the finished index serves the overview's queue table and its chart (ops/activity.py
-- keeps the buckets that closed, so a page view reads only the last minute or two).
SELECT t.queue,
       date_bin(%(bucket_seconds)s * interval '1 second', t.finished_at,
                timestamptz '2000-01-01 00:00:00+00') AS bucket,
       count(*) FILTER (WHERE t.status = 'COMPLETED') AS completed,
       count(*) FILTER (WHERE t.status = 'FAILED') AS failed,
       -- date_part is double precision: cheaper per row than EXTRACT's numeric
       coalesce(sum(date_part('epoch', t.started_at - t.run_at)), 0)::double precision
           AS wait_seconds,
       count(t.started_at) AS waits
FROM pgqueue.tasks AS t
WHERE t.status IN ('COMPLETED', 'FAILED', 'CANCELLED')
  AND t.finished_at >= %(since)s::timestamptz
GROUP BY 1, 2;

-- name: dashboard_known_queues
-- Queues that are paused or that a live worker serves (they may have no task right now).
SELECT p.queue FROM pgqueue.paused_queues AS p
UNION
SELECT unnest(w.queues) FROM pgqueue.live_workers AS w;

-- name: dashboard_paused_queues
-- The paused queues, with when they were paused.
SELECT queue, paused_at FROM pgqueue.paused_queues;

-- name: dashboard_table_estimate
-- The planner's estimate of the number of tasks (pg_class.reltuples, kept by ANALYZE).
SELECT greatest(c.reltuples, 0)::bigint AS estimate, now() AS db_now
FROM pg_class AS c
WHERE c.oid = 'pgqueue.tasks'::regclass;

-- name: dashboard_tasks_page
-- One page of tasks, newest first, after the keyset cursor %(before)s (an id). The status
-- filter picks an index (problem, runnable, lease, or the primary key); the other filters
-- are applied to a window of at most %(scan)s tasks of that index, so a page never reads
-- more than that: `scanned` and `last_scanned_id` tell whether the window ran out and where
-- to continue.
WITH window_tasks AS (
    SELECT t.id, t.queue, t.name, t.kwargs
    FROM pgqueue.tasks AS t
    WHERE (%(status)s::pgqueue.task_status IS NULL OR t.status = %(status)s::pgqueue.task_status)
      AND (%(before)s::uuid IS NULL OR t.id < %(before)s::uuid)
    ORDER BY t.id DESC
    LIMIT %(scan)s
), bounds AS (
    SELECT count(*) AS scanned,
           (SELECT w.id FROM window_tasks AS w ORDER BY w.id LIMIT 1) AS last_scanned_id
    FROM window_tasks
), matches AS (
    SELECT w.id
    FROM window_tasks AS w
    WHERE (%(queue)s::text IS NULL OR w.queue = %(queue)s::text)
      AND (%(name)s::text IS NULL OR w.name = %(name)s::text)
      AND (%(contains)s::jsonb IS NULL OR w.kwargs @> %(contains)s::jsonb)
    ORDER BY w.id DESC
    LIMIT %(limit)s
)
SELECT t.*, b.scanned, b.last_scanned_id
FROM bounds AS b
LEFT JOIN matches AS m ON true
LEFT JOIN pgqueue.tasks AS t ON t.id = m.id
ORDER BY t.id DESC;

-- name: dashboard_tasks_matching
-- The tasks every filter matches (counted, capped at %(cap)s, or estimated by EXPLAIN).
SELECT 1
FROM pgqueue.tasks AS t
WHERE (%(status)s::pgqueue.task_status IS NULL OR t.status = %(status)s::pgqueue.task_status)
  AND (%(queue)s::text IS NULL OR t.queue = %(queue)s::text)
  AND (%(name)s::text IS NULL OR t.name = %(name)s::text)
  AND (%(contains)s::jsonb IS NULL OR t.kwargs @> %(contains)s::jsonb)
LIMIT %(cap)s;

-- name: dashboard_retry_matching
-- Retry (pgqueue.retry_task, one by one) every task of a retryable status, FAILED or
-- CANCELLED, that the filters match; the ids retried. The choice is made first, so the
-- function runs only on the tasks chosen.
WITH chosen AS MATERIALIZED (
    SELECT t.id
    FROM pgqueue.tasks AS t
    WHERE t.status IN ('FAILED', 'CANCELLED')
      AND t.status = %(status)s::pgqueue.task_status
      AND (%(queue)s::text IS NULL OR t.queue = %(queue)s::text)
      AND (%(name)s::text IS NULL OR t.name = %(name)s::text)
      AND (%(contains)s::jsonb IS NULL OR t.kwargs @> %(contains)s::jsonb)
)
SELECT c.id FROM chosen AS c WHERE pgqueue.retry_task(c.id);

-- name: dashboard_failure_groups
-- The latest %(scan)s FAILED tasks grouped by the shape of their error: the exception type
-- and the first line of its message with numbers, quoted text and hex ids blanked.
WITH latest AS (
    SELECT t.id, t.name, t.queue, t.finished_at, split_part(t.error, E'\n', 1) AS first_line
    FROM pgqueue.tasks AS t
    WHERE t.status = 'FAILED'
    ORDER BY t.id DESC
    LIMIT %(scan)s
), shaped AS (
    SELECT l.*,
           regexp_replace(
               regexp_replace(
                   regexp_replace(l.first_line, '''[^'']*''|"[^"]*"', '''…''', 'g'),
                   '\m(0x)?[0-9a-f]{6,}(-[0-9a-f]{4,})*\M', '#', 'gi'),
               '[0-9]+([.][0-9]+)?', 'N', 'g') AS shape
    FROM latest AS l
)
SELECT s.shape,
       count(*) AS tasks,
       max(s.finished_at) AS last_failed_at,
       min(s.finished_at) AS first_failed_at,
       (array_agg(s.id ORDER BY s.id DESC))[1] AS example_id,
       (array_agg(s.first_line ORDER BY s.id DESC))[1] AS example_error,
       array_agg(DISTINCT s.name) AS names,
       array_agg(DISTINCT s.queue) AS queues
FROM shaped AS s
GROUP BY s.shape
ORDER BY count(*) DESC, max(s.finished_at) DESC
LIMIT %(limit)s;

-- name: dashboard_running_tasks
-- What every worker runs now (the lease index holds only RUNNING tasks).
SELECT t.id, t.name, t.queue, t.worker_id, t.started_at, t.attempts
FROM pgqueue.tasks AS t
WHERE t.status = 'RUNNING'
ORDER BY t.started_at NULLS LAST, t.id
LIMIT %(limit)s;

-- name: dashboard_fingerprint
-- What changes when tasks are queued, start, finish or are retried, and when workers or
-- paused queues change: the live updates compare it between two ticks. Index probes only
-- (the newest id, the latest finish, the running tasks); the statistics collector's row
-- counters of the small tables (flushed within seconds) catch the rest.
SELECT (SELECT t.id FROM pgqueue.tasks AS t ORDER BY t.id DESC LIMIT 1) AS newest_id,
       (SELECT max(t.finished_at) FROM pgqueue.tasks AS t
        WHERE t.status IN ('COMPLETED', 'FAILED', 'CANCELLED')) AS last_finished_at,
       (SELECT count(*) FROM pgqueue.tasks AS t WHERE t.status = 'RUNNING') AS running,
       (SELECT count(*) FROM pgqueue.paused_queues) AS paused,
       (SELECT coalesce(sum(s.n_tup_ins + s.n_tup_upd + s.n_tup_del), 0)::bigint
        FROM pg_stat_user_tables AS s
        WHERE s.relid IN ('pgqueue.tasks'::regclass, 'pgqueue.workers'::regclass))
           AS changes;

-- name: dashboard_count_matching
-- How many tasks every filter matches, counting at most %(cap)s.
SELECT count(*)
FROM (
    SELECT 1
    FROM pgqueue.tasks AS t
    WHERE (%(status)s::pgqueue.task_status IS NULL
           OR t.status = %(status)s::pgqueue.task_status)
      AND (%(queue)s::text IS NULL OR t.queue = %(queue)s::text)
      AND (%(name)s::text IS NULL OR t.name = %(name)s::text)
      AND (%(contains)s::jsonb IS NULL OR t.kwargs @> %(contains)s::jsonb)
    LIMIT %(cap)s
) AS matching;
