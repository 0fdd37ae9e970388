-- Revision 0001, frozen: a copy of the live files of pgqueue/db/sql/ that built the whole
-- schema until migrations were frozen (schema.sql, functions.sql, operations.sql,
-- outbox.sql, features.sql, in that order). Never edit it: databases at revision 0001 were
-- built from it. A schema change is a new revision plus the same change in the live files;
-- tests/test_schema_matches_migrations.py checks that both build the same database.
-- Written for the schema "pgqueue"; the revision points it at the configured schema.

-- ===========================================================================================
-- sql/schema.sql
-- ===========================================================================================

-- pgqueue schema: the task table, its status type, indexes and the wake-up trigger.
-- Every object is qualified with the "pgqueue." schema; pgqueue rewrites that prefix
-- when the schema setting names another schema.

CREATE SCHEMA IF NOT EXISTS pgqueue;

CREATE TYPE pgqueue.task_status AS ENUM
    ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'RETRYING', 'CANCELLED');

CREATE TABLE pgqueue.tasks (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name             text NOT NULL CHECK (name <> '' AND length(name) <= 1024),
    queue            text NOT NULL DEFAULT 'default'
                     CHECK (length(queue) BETWEEN 1 AND 128 AND queue !~ '[[:cntrl:]]'),
    priority         smallint NOT NULL DEFAULT 0,
    status           pgqueue.task_status NOT NULL DEFAULT 'PENDING',
    kwargs           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(kwargs) = 'object'),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_retries      integer NOT NULL DEFAULT 3 CHECK (max_retries >= 0),
    run_at           timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    result           jsonb,
    error            text,
    -- Lease: which worker holds a RUNNING task, until when, and a fencing token that
    -- every claim increments, so a worker whose lease was taken over writes nothing.
    worker_id        text,
    lease_expires_at timestamptz,
    lease_token      integer NOT NULL DEFAULT 0,
    -- Rescues that gave back the attempt of a task claimed ahead by a lost worker and not
    -- started (started_at NULL): bounded, so a task that kills its worker before its start
    -- is recorded still ends FAILED (rescue_expired_leases).
    unstarted_rescues integer NOT NULL DEFAULT 0,
    -- Claims by workers that had not registered the task's name (give_back_unknown_tasks):
    -- each is given back without spending an attempt. The first sets unknown_since; the
    -- task ends FAILED at unknown_fails_at (unknown_since + the grace of the worker that
    -- gave it back last) if no worker knowing the name ran it meanwhile. A knowing worker's
    -- failure or reschedule clears them (fail_task, reschedule_task).
    unknown_since      timestamptz,
    unknown_fails_at   timestamptz,
    unknown_give_backs integer NOT NULL DEFAULT 0
);

-- Only runnable rows: finished tasks never slow the claim, however many pile up.
CREATE INDEX tasks_runnable_idx ON pgqueue.tasks (queue, priority DESC, run_at, id)
    WHERE status IN ('PENDING', 'RETRYING');

-- Running rows by lease expiry, for the rescue of tasks whose worker vanished.
CREATE INDEX tasks_leases_idx ON pgqueue.tasks (lease_expires_at)
    WHERE status = 'RUNNING';

-- Finished rows by age, for cleanup in bounded batches.
CREATE INDEX tasks_finished_idx ON pgqueue.tasks (finished_at)
    WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED');

-- One notification per queue per statement (not per row): a bulk insert of 100,000
-- rows into one queue wakes the workers once. The payload is the queue name.
CREATE FUNCTION pgqueue.notify_new_tasks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgqueue.tasks', queue)
    FROM (SELECT DISTINCT queue FROM new_tasks) AS queues;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_notify_insert
    AFTER INSERT ON pgqueue.tasks
    REFERENCING NEW TABLE AS new_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.notify_new_tasks();

-- ===========================================================================================
-- Operations: the worker registry and paused queues (views over them: sql/operations.sql).
-- ===========================================================================================

-- One row per running worker: its broker inserts it at start, renews last_heartbeat every
-- third of a lease and deletes it on a clean exit. Rows of workers that vanished expire
-- after three leases without a heartbeat (expire_stale_workers).
CREATE TABLE pgqueue.workers (
    id             text PRIMARY KEY,
    host           text NOT NULL,
    pid            integer NOT NULL,
    queues         text[] NOT NULL,
    concurrency    integer NOT NULL CHECK (concurrency >= 1),
    version        text NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    last_heartbeat timestamptz NOT NULL DEFAULT now(),
    tasks_running  integer NOT NULL DEFAULT 0 CHECK (tasks_running >= 0),
    -- Each worker's own lease: a worker with short leases is declared gone sooner.
    lease_seconds  double precision NOT NULL CHECK (lease_seconds > 0)
);

-- Queues the claim skips (`pgqueue queue pause Q`); running tasks finish, workers stay up.
CREATE TABLE pgqueue.paused_queues (
    queue     text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now()
);

-- ===========================================================================================
-- sql/functions.sql
-- ===========================================================================================

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
-- The first p_start_now start at once; the others are claimed ahead (see started_at).
-- One index scan per queue (LATERAL), so each scan reads the partial index in order.
CREATE OR REPLACE FUNCTION pgqueue.claim_tasks(
    p_queues text[], p_limit integer, p_worker_id text, p_lease_seconds double precision,
    p_start_now integer DEFAULT NULL
) RETURNS SETOF pgqueue.tasks
LANGUAGE sql AS $$
    WITH candidates AS (
        SELECT due.id, due.priority, due.run_at
        -- Paused queues are dropped before the scans: a plain filter on the queue list
        -- (not a join the planner could move), so no row of a paused queue is locked.
        FROM (
            SELECT requested.queue FROM unnest(p_queues) AS requested(queue)
            WHERE requested.queue <> ALL (ARRAY(SELECT queue FROM pgqueue.paused_queues))
        ) AS wanted
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
            -- Rows past the first p_start_now wait in the worker's buffer (claimed ahead):
            -- started_at stays NULL until their start is recorded (by the heartbeat or the
            -- completion), so a rescue knows they never ran. NULL: all start now.
            started_at = CASE WHEN p_start_now IS NULL
                                OR t.id = ANY (ARRAY(SELECT c.id FROM candidates AS c
                                                     ORDER BY c.priority DESC, c.run_at, c.id
                                                     LIMIT p_start_now))
                              THEN now() END,
            worker_id = p_worker_id,
            lease_expires_at = now() + make_interval(secs => p_lease_seconds),
            lease_token = t.lease_token + 1
        -- id = ANY(array) keeps this a primary-key lookup; a join with the CTE lets the
        -- planner pick a hash join over a scan of the whole table (20 ms at 20,000 rows).
        WHERE t.id = ANY (ARRAY(SELECT candidates.id FROM candidates))
        RETURNING t.*
    )
    SELECT * FROM claimed ORDER BY priority DESC, run_at, id;
$$;

-- name: complete_tasks
-- Record the results of finished runs, many per call; returns the ids it accepted.
-- p_started (optional, per task): when a run claimed ahead of a free slot really started.
CREATE OR REPLACE FUNCTION pgqueue.complete_tasks(
    p_ids uuid[], p_tokens integer[], p_results jsonb[], p_started timestamptz[] DEFAULT NULL
) RETURNS SETOF uuid
LANGUAGE sql AS $$
    UPDATE pgqueue.tasks AS t
    SET status = 'COMPLETED', result = done.result, finished_at = now(), lease_expires_at = NULL,
        started_at = coalesce(done.started_at, t.started_at)
    FROM unnest(p_ids, p_tokens, p_results, p_started) AS done(id, token, result, started_at)
    -- status::text (not status): the planner then cannot drive the update from the partial
    -- index of RUNNING rows, whose row count is always stale on a queue table (estimated 1),
    -- which made a nested loop of every RUNNING row times every array element: O(n^2),
    -- 850 ms for 2,000 completions. The array drives it, one primary-key lookup per element.
    WHERE t.id = done.id AND t.lease_token = done.token AND t.status::text = 'RUNNING'
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
        lease_expires_at = NULL,
        -- This worker knew the name: a later give-back by one that does not starts a new grace.
        unknown_since = NULL, unknown_fails_at = NULL, unknown_give_backs = 0
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
        lease_expires_at = NULL,
        unknown_since = NULL, unknown_fails_at = NULL, unknown_give_backs = 0
    WHERE t.id = p_id AND t.lease_token = p_token AND t.status = 'RUNNING'
    RETURNING t.run_at;
$$;

-- name: unknown_task_backoff
-- Delay before a task given back by a worker that does not know its name is due again, after
-- p_give_backs give-backs: 1 s, 2 s, 4 s, ... capped at 30 s, +/-25% jitter. Growing, so
-- workers that do not know it claim it a bounded number of times (about 120 an hour) and
-- a backlog of such tasks leaves the head of its queue; capped, so a worker that knows it
-- runs it soon.
CREATE OR REPLACE FUNCTION pgqueue.unknown_task_backoff(p_give_backs integer) RETURNS interval
LANGUAGE sql VOLATILE AS $$
    SELECT make_interval(secs => least(power(2, greatest(p_give_backs, 1) - 1), 30)
                                 * (0.75 + random() * 0.5));
$$;

-- name: give_back_unknown_tasks
-- Running tasks whose name the worker holding them has not registered: that worker never
-- calls them, and they are not its to fail. Each goes back PENDING, its attempt refunded,
-- due again after unknown_task_backoff, with an error naming the worker (worker_id, kept,
-- is the one the lease token proves claimed it). Once it has been given back for
-- p_grace_seconds since the first give-back (no worker knowing the name ran it meanwhile:
-- that clears unknown_since), it ends FAILED instead. Fenced like the other writes;
-- returns (id, new status, new run_at, error) of those accepted, and wakes the workers of
-- their queues, so that an idle worker that knows the name sets its timer to the new run_at.
CREATE OR REPLACE FUNCTION pgqueue.give_back_unknown_tasks(
    p_ids uuid[], p_tokens integer[], p_grace_seconds double precision
) RETURNS TABLE (
    task_id uuid, new_status pgqueue.task_status, new_run_at timestamptz, task_error text
)
LANGUAGE plpgsql AS $$
DECLARE
    ids uuid[];
    statuses pgqueue.task_status[];
    run_ats timestamptz[];
    errors text[];
    queues text[];
BEGIN
    WITH held AS (
        SELECT h.id, since, since + make_interval(secs => p_grace_seconds) AS fails_at,
               since + make_interval(secs => p_grace_seconds) <= now() AS expired
        FROM unnest(p_ids, p_tokens) AS h(id, token)
        -- status::text: a primary-key lookup per element (see complete_tasks).
        JOIN pgqueue.tasks AS t
          ON t.id = h.id AND t.lease_token = h.token AND t.status::text = 'RUNNING'
        CROSS JOIN LATERAL (SELECT coalesce(t.unknown_since, now()) AS since) AS began
    ), moved AS (
        UPDATE pgqueue.tasks AS t
        SET status = CASE WHEN held.expired THEN 'FAILED'
                          ELSE 'PENDING' END::pgqueue.task_status,
            attempts = greatest(t.attempts - 1, 0),
            run_at = CASE WHEN held.expired THEN t.run_at
                          ELSE now() + pgqueue.unknown_task_backoff(t.unknown_give_backs + 1)
                     END,
            started_at = NULL,
            finished_at = CASE WHEN held.expired THEN now() END,
            lease_expires_at = NULL,
            unknown_since = held.since,
            unknown_fails_at = held.fails_at,
            unknown_give_backs = t.unknown_give_backs + 1,
            error = CASE
                WHEN held.expired THEN format(
                    'UnknownTask: no worker knew task name %L for %s s (given back %s '
                    'time%s since %s, last by worker %s); start a worker that imports the '
                    'module defining it (--import or PGQUEUE_IMPORTS), then '
                    '`pgqueue tasks retry`',
                    t.name, round(EXTRACT(epoch FROM now() - held.since)),
                    t.unknown_give_backs + 1,
                    CASE WHEN t.unknown_give_backs = 0 THEN '' ELSE 's' END,
                    date_trunc('second', held.since), t.worker_id)
                ELSE format(
                    'UnknownTask: worker %s has no task named %L registered; given back '
                    'without spending an attempt, for a worker that imports the module '
                    'defining it (--import or PGQUEUE_IMPORTS); FAILED at %s if none has',
                    t.worker_id, t.name, date_trunc('second', held.fails_at))
            END
        FROM held
        WHERE t.id = held.id
        RETURNING t.id, t.status, t.run_at, t.error, t.queue
    )
    SELECT array_agg(m.id), array_agg(m.status), array_agg(m.run_at), array_agg(m.error),
           array_agg(DISTINCT m.queue) FILTER (WHERE m.status = 'PENDING')
    INTO ids, statuses, run_ats, errors, queues
    FROM moved AS m;
    PERFORM pg_notify('pgqueue.tasks', q) FROM unnest(queues) AS q;
    RETURN QUERY SELECT * FROM unnest(ids, statuses, run_ats, errors);
END;
$$;

-- name: extend_leases
-- Heartbeat: renew the leases a worker still holds; returns the ids it still holds.
-- p_started (per task, NULL for those still waiting in the worker's buffer): when a task
-- claimed ahead started, recorded here at no extra write (see rescue_expired_leases).
CREATE OR REPLACE FUNCTION pgqueue.extend_leases(
    p_ids uuid[], p_tokens integer[], p_lease_seconds double precision,
    p_started timestamptz[] DEFAULT NULL
) RETURNS SETOF uuid
LANGUAGE sql AS $$
    UPDATE pgqueue.tasks AS t
    SET lease_expires_at = now() + make_interval(secs => p_lease_seconds),
        started_at = coalesce(t.started_at, held.started_at)
    FROM unnest(p_ids, p_tokens, p_started) AS held(id, token, started_at)
    -- status::text: a primary-key lookup per element (see complete_tasks).
    WHERE t.id = held.id AND t.lease_token = held.token AND t.status::text = 'RUNNING'
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
        -- status::text: a primary-key lookup per element (see complete_tasks).
        WHERE t.id = held.id AND t.lease_token = held.token AND t.status::text = 'RUNNING'
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
-- A task the lost worker had claimed ahead and not started (started_at NULL) never ran:
-- it goes back to PENDING with its attempt given back, as release_tasks does. Its start
-- is recorded at the worker's next heartbeat (a third of a lease), so a task that kills
-- its worker sooner looks unstarted: after max_unstarted_rescues such rescues, it counts.
CREATE OR REPLACE FUNCTION pgqueue.rescue_expired_leases() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    max_unstarted_rescues CONSTANT integer := 3;
    rescued integer;
    queues text[];
BEGIN
    WITH expired AS (
        SELECT t.id, (t.started_at IS NULL AND t.unstarted_rescues < max_unstarted_rescues)
                     AS unstarted
        FROM pgqueue.tasks AS t
        WHERE t.status = 'RUNNING' AND t.lease_expires_at < now()
        FOR UPDATE SKIP LOCKED
    ), moved AS (
        UPDATE pgqueue.tasks AS t
        SET status = CASE WHEN expired.unstarted THEN 'PENDING'
                          WHEN t.attempts > t.max_retries THEN 'FAILED'
                          ELSE 'RETRYING' END::pgqueue.task_status,
            attempts = CASE WHEN expired.unstarted THEN greatest(t.attempts - 1, 0)
                            ELSE t.attempts END,
            unstarted_rescues = t.unstarted_rescues + expired.unstarted::integer,
            finished_at = CASE WHEN NOT expired.unstarted AND t.attempts > t.max_retries
                               THEN now() END,
            run_at = CASE WHEN expired.unstarted OR t.attempts > t.max_retries THEN t.run_at
                          ELSE now() END,
            error = CASE WHEN expired.unstarted THEN t.error
                         ELSE format('worker lost: worker %s stopped renewing its lease '
                                     '(expired at %s)', t.worker_id, t.lease_expires_at) END,
            worker_id = CASE WHEN expired.unstarted THEN NULL ELSE t.worker_id END,
            lease_expires_at = NULL
        FROM expired
        WHERE t.id = expired.id
        RETURNING t.queue, t.status
    )
    SELECT count(*), array_agg(DISTINCT queue) FILTER (WHERE status <> 'FAILED')
    INTO rescued, queues FROM moved;
    PERFORM pg_notify('pgqueue.tasks', q) FROM unnest(queues) AS q;
    RETURN rescued;
END;
$$;

-- name: cancel_task
-- Cancel a task that has not finished; True if it is now CANCELLED. A RUNNING task's
-- worker hears of it on the "pgqueue.control" channel (payload "cancel <id>") and stops
-- the run at once; its outcome is refused in any case (and its lease lost at the next
-- heartbeat, should the notification be missed).
CREATE OR REPLACE FUNCTION pgqueue.cancel_task(p_id uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    previous pgqueue.task_status;
BEGIN
    SELECT status INTO previous FROM pgqueue.tasks WHERE id = p_id FOR UPDATE;
    IF previous IS NULL OR previous NOT IN ('PENDING', 'RETRYING', 'RUNNING') THEN
        RETURN false;
    END IF;
    UPDATE pgqueue.tasks
    SET status = 'CANCELLED', finished_at = now(), lease_expires_at = NULL
    WHERE id = p_id;
    IF previous = 'RUNNING' THEN
        PERFORM pg_notify('pgqueue.control', 'cancel ' || p_id::text);
    END IF;
    RETURN true;
END;
$$;

-- name: retry_task
-- Run a FAILED or CANCELLED task once more, now; its attempts keep counting.
CREATE OR REPLACE FUNCTION pgqueue.retry_task(p_id uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    task_queue text;
BEGIN
    UPDATE pgqueue.tasks AS t
    SET status = 'PENDING', run_at = now(), started_at = NULL, finished_at = NULL,
        result = NULL, lease_expires_at = NULL,
        unknown_since = NULL, unknown_fails_at = NULL, unknown_give_backs = 0,
        -- It keeps its unique_key (sql/features.sql) unless another task holds it now.
        unique_key = CASE WHEN EXISTS (
            SELECT 1 FROM pgqueue.tasks AS o
            WHERE o.unique_key = t.unique_key AND o.status IN ('PENDING', 'RETRYING', 'RUNNING')
        ) THEN NULL ELSE t.unique_key END
    WHERE t.id = p_id AND t.status IN ('FAILED', 'CANCELLED')
    RETURNING t.queue INTO task_queue;
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

-- ===========================================================================================
-- Operations: the worker registry, paused queues, bulk retry and purge (sql/operations.sql
-- has the views; `pgqueue workers`, `pgqueue queue`, `pgqueue tasks` call these).
-- ===========================================================================================

-- name: register_worker
-- Record a worker at start (or again, if its row expired while the database was away).
CREATE OR REPLACE FUNCTION pgqueue.register_worker(
    p_id text, p_host text, p_pid integer, p_queues text[], p_concurrency integer,
    p_version text, p_lease_seconds double precision
) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO pgqueue.workers AS w
        (id, host, pid, queues, concurrency, version, lease_seconds)
    VALUES (p_id, p_host, p_pid, p_queues, p_concurrency, p_version, p_lease_seconds)
    ON CONFLICT (id) DO UPDATE
    SET host = excluded.host, pid = excluded.pid, queues = excluded.queues,
        concurrency = excluded.concurrency, version = excluded.version,
        lease_seconds = excluded.lease_seconds, last_heartbeat = now();
$$;

-- name: worker_heartbeat
-- A worker is alive and runs p_tasks_running tasks; false if its row is gone (re-register).
CREATE OR REPLACE FUNCTION pgqueue.worker_heartbeat(p_id text, p_tasks_running integer)
RETURNS boolean
LANGUAGE sql AS $$
    WITH beat AS (
        UPDATE pgqueue.workers
        SET last_heartbeat = now(), tasks_running = p_tasks_running
        WHERE id = p_id
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM beat);
$$;

-- name: unregister_worker
-- A worker's clean exit; true if it was registered.
CREATE OR REPLACE FUNCTION pgqueue.unregister_worker(p_id text) RETURNS boolean
LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM pgqueue.workers WHERE id = p_id RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM gone);
$$;

-- name: expire_stale_workers
-- Forget workers silent for three of their leases (killed, host lost); returns how many.
CREATE OR REPLACE FUNCTION pgqueue.expire_stale_workers() RETURNS integer
LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM pgqueue.workers
        WHERE last_heartbeat < now() - make_interval(secs => 3 * lease_seconds)
        RETURNING 1
    )
    SELECT count(*)::integer FROM gone;
$$;

-- name: pause_queue
-- Make claim_tasks skip a queue; running tasks finish. True if it was not paused already.
CREATE OR REPLACE FUNCTION pgqueue.pause_queue(p_queue text) RETURNS boolean
LANGUAGE sql AS $$
    WITH paused AS (
        INSERT INTO pgqueue.paused_queues (queue) VALUES (p_queue)
        ON CONFLICT (queue) DO NOTHING
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM paused);
$$;

-- name: resume_queue
-- Let workers claim from a paused queue again, and wake them. True if it was paused.
CREATE OR REPLACE FUNCTION pgqueue.resume_queue(p_queue text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM pgqueue.paused_queues WHERE queue = p_queue;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_notify('pgqueue.tasks', p_queue);
    RETURN true;
END;
$$;

-- name: retry_failed_tasks
-- retry_task for every FAILED task (of one queue, or all when p_queue is NULL); their ids.
CREATE OR REPLACE FUNCTION pgqueue.retry_failed_tasks(p_queue text DEFAULT NULL)
RETURNS SETOF uuid
LANGUAGE plpgsql AS $$
DECLARE
    retried_ids uuid[];
    queues text[];
BEGIN
    WITH failed AS (
        -- Of failed tasks sharing a unique_key, only the newest may keep it.
        SELECT id, row_number() OVER (PARTITION BY unique_key ORDER BY id DESC) AS rank
        FROM pgqueue.tasks
        WHERE status = 'FAILED' AND (p_queue IS NULL OR queue = p_queue)
    ), retried AS (
        UPDATE pgqueue.tasks AS t
        SET status = 'PENDING', run_at = now(), started_at = NULL, finished_at = NULL,
            result = NULL, lease_expires_at = NULL,
            unknown_since = NULL, unknown_fails_at = NULL, unknown_give_backs = 0,
            unique_key = CASE WHEN f.rank > 1 OR EXISTS (
                SELECT 1 FROM pgqueue.tasks AS o
                WHERE o.unique_key = t.unique_key
                  AND o.status IN ('PENDING', 'RETRYING', 'RUNNING')
            ) THEN NULL ELSE t.unique_key END
        FROM failed AS f
        WHERE t.id = f.id
        RETURNING t.id, t.queue
    )
    SELECT array_agg(id), array_agg(DISTINCT queue) INTO retried_ids, queues FROM retried;
    PERFORM pg_notify('pgqueue.tasks', q) FROM unnest(queues) AS q;
    RETURN QUERY SELECT unnest(retried_ids);
END;
$$;

-- name: purge_tasks
-- Delete up to p_batch_size tasks of one status older than p_older_than (by finished_at,
-- else created_at); callers loop until it returns less than p_batch_size. Never RUNNING.
CREATE OR REPLACE FUNCTION pgqueue.purge_tasks(
    p_status pgqueue.task_status, p_older_than interval, p_batch_size integer
) RETURNS integer
LANGUAGE sql AS $$
    WITH doomed AS (
        SELECT id FROM pgqueue.tasks
        WHERE status = p_status AND p_status <> 'RUNNING'
          AND coalesce(finished_at, created_at) < now() - p_older_than
        LIMIT p_batch_size
        FOR UPDATE SKIP LOCKED
    ), deleted AS (
        DELETE FROM pgqueue.tasks AS t USING doomed WHERE t.id = doomed.id RETURNING 1
    )
    SELECT count(*)::integer FROM deleted;
$$;

-- ===========================================================================================
-- sql/operations.sql
-- ===========================================================================================

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
    coalesce(c.failed_last_minute, 0) AS failed_last_minute
FROM counts AS c
FULL JOIN pgqueue.paused_queues AS p ON p.queue = c.queue;

COMMENT ON VIEW pgqueue.queue_stats IS
    'One row per queue (with tasks, or paused): tasks per status, due (runnable now) and '
    'scheduled (later) counts, oldest_pending_seconds (how long the oldest due task has '
    'waited since its run_at), completed and failed in the last minute, paused.';

-- Tasks that could run now but no worker has started: a backlog, a paused queue, or no
-- worker listening on the queue.
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

-- ===========================================================================================
-- sql/outbox.sql
-- ===========================================================================================

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
-- Records missing (queued with status tracking off) are created first.
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

    UPDATE pgqueue.tasks AS t
    SET status = 'RUNNING',
        attempts = greatest(t.attempts, m.attempts) + 1,
        started_at = now(),
        finished_at = NULL,
        worker_id = p_worker_id,
        lease_token = t.lease_token + 1,
        lease_expires_at = NULL   -- RabbitMQ redelivers; the database rescue must not touch it
    FROM unnest(p_ids, p_attempts) AS m(id, attempts)
    WHERE t.id = m.id
      AND ((t.status IN ('PENDING', 'RETRYING') AND t.attempts <= m.attempts)
           OR (t.status = 'RUNNING' AND t.attempts <= m.attempts + 1))
    RETURNING t.id, t.attempts, t.lease_token;
$$;

-- ===========================================================================================
-- sql/features.sql
-- ===========================================================================================

-- pgqueue features beyond the seed: unique tasks, results one can wait for, cron schedules,
-- the task names each worker runs (for `pgqueue tasks explain`). Runs after functions.sql
-- and operations.sql, so it adds columns with ALTER TABLE. docs/features.md explains each.

-- ===========================================================================================
-- Unique tasks: `.delay(unique_key=...)` returns the id of the unfinished task that holds
-- the key instead of queueing another.
-- ===========================================================================================

ALTER TABLE pgqueue.tasks
    ADD COLUMN unique_key text CHECK (unique_key <> '' AND length(unique_key) <= 1024);

-- At most one unfinished task per key. RUNNING belongs to the set on purpose: a running
-- task that fails or raises Retry goes back to RETRYING, which would collide with a
-- successor queued under its key meanwhile. Producers insert with ON CONFLICT on this
-- index (never read-then-write), so concurrent producers agree on one task.
CREATE UNIQUE INDEX tasks_unique_key_idx ON pgqueue.tasks (unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('PENDING', 'RETRYING', 'RUNNING');

-- ===========================================================================================
-- Results one can wait for: `tm.wait(task_id)` LISTENs on "pgqueue.results" and registers
-- here; a status change notifies only the ids of waited-for tasks that have finished.
-- ===========================================================================================

CREATE TABLE pgqueue.result_waiters (
    id         uuid PRIMARY KEY,
    task_id    uuid NOT NULL,
    -- A waiter that died without deleting its row stops counting at its timeout.
    expires_at timestamptz NOT NULL
);

-- One call per UPDATE statement (never per row). With nobody waiting, the usual case, it
-- costs one probe of an empty table and sends nothing, so the completion path stays cheap.
CREATE FUNCTION pgqueue.notify_results() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgqueue.result_waiters WHERE expires_at > now()) THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('pgqueue.results', finished.task_id::text)
    FROM (
        SELECT DISTINCT w.task_id
        FROM pgqueue.result_waiters AS w
        JOIN pgqueue.tasks AS t ON t.id = w.task_id
        WHERE w.expires_at > now() AND t.status IN ('COMPLETED', 'FAILED', 'CANCELLED')
    ) AS finished;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_notify_results
    AFTER UPDATE OF status ON pgqueue.tasks
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.notify_results();

-- ===========================================================================================
-- Cron: `@AsyncTask(cron="0 9 * * *")`. Workers that import the task record its schedule
-- here and queue each occurrence; the primary key of cron_runs lets exactly one of them
-- queue a given occurrence, however many race.
-- ===========================================================================================

CREATE TABLE pgqueue.cron_schedules (
    name            text PRIMARY KEY,
    cron            text NOT NULL,
    timezone        text NOT NULL,
    queue           text NOT NULL,
    catchup_seconds double precision NOT NULL CHECK (catchup_seconds >= 0),
    -- Occurrences before a schedule was first seen were never missed: none is caught up.
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgqueue.cron_runs (
    name         text NOT NULL,
    scheduled_at timestamptz NOT NULL,
    task_id      uuid NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, scheduled_at)
);

-- ===========================================================================================
-- The task names each worker can run (NULL: not reported), for `pgqueue tasks explain`.
-- ===========================================================================================

ALTER TABLE pgqueue.workers ADD COLUMN task_names text[];
