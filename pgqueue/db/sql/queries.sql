-- pgqueue queries: every statement Python sends, one named block each.
-- Parameters are bound (%(name)s); names of queues and tasks never reach SQL as text.

-- name: insert_task
-- Queue one task; run_at is computed with the database clock. The same statement wakes the
-- workers of its queue if one sleeps (see sql/wakeups.sql: its snapshot is
-- taken after the table lock of the insert); the row says so, so the insert trigger does
-- not look again.
INSERT INTO pgqueue.tasks
    (id, name, queue, priority, kwargs, max_retries, run_at, trace_context, producer_wakes)
VALUES (%(id)s, %(name)s, %(queue)s, %(priority)s, %(kwargs)s::jsonb, %(max_retries)s,
        COALESCE(%(schedule_at)s::timestamptz, now() + %(delay)s * interval '1 second'),
        %(trace_context)s::jsonb, true)
RETURNING (SELECT pg_notify('pgqueue.tasks', queue)
           WHERE current_setting('transaction_isolation') <> 'read committed'
              OR EXISTS (SELECT FROM pgqueue.sleeping_workers AS s WHERE s.queue = tasks.queue));

-- name: copy_tasks
-- Bulk queueing: COPY is an order of magnitude faster than multi-row INSERT.
-- run_at is the column default, now(): the rows run at once (see copy_tasks_with_run_at).
-- Every COPY of tasks is followed by wake_copied_queues (producer_wakes is true).
COPY pgqueue.tasks (id, producer_wakes, name, queue, priority, kwargs, max_retries) FROM STDIN;

-- name: copy_tasks_with_run_at
-- Bulk queueing of delayed or scheduled rows; run_at computed from the database's now().
COPY pgqueue.tasks (id, producer_wakes, name, queue, priority, kwargs, max_retries, run_at)
FROM STDIN;

-- name: copy_tasks_traced
-- copy_tasks with the trace context of the .delay() call (OpenTelemetry on), every row's.
COPY pgqueue.tasks (id, producer_wakes, name, queue, priority, kwargs, max_retries,
                    trace_context)
FROM STDIN;

-- name: copy_tasks_with_run_at_traced
-- copy_tasks_with_run_at with the trace context of the call.
COPY pgqueue.tasks (id, producer_wakes, name, queue, priority, kwargs, max_retries, run_at,
                    trace_context)
FROM STDIN;

-- name: wake_copied_queues
-- After a COPY of tasks, in its transaction: wake the workers of each of its queues where
-- one sleeps (a statement of its own, so its snapshot is taken after the COPY's table lock;
-- see sql/wakeups.sql).
SELECT pg_notify('pgqueue.tasks', q)
FROM unnest(%(queues)s::text[]) AS q
WHERE current_setting('transaction_isolation') <> 'read committed'
   OR EXISTS (SELECT FROM pgqueue.sleeping_workers AS s WHERE s.queue = q);

-- name: lock_parents
-- A workflow's producer: the existing parents its tasks name, locked until it commits (in
-- id order, as complete_tasks locks them) so that no parent finishes unseen meanwhile.
SELECT id, status::text FROM pgqueue.tasks
WHERE id = ANY(%(ids)s::uuid[])
ORDER BY id
FOR SHARE;

-- name: copy_workflow_tasks
-- Tasks with parents: their first status (WAITING, PENDING, or CANCELLED by a parent that
-- failed already) and how many parents they wait for (db/dependencies.py).
COPY pgqueue.tasks (id, producer_wakes, name, queue, priority, kwargs, max_retries, run_at,
                    status, parents_left, on_parent_failure, cancelled_by, error,
                    finished_at, trace_context, limit_keys, fair_key)
FROM STDIN;

-- name: copy_task_dependencies
-- Their edges, in the same transaction. Binary: a chord writes as many edges as tasks, and
-- binary uuids cost the server no parsing (db/dependencies.py, edge_rows).
COPY pgqueue.task_dependencies (parent_id, child_id) FROM STDIN WITH (FORMAT binary);

-- name: parent_results
-- Inside a task: each parent's result (NULL if it has none), with the results' total stored
-- size, which parent_results() bounds.
SELECT d.parent_id, t.result::text, sum(pg_column_size(t.result)) OVER () AS total
FROM pgqueue.task_dependencies AS d
LEFT JOIN pgqueue.tasks AS t ON t.id = d.parent_id
WHERE d.child_id = %(id)s
ORDER BY d.parent_id;

-- name: get_task
-- One task by id.
SELECT * FROM pgqueue.tasks WHERE id = %(id)s;

-- name: claim_tasks
-- The claim, the one text of it: take up to %(limit)s due tasks of %(queues)s, highest
-- priority first, then oldest run_at, then id, and mark them RUNNING under a fresh lease and
-- fencing token. Workers (db/claim.py, for brokers/postgres) and the test mode
-- (pgqueue.testing) both run it. A statement the worker prepares, not a SQL function:
-- PostgreSQL 15 plans a function's body at every call, 0.3-0.4 ms of a claim's 1.5 ms on an
-- idle server, which is most of a wake-up.
-- %(now)s is the clock that decides which tasks are due: NULL (workers) means the database's
-- now(); the test mode passes its own, as River does. A stable expression either way, so the
-- prepared plan's index scan is the same. Every time the claim writes is the database's.
-- The first %(start_now)s start at once (NULL: all), with their "started" events; the
-- others are claimed ahead (see started_at). Returns the columns a run needs, in the order
-- db/claim.py reads them, kwargs as text, and the claim's time as started_at of the tasks
-- claimed ahead (the worker moves it on to their real start).
WITH candidates AS (
    SELECT due.id, due.priority, due.run_at
    -- Paused queues are dropped before the scans: a plain filter on the queue list (not a
    -- join the planner could move), so no row of a paused queue is locked.
    FROM (
        SELECT requested.queue FROM unnest(%(queues)s::text[]) AS requested(queue)
        WHERE requested.queue <> ALL (ARRAY(SELECT queue FROM pgqueue.paused_queues))
    ) AS wanted
    -- One index scan per queue (LATERAL), so each scan reads the partial index in order.
    CROSS JOIN LATERAL (
        SELECT t.id, t.priority, t.run_at
        FROM pgqueue.tasks AS t
        WHERE t.queue = wanted.queue
          AND t.status IN ('PENDING', 'RETRYING')
          -- Rows without limit or fair keys: the runnable index holds only those
          -- (sql/limits.sql); keyed rows are claimed by claim_keyed_tasks.
          AND t.limit_keys IS NULL AND t.fair_key IS NULL
          AND t.run_at <= coalesce(%(now)s::timestamptz, now())
        ORDER BY t.priority DESC, t.run_at, t.id
        LIMIT %(limit)s::integer
        FOR UPDATE SKIP LOCKED
    ) AS due
    ORDER BY due.priority DESC, due.run_at, due.id
    LIMIT %(limit)s::integer
), claimed AS (
    UPDATE pgqueue.tasks AS t
    SET status = 'RUNNING',
        attempts = t.attempts + 1,
        -- Rows past the first start_now wait in the worker's buffer (claimed ahead):
        -- started_at stays NULL until their start is recorded (by the heartbeat or the
        -- completion), so a rescue knows they never ran. NULL: all start now.
        started_at = CASE WHEN %(start_now)s::integer IS NULL
                            OR t.id = ANY (ARRAY(SELECT c.id FROM candidates AS c
                                                 ORDER BY c.priority DESC, c.run_at, c.id
                                                 LIMIT %(start_now)s::integer))
                          THEN now() END,
        worker_id = %(worker_id)s::text,
        lease_expires_at = now() + make_interval(secs => %(lease_seconds)s::double precision),
        lease_token = t.lease_token + 1
    -- id = ANY(array) keeps this a primary-key lookup; a join with the CTE lets the planner
    -- pick a hash join over a scan of the whole table (20 ms at 20,000 rows).
    WHERE t.id = ANY (ARRAY(SELECT candidates.id FROM candidates))
    RETURNING t.*
), started AS (
    -- "started" for the tasks that start now; those claimed ahead get theirs when their
    -- start is recorded (extend_leases, complete_tasks).
    INSERT INTO pgqueue.task_events (task_id, at, event, attempt, worker_id)
    SELECT c.id, c.started_at, 'started', c.attempts, c.worker_id
    FROM claimed AS c
    WHERE c.started_at IS NOT NULL AND pgqueue.history_enabled()
)
SELECT id, name, queue, priority, kwargs::text, attempts, max_retries, run_at, created_at,
       coalesce(started_at, now()), error, worker_id, lease_expires_at, lease_token, unique_key,
       trace_context
FROM claimed ORDER BY priority DESC, run_at, id;

-- name: seconds_until_next_task
-- How long until the earliest runnable task of these queues is due (negative: overdue),
-- for rows without keys and for keyed rows (limits, fair share) apart: a keyed row may be
-- overdue and held back by a limit, which a worker polls for instead of spinning. Each
-- reads its own partial index (sql/limits.sql). Paused queues do not count: their overdue
-- tasks would make the claim loop spin.
SELECT
    (SELECT EXTRACT(epoch FROM min(t.run_at) - now())::double precision
     FROM pgqueue.tasks AS t
     WHERE t.queue = ANY(%(queues)s) AND t.status IN ('PENDING', 'RETRYING')
       AND t.limit_keys IS NULL AND t.fair_key IS NULL
       AND t.queue <> ALL (ARRAY(SELECT queue FROM pgqueue.paused_queues))) AS plain,
    (SELECT EXTRACT(epoch FROM min(t.run_at) - now())::double precision
     FROM pgqueue.tasks AS t
     WHERE t.queue = ANY(%(queues)s) AND t.status IN ('PENDING', 'RETRYING')
       AND (t.limit_keys IS NOT NULL OR t.fair_key IS NOT NULL)
       AND t.queue <> ALL (ARRAY(SELECT queue FROM pgqueue.paused_queues))) AS keyed;

-- name: keyed_tasks_waiting
-- Whether keyed rows (limits, fair share) wait in these queues: the worker then claims
-- with claim_keyed_tasks. One probe of the keyed index.
SELECT EXISTS (
    SELECT 1 FROM pgqueue.tasks AS t
    WHERE t.queue = ANY(%(queues)s) AND t.status IN ('PENDING', 'RETRYING')
      AND (t.limit_keys IS NOT NULL OR t.fair_key IS NOT NULL)
);

-- name: claim_keyed_tasks
-- The claim of keyed rows and the others together (sql/limits.sql, claim_keyed_tasks):
-- the same columns as claim_tasks, in claim order.
SELECT * FROM pgqueue.claim_keyed_tasks(
    %(queues)s::text[], %(limit)s::integer, %(worker_id)s::text,
    %(lease_seconds)s::double precision, %(start_now)s::integer, %(now)s::timestamptz
);

-- name: complete_started_tasks
-- Record many results in one statement, with when each run started (later than its claim
-- if claimed ahead; NULL keeps the start recorded); returns the ids accepted.
-- Array parameters as literals (db/arrays.py): psycopg's list dumping costs more.
SELECT pgqueue.complete_tasks(
    %(ids)s::uuid[], %(tokens)s::integer[], %(results)s::jsonb[], %(started)s::timestamptz[]
);

-- name: complete_and_hand_off
-- complete_started_tasks, and the children those completions make ready handed to this
-- worker for its free slots (sql/functions.sql): (false, id) per completion accepted, then
-- (true, the claim's columns, as db/claim.py reads them) per task handed off.
SELECT * FROM pgqueue.complete_and_hand_off(
    %(ids)s::uuid[], %(tokens)s::integer[], %(results)s::jsonb[], %(started)s::timestamptz[],
    %(worker_id)s::text, %(queues)s::text[], %(slots)s::integer,
    %(lease_seconds)s::double precision
);

-- name: fail_task
-- Record a failed run; no row when the worker no longer holds the task.
SELECT * FROM pgqueue.fail_task(%(id)s, %(token)s, %(error)s, %(retryable)s);

-- name: reschedule_task
-- Put a running task back for later without recording a failure.
SELECT pgqueue.reschedule_task(%(id)s, %(token)s, %(delay)s, %(refund_attempt)s);

-- name: give_back_unknown_tasks
-- Give back tasks whose name this worker has not registered (FAILED after the grace).
SELECT * FROM pgqueue.give_back_unknown_tasks(%(ids)s, %(tokens)s, %(grace_seconds)s);

-- name: extend_leases
-- Heartbeat; returns the ids still held.
SELECT pgqueue.extend_leases(
    %(ids)s, %(tokens)s, %(lease_seconds)s, %(started)s::timestamptz[]
);

-- name: release_tasks
-- Give running tasks back at shutdown.
SELECT pgqueue.release_tasks(%(ids)s, %(tokens)s);

-- name: rescue_expired_leases
-- Put back the tasks of vanished workers.
SELECT pgqueue.rescue_expired_leases();

-- name: task_history
-- A task's events, oldest first: one scan of the primary key (task_id, id).
SELECT task_id, id, at, event, attempt, worker_id, error, details
FROM pgqueue.task_events
WHERE task_id = %(id)s
ORDER BY id;

-- name: history_enabled
-- Whether lifecycle statements write events (`pgqueue history on|off`).
SELECT pgqueue.history_enabled();

-- name: set_history
-- Turn history on or off for the whole database; the previous state.
SELECT pgqueue.set_history(%(enabled)s);

-- name: cancel_task
-- Cancel one task; true if it is now CANCELLED.
SELECT pgqueue.cancel_task(%(id)s);

-- name: retry_task
-- Run a FAILED or CANCELLED task once more.
SELECT pgqueue.retry_task(%(id)s);

-- name: cleanup_tasks
-- Delete one batch of old finished tasks, unless another worker is deleting one: -1 then.
-- The lock is the transaction's (this statement's), never the session's: behind a
-- transaction-mode pooler the next statement may run on another server connection.
SELECT CASE WHEN pg_try_advisory_xact_lock(hashtext('pgqueue.maintenance'))
            THEN pgqueue.cleanup_tasks(%(older_than)s * interval '1 second', %(batch_size)s)
            ELSE -1 END;

-- name: register_worker
-- Record this worker (again, if its row expired while the database was away).
SELECT pgqueue.register_worker(%(id)s, %(host)s, %(pid)s, %(queues)s, %(concurrency)s,
                               %(version)s, %(lease_seconds)s);

-- name: worker_heartbeat
-- Renew this worker's row (false: it is gone) and forget the workers that vanished.
SELECT pgqueue.worker_heartbeat(%(id)s, %(tasks_running)s) AS found,
       pgqueue.expire_stale_workers() AS expired;

-- name: unregister_worker
-- This worker's clean exit.
SELECT pgqueue.unregister_worker(%(id)s);

-- name: queue_stats
-- Every queue at a glance (see the view).
SELECT * FROM pgqueue.queue_stats ORDER BY queue;

-- name: queue_stats_for
-- The same, for some queues only (a worker's metrics).
SELECT * FROM pgqueue.queue_stats WHERE queue = ANY(%(queues)s) ORDER BY queue;

-- name: live_workers
-- The workers alive now, oldest first.
SELECT * FROM pgqueue.live_workers ORDER BY started_at, id;

-- name: due_tasks
-- Due tasks not yet started, the longest waiting first.
SELECT * FROM pgqueue.due_tasks ORDER BY run_at, id LIMIT %(limit)s;

-- name: recent_failures
-- The latest failures with their last error, of one queue or all (NULL).
SELECT * FROM pgqueue.recent_failures
WHERE %(queue)s::text IS NULL OR queue = %(queue)s
ORDER BY failed_at DESC NULLS LAST, id DESC
LIMIT %(limit)s;

-- name: list_tasks
-- The newest tasks (ids are time-ordered) matching the filters that are not NULL.
SELECT * FROM pgqueue.tasks
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(status)s::pgqueue.task_status IS NULL OR status = %(status)s::pgqueue.task_status)
  AND (%(name)s::text IS NULL OR name = %(name)s)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: count_tasks
-- How many tasks match the filters of list_tasks, counting no further than %(bound)s.
SELECT count(*) FROM (
    SELECT 1 FROM pgqueue.tasks
    WHERE (%(queue)s::text IS NULL OR queue = %(queue)s)
      AND (%(status)s::pgqueue.task_status IS NULL OR status = %(status)s::pgqueue.task_status)
      AND (%(name)s::text IS NULL OR name = %(name)s)
    LIMIT %(bound)s
) AS matching;

-- name: estimate_tasks
-- The planner's estimate of how many tasks match the filters of list_tasks (no scan).
EXPLAIN (FORMAT JSON) SELECT 1 FROM pgqueue.tasks
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(status)s::pgqueue.task_status IS NULL OR status = %(status)s::pgqueue.task_status)
  AND (%(name)s::text IS NULL OR name = %(name)s);

-- name: task_ids_ending_with
-- The ids (at most %(limit)s) whose last hex digits are %(suffix)s: a short id, as
-- `pgqueue tasks list` shows them. A scan of the table, for a person's command.
SELECT id FROM pgqueue.tasks
WHERE right(replace(id::text, '-', ''), length(%(suffix)s::text)) = %(suffix)s::text
ORDER BY id
LIMIT %(limit)s;

-- name: pause_queue
-- Make the claim skip a queue; true if it was not paused already.
SELECT pgqueue.pause_queue(%(queue)s);

-- name: known_queues
-- Every queue pgqueue has seen: with task rows, listened to by a worker (of the registry),
-- of a cron schedule, or paused. `pgqueue queue pause` refuses others (a typo), unless
-- forced; it reads the whole task table, as `pgqueue status` does.
SELECT queue FROM pgqueue.tasks
UNION SELECT unnest(queues) FROM pgqueue.workers
UNION SELECT queue FROM pgqueue.cron_schedules
UNION SELECT queue FROM pgqueue.paused_queues
ORDER BY queue;

-- name: paused_among
-- The paused ones among %(queues)s (RabbitMQ workers stop consuming them).
SELECT queue FROM pgqueue.paused_queues WHERE queue = ANY (%(queues)s);

-- name: resume_queue
-- Let workers claim from the queue again; true if it was paused.
SELECT pgqueue.resume_queue(%(queue)s);

-- name: retry_failed_tasks
-- Put every FAILED task (of one queue, or all: NULL) back to PENDING; their ids.
SELECT pgqueue.retry_failed_tasks(%(queue)s::text);

-- name: count_purgeable
-- How many tasks purge_tasks would delete (asked before deleting).
SELECT count(*) FROM pgqueue.tasks
WHERE status = %(status)s::pgqueue.task_status AND status <> 'RUNNING'
  AND coalesce(finished_at, created_at) < now() - %(older_than)s * interval '1 second';

-- name: purge_tasks
-- Delete one batch of tasks of a status older than the given age.
SELECT pgqueue.purge_tasks(%(status)s::pgqueue.task_status,
                           %(older_than)s * interval '1 second', %(batch_size)s);

-- name: broker_start_tasks
-- RabbitMQ worker: mark delivered tasks RUNNING; returns those to run (see the function).
SELECT * FROM pgqueue.broker_start_tasks(
    %(ids)s, %(names)s, %(queues)s, %(priorities)s, %(kwargs)s::jsonb[], %(max_retries)s,
    %(run_ats)s, %(attempts)s, %(worker_id)s);

-- name: held_tasks
-- RabbitMQ worker heartbeat: which of its running tasks it still holds (cancel shows here).
SELECT t.id
FROM unnest(%(ids)s::uuid[], %(tokens)s::integer[]) AS held(id, token)
JOIN pgqueue.tasks AS t ON t.id = held.id AND t.lease_token = held.token
WHERE t.status = 'RUNNING';

-- name: delete_pending_tasks
-- RabbitMQ producer: take back the records of tasks the broker did not accept, and their
-- events.
WITH deleted AS (
    DELETE FROM pgqueue.tasks WHERE id = ANY(%(ids)s) AND status = 'PENDING' RETURNING id
)
DELETE FROM pgqueue.task_events AS e USING deleted WHERE e.task_id = deleted.id;

-- name: outbox_insert
-- Queue one task for the relay, inside the caller's transaction.
INSERT INTO pgqueue.outbox (task_id, queue, priority, message, run_at)
VALUES (%(task_id)s, %(queue)s, %(priority)s, %(message)s, to_timestamp(%(run_at)s));

-- name: outbox_take
-- The relay: the oldest outbox rows, locked until published and deleted.
SELECT id, task_id, queue, priority, message, EXTRACT(epoch FROM run_at)::double precision
FROM pgqueue.outbox
ORDER BY id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: outbox_delete
-- The relay: rows the broker confirmed.
DELETE FROM pgqueue.outbox WHERE id = ANY(%(ids)s);

-- ===========================================================================================
-- Beyond the seed (sql/features.sql, docs/features.md): unique tasks, waiting for results,
-- cancelling running tasks, cron, `tasks explain` and the test mode.
-- ===========================================================================================

-- name: insert_unique_tasks
-- Queue tasks that may carry a unique_key: a row whose key an unfinished task holds (or an
-- earlier row of the same call) is skipped by the partial unique index, which decides even
-- between concurrent producers; returns the ids written. Wakes the workers of the queues
-- written where one sleeps, like insert_task.
WITH inserted AS (
    INSERT INTO pgqueue.tasks
        (id, name, queue, priority, kwargs, max_retries, run_at, unique_key, trace_context,
         producer_wakes, limit_keys, fair_key)
    SELECT n.id, n.name, n.queue, n.priority, n.kwargs, n.max_retries,
           COALESCE(n.schedule_at, now() + n.delay * interval '1 second'), n.unique_key,
           %(trace_context)s::jsonb, true,
           -- Limit keys as a JSON array per row (arrays of arrays must not be ragged).
           CASE WHEN n.limit_keys IS NOT NULL
                THEN ARRAY(SELECT jsonb_array_elements_text(n.limit_keys)) END,
           n.fair_key
    FROM unnest(%(ids)s::uuid[], %(names)s::text[], %(queues)s::text[],
                %(priorities)s::smallint[], %(kwargs)s::jsonb[], %(max_retries)s::integer[],
                %(schedule_ats)s::timestamptz[], %(delays)s::double precision[],
                %(unique_keys)s::text[], %(limit_keys)s::jsonb[], %(fair_keys)s::text[])
         WITH ORDINALITY
         AS n(id, name, queue, priority, kwargs, max_retries, schedule_at, delay, unique_key,
              limit_keys, fair_key, position)
    ORDER BY n.position
    ON CONFLICT (unique_key)
        WHERE unique_key IS NOT NULL AND status IN ('PENDING', 'RETRYING', 'RUNNING')
        DO NOTHING
    RETURNING id, queue
), woken AS (
    SELECT count(pg_notify('pgqueue.tasks', w.queue)) AS queues
    FROM (SELECT DISTINCT queue FROM inserted) AS w
    WHERE current_setting('transaction_isolation') <> 'read committed'
       OR EXISTS (SELECT FROM pgqueue.sleeping_workers AS s WHERE s.queue = w.queue)
)
-- woken is read (a cross join with its one row) so that it runs.
SELECT inserted.id FROM inserted CROSS JOIN woken;

-- name: unique_key_holders
-- The unfinished tasks that hold these unique keys.
SELECT unique_key, id FROM pgqueue.tasks
WHERE unique_key = ANY(%(unique_keys)s::text[])
  AND status IN ('PENDING', 'RETRYING', 'RUNNING');

-- name: register_result_waiter
-- A waiter for a task's result (the results trigger notifies it), or its renewal; forgets
-- waiters that expired (they died without unregistering).
WITH expired AS (DELETE FROM pgqueue.result_waiters WHERE expires_at < now())
INSERT INTO pgqueue.result_waiters (id, task_id, expires_at)
VALUES (%(id)s, %(task_id)s, now() + %(timeout)s * interval '1 second')
ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at;

-- name: unregister_result_waiter
-- The waiter is done.
DELETE FROM pgqueue.result_waiters WHERE id = %(id)s;

-- name: set_worker_task_names
-- The task names a worker can run, for `pgqueue tasks explain`.
UPDATE pgqueue.workers SET task_names = %(task_names)s WHERE id = %(id)s;

-- name: explain_task
-- One task and what may hold it back: schedule, pause, workers and their task names, the
-- due tasks ahead of it in its queue.
SELECT
    t.*,
    now() AS db_now,
    EXISTS (SELECT 1 FROM pgqueue.paused_queues AS p WHERE p.queue = t.queue) AS queue_paused,
    (SELECT count(*) FROM pgqueue.live_workers AS lw WHERE t.queue = ANY(lw.queues))
        AS workers_on_queue,
    (SELECT count(*) FROM pgqueue.live_workers AS lw
     JOIN pgqueue.workers AS w ON w.id = lw.id
     WHERE t.queue = ANY(lw.queues) AND w.task_names IS NOT NULL) AS workers_reporting_names,
    (SELECT count(*) FROM pgqueue.live_workers AS lw
     JOIN pgqueue.workers AS w ON w.id = lw.id
     WHERE t.queue = ANY(lw.queues) AND t.name = ANY(w.task_names)) AS workers_with_task,
    (SELECT coalesce(sum(lw.concurrency), 0) FROM pgqueue.live_workers AS lw
     WHERE t.queue = ANY(lw.queues)) AS capacity,
    (SELECT count(*) FROM pgqueue.tasks AS r WHERE r.queue = t.queue AND r.status = 'RUNNING')
        AS running_in_queue,
    -- Rows without keys, then keyed rows: each count reads its own partial index.
    (SELECT count(*) FROM pgqueue.tasks AS a
     WHERE a.queue = t.queue AND a.status IN ('PENDING', 'RETRYING') AND a.run_at <= now()
       AND a.limit_keys IS NULL AND a.fair_key IS NULL
       AND a.id <> t.id
       AND (a.priority > t.priority
            OR (a.priority = t.priority AND (a.run_at, a.id) < (t.run_at, t.id))))
    + (SELECT count(*) FROM pgqueue.tasks AS a
     WHERE a.queue = t.queue AND a.status IN ('PENDING', 'RETRYING') AND a.run_at <= now()
       AND (a.limit_keys IS NOT NULL OR a.fair_key IS NOT NULL)
       AND a.id <> t.id
       AND (a.priority > t.priority
            OR (a.priority = t.priority AND (a.run_at, a.id) < (t.run_at, t.id))))
        AS tasks_ahead,
    (SELECT count(*) FROM pgqueue.tasks AS a
     WHERE a.queue = t.queue AND a.status IN ('PENDING', 'RETRYING') AND a.run_at <= now()
       AND a.limit_keys IS NULL AND a.fair_key IS NULL
       AND a.priority > t.priority)
    + (SELECT count(*) FROM pgqueue.tasks AS a
     WHERE a.queue = t.queue AND a.status IN ('PENDING', 'RETRYING') AND a.run_at <= now()
       AND (a.limit_keys IS NOT NULL OR a.fair_key IS NOT NULL)
       AND a.priority > t.priority) AS tasks_ahead_higher_priority,
    -- Limits and fair share (sql/limits.sql): each key's limit and use now, and the fair
    -- keys of its queue with work due and a lower pass (ahead of it in turn).
    (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'key', k, 'limit', l.name, 'concurrency', l.concurrency, 'rate', l.rate,
                'per', l.per, 'burst', l.burst, 'running',
                coalesce(u.running, (SELECT count(*) FROM pgqueue.tasks AS r
                                     WHERE r.status = 'RUNNING' AND r.limit_keys IS NOT NULL
                                       AND k = ANY (r.limit_keys))),
                'tokens', CASE WHEN l.rate IS NOT NULL THEN
                    least(l.burst, coalesce(u.tokens, l.burst)
                          + greatest(EXTRACT(epoch FROM now() - coalesce(u.refilled_at, now())),
                                     0) * l.rate / l.per) END)
            ORDER BY k), '[]'::jsonb)
     FROM unnest(t.limit_keys) AS k
     CROSS JOIN LATERAL pgqueue.limit_for_key(k) AS l
     LEFT JOIN pgqueue.limit_usage AS u ON u.key = k
     WHERE l.name IS NOT NULL) AS limits_held,
    (SELECT count(DISTINCT a.fair_key) FROM pgqueue.tasks AS a
     LEFT JOIN pgqueue.fair_passes AS ap ON ap.queue = a.queue AND ap.key = a.fair_key
     LEFT JOIN pgqueue.fair_passes AS tp ON tp.queue = t.queue AND tp.key = t.fair_key
     LEFT JOIN pgqueue.fair_clocks AS fc ON fc.queue = t.queue
     WHERE t.fair_key IS NOT NULL AND a.queue = t.queue AND a.fair_key IS NOT NULL
       AND a.fair_key <> t.fair_key AND a.status IN ('PENDING', 'RETRYING')
       AND (a.limit_keys IS NOT NULL OR a.fair_key IS NOT NULL) AND a.run_at <= now()
       AND a.priority = t.priority
       AND greatest(coalesce(ap.pass, fc.pass, 0), coalesce(fc.pass, 0))
           < greatest(coalesce(tp.pass, fc.pass, 0), coalesce(fc.pass, 0))) AS fair_keys_ahead
FROM pgqueue.tasks AS t
WHERE t.id = %(id)s;

-- name: task_parents
-- A task's parents (`tasks show`, `tasks explain`): the unsettled first, with their number.
SELECT d.parent_id AS id, t.name, t.status::text AS status, count(*) OVER () AS total
FROM pgqueue.task_dependencies AS d
LEFT JOIN pgqueue.tasks AS t ON t.id = d.parent_id
WHERE d.child_id = %(id)s
ORDER BY t.status IS NOT DISTINCT FROM 'COMPLETED', d.parent_id
LIMIT %(limit)s;

-- name: task_children
-- The tasks that wait for this one (`tasks show`), with their number.
SELECT d.child_id AS id, t.name, t.status::text AS status, count(*) OVER () AS total
FROM pgqueue.task_dependencies AS d
LEFT JOIN pgqueue.tasks AS t ON t.id = d.child_id
WHERE d.parent_id = %(id)s
ORDER BY d.child_id
LIMIT %(limit)s;

-- name: cron_record_schedule
-- A worker that imports a cron task records its schedule (first_seen_at is kept).
INSERT INTO pgqueue.cron_schedules AS s (name, cron, timezone, queue, catchup_seconds)
VALUES (%(name)s, %(cron)s, %(timezone)s, %(queue)s, %(catchup_seconds)s)
ON CONFLICT (name) DO UPDATE
SET cron = excluded.cron, timezone = excluded.timezone, queue = excluded.queue,
    catchup_seconds = excluded.catchup_seconds, last_seen_at = now()
RETURNING s.first_seen_at, now() AS db_now,
          (SELECT max(r.scheduled_at) FROM pgqueue.cron_runs AS r WHERE r.name = s.name)
              AS last_scheduled_at;

-- name: cron_claim_occurrence
-- Claim one occurrence of a schedule for a new task id, unless another worker did: the
-- primary key of cron_runs admits each (name, scheduled_at) once, and a racer waits here
-- for the claimer's commit. Only the claimer gets a row; it queues the task through its
-- broker in the same transaction (pgqueue/cron.py), so the claim, the task and, with
-- RabbitMQ, its outbox row commit together or not at all.
INSERT INTO pgqueue.cron_runs (name, scheduled_at, task_id)
VALUES (%(name)s, %(scheduled_at)s, %(task_id)s)
ON CONFLICT (name, scheduled_at) DO NOTHING
RETURNING task_id;

-- name: cron_prune_runs
-- Forget occurrences older than the catch-up window can reach; the latest is always kept.
DELETE FROM pgqueue.cron_runs AS r
WHERE r.name = %(name)s AND r.scheduled_at < %(before)s
  AND r.scheduled_at < (SELECT max(l.scheduled_at) FROM pgqueue.cron_runs AS l
                        WHERE l.name = %(name)s);

-- name: cron_schedules
-- Every recorded schedule with its latest queued occurrence.
SELECT s.*, (SELECT max(r.scheduled_at) FROM pgqueue.cron_runs AS r WHERE r.name = s.name)
           AS last_scheduled_at,
       now() AS db_now
FROM pgqueue.cron_schedules AS s
ORDER BY s.name;

-- name: testing_all_queues
-- Every queue that has waiting tasks (the test mode drains all by default).
SELECT DISTINCT queue FROM pgqueue.tasks
WHERE status IN ('PENDING', 'RETRYING') AND limit_keys IS NULL AND fair_key IS NULL
UNION
SELECT DISTINCT queue FROM pgqueue.tasks
WHERE status IN ('PENDING', 'RETRYING') AND (limit_keys IS NOT NULL OR fair_key IS NOT NULL);

-- name: testing_reset
-- The test mode's reset: every task, whatever its status, and what runs leave behind (cron
-- occurrences and the schedules workers recorded, paused queues, result waiters, the
-- outbox, task history, sleep announcements of workers gone, limits and fair share), as
-- on a fresh database.
-- DELETE, not TRUNCATE: a test's idle transaction that read these tables would make
-- TRUNCATE wait for ever.
DELETE FROM pgqueue.task_events;
DELETE FROM pgqueue.tasks;
DELETE FROM pgqueue.sleeping_workers;
DELETE FROM pgqueue.cron_runs;
DELETE FROM pgqueue.cron_schedules;
DELETE FROM pgqueue.paused_queues;
DELETE FROM pgqueue.result_waiters;
DELETE FROM pgqueue.outbox;
DELETE FROM pgqueue.limits;
DELETE FROM pgqueue.limit_usage;
DELETE FROM pgqueue.fair_weights;
DELETE FROM pgqueue.fair_passes;
DELETE FROM pgqueue.fair_clocks;

-- name: database_now
-- The database clock.
SELECT now();

-- name: announce_sleep
-- This worker is going to sleep on LISTEN: producers of its queues notify from now on (see
-- sql/wakeups.sql). True if no transaction is writing tasks (a producer in
-- flight may have looked before this announcement was visible): a claim after this
-- statement then sees every task that no NOTIFY will announce. False: look again soon.
WITH announced AS (
    INSERT INTO pgqueue.sleeping_workers (queue, worker_id)
    SELECT q, %(worker_id)s FROM unnest(%(queues)s::text[]) AS q
    ON CONFLICT DO NOTHING
)
SELECT pgqueue.lock_out_writers() AS settled;

-- name: forget_sleep
-- This worker is awake (or leaving): producers need not wake it.
DELETE FROM pgqueue.sleeping_workers WHERE worker_id = %(worker_id)s;

-- name: forget_absent_sleepers
-- Announcements of workers that vanished asleep (their registry row expired).
DELETE FROM pgqueue.sleeping_workers AS s
WHERE s.since < now() - interval '1 minute'
  AND NOT EXISTS (SELECT FROM pgqueue.workers AS w WHERE w.id = s.worker_id);

-- name: notify_probe
-- A message on the control channel that only the listener which sent it looks for: proof
-- that notifications reach its connection (they do not through a transaction-mode pooler).
SELECT pg_notify(%(channel)s, 'probe ' || %(token)s);

-- name: schema_revision
-- The alembic revision the pgqueue schema is at (db/migrated.py: is this database migrated).
SELECT version_num FROM pgqueue.alembic_version;

-- name: schema_exists
-- Whether the schema exists at all (no revision record: made by hand, or a failed migration).
SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %(schema)s);

-- ===========================================================================================
-- Limits and fair share (sql/limits.sql; `tm.set_limit`, `pgqueue limits`).
-- ===========================================================================================

-- name: set_limit
-- Define or replace a limit (every field: the whole definition).
SELECT pgqueue.set_limit(%(name)s::text, %(concurrency)s::integer, %(rate)s::double precision,
                         %(per)s::double precision, %(burst)s::double precision);

-- name: remove_limit
-- Drop a limit; True if it existed. Its keys restrict nothing from the next claim on.
DELETE FROM pgqueue.limits WHERE name = %(name)s RETURNING name;

-- name: list_limits
-- Every limit, by name.
SELECT name, concurrency, rate, per, burst FROM pgqueue.limits ORDER BY name;

-- name: limit_usage
-- Each concrete key that has a limit and a state: its limit, running now, tokens now.
SELECT u.key, l.name AS limit_name, l.concurrency, l.rate, l.per, l.burst, u.running,
       CASE WHEN l.rate IS NOT NULL THEN
           least(l.burst, coalesce(u.tokens, l.burst)
                 + greatest(EXTRACT(epoch FROM now() - coalesce(u.refilled_at, now())), 0)
                   * l.rate / l.per) END AS tokens
FROM pgqueue.limit_usage AS u
CROSS JOIN LATERAL pgqueue.limit_for_key(u.key) AS l
WHERE l.name IS NOT NULL
ORDER BY u.key;

-- name: set_fair_weight
-- A fair key's weight in a queue.
SELECT pgqueue.set_fair_weight(%(queue)s::text, %(key)s::text, %(weight)s::double precision);

-- name: recount_limit_usage
-- Maintenance: running counts per key recounted from the RUNNING rows.
SELECT pgqueue.recount_limit_usage();

-- name: insert_keyed_task
-- Queue one task holding limit keys or a fair key (insert_task with those columns, waking
-- the workers of its queue the same way).
INSERT INTO pgqueue.tasks
    (id, name, queue, priority, kwargs, max_retries, run_at, trace_context, producer_wakes,
     limit_keys, fair_key)
VALUES (%(id)s, %(name)s, %(queue)s, %(priority)s, %(kwargs)s::jsonb, %(max_retries)s,
        COALESCE(%(schedule_at)s::timestamptz, now() + %(delay)s * interval '1 second'),
        %(trace_context)s::jsonb, true, %(limit_keys)s::text[], %(fair_key)s::text)
RETURNING (SELECT pg_notify('pgqueue.tasks', queue)
           WHERE current_setting('transaction_isolation') <> 'read committed'
              OR EXISTS (SELECT FROM pgqueue.sleeping_workers AS s WHERE s.queue = tasks.queue));

-- name: copy_keyed_tasks
-- Bulk queueing of rows holding limit keys or fair keys: every column given. Followed by
-- wake_copied_queues, like every COPY of tasks.
COPY pgqueue.tasks (id, producer_wakes, name, queue, priority, kwargs, max_retries, run_at,
                    trace_context, limit_keys, fair_key)
FROM STDIN;
