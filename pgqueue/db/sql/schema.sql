-- pgqueue schema: the task table, its status type, indexes and who sleeps on LISTEN.
-- Every object is qualified with the "pgqueue." schema; pgqueue rewrites that prefix
-- when the schema setting names another schema.

CREATE SCHEMA IF NOT EXISTS pgqueue;

-- WAITING (added by revision 0008, hence last): queued with parents not all COMPLETED yet
-- (workflows, sql/features.sql); outside the runnable index, so the claim never reads it.
CREATE TYPE pgqueue.task_status AS ENUM
    ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'RETRYING', 'CANCELLED', 'WAITING');

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

-- Only runnable rows: finished tasks never slow the claim, however many pile up. Narrowed
-- to rows without limit or fair keys by sql/limits.sql (revision 0010), which gives keyed
-- rows an index of their own.
CREATE INDEX tasks_runnable_idx ON pgqueue.tasks (queue, priority DESC, run_at, id)
    WHERE status IN ('PENDING', 'RETRYING');

-- Running rows by lease expiry, for the rescue of tasks whose worker vanished.
CREATE INDEX tasks_leases_idx ON pgqueue.tasks (lease_expires_at)
    WHERE status = 'RUNNING';

-- Finished rows by age, for cleanup in bounded batches.
CREATE INDEX tasks_finished_idx ON pgqueue.tasks (finished_at)
    WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED');

-- FAILED and CANCELLED rows in id (creation) order, for the dashboard's failures and its
-- task list filtered by those statuses: few rows, so it costs the lifecycle little. The
-- queue is included so that the counts per queue read the index alone (revision 0009).
CREATE INDEX tasks_problems_idx ON pgqueue.tasks (status, id) INCLUDE (queue)
    WHERE status IN ('FAILED', 'CANCELLED');

-- Workers asleep on their LISTEN connection, a row per worker and queue (the announcement
-- of queries.sql, announce_sleep). Unlogged: nothing here needs to survive a crash, and a
-- worker announces again whenever its LISTEN connection comes back.
CREATE UNLOGGED TABLE pgqueue.sleeping_workers (
    queue      text NOT NULL,
    worker_id  text NOT NULL,
    since      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, worker_id)
);

-- Producers wake the workers of a queue only while one of them sleeps there: pgqueue's own
-- inserts in the statement that writes the rows, other SQL through the insert trigger. Both
-- are in sql/wakeups.sql, after the column that tells them apart.

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
-- History: one row per change of a task's state, written by the statement that makes the
-- change (the lifecycle functions of functions.sql, the claim of queries.sql, the trigger
-- below for new rows), so it commits or rolls back with it. docs/features.md, "History".
-- ===========================================================================================

-- Events: enqueued, started, completed, failed, retry_scheduled, rescued, cancelled,
-- retried, released; for workflows (sql/features.sql) ready, waiting and cancelled with the
-- parent in details. `attempt` is the task's attempt count after the change; `id` orders a
-- task's events exactly (each is written under the task's row lock, so a later change of a
-- task always draws a larger id). No foreign key: it would cost a lookup per event;
-- cleanup and purge delete a task's events with the task instead.
CREATE TABLE pgqueue.task_events (
    task_id   uuid NOT NULL,
    id        bigint GENERATED ALWAYS AS IDENTITY,
    at        timestamptz NOT NULL DEFAULT now(),
    event     text NOT NULL,
    attempt   integer NOT NULL,
    worker_id text,
    error     text,
    details   jsonb,
    -- A task's timeline is one scan of this index, however many events the table holds.
    PRIMARY KEY (task_id, id)
);

-- The switch: history is kept unless this row says otherwise (`pgqueue history off`).
-- One row at most; it holds for every process using the database, so a task's history is
-- never half written by processes that disagree.
CREATE TABLE pgqueue.history_settings (
    single_row boolean PRIMARY KEY DEFAULT true CHECK (single_row),
    enabled    boolean NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);

-- name: history_enabled
-- Whether lifecycle statements write events; read once per statement (a one-time filter),
-- so the switch costs no round trip. The dashboard reads it to say when history is off.
-- PL/pgSQL, not SQL: a SQL function with a sub-SELECT is never inlined, and a SQL function
-- not inlined is planned again in every statement that calls it (40 us, a sixth of a chain
-- step); PL/pgSQL keeps its plan for the session.
CREATE FUNCTION pgqueue.history_enabled() RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN coalesce((SELECT s.enabled FROM pgqueue.history_settings AS s), true);
END;
$$;

-- name: set_history
-- Turn history on or off for every process using the database; returns the previous state.
CREATE FUNCTION pgqueue.set_history(p_enabled boolean) RETURNS boolean
LANGUAGE sql AS $$
    WITH previous AS (SELECT pgqueue.history_enabled() AS enabled)
    INSERT INTO pgqueue.history_settings AS s (enabled) VALUES (p_enabled)
    ON CONFLICT (single_row) DO UPDATE SET enabled = excluded.enabled, changed_at = now()
    RETURNING (SELECT enabled FROM previous);
$$;

-- "enqueued" for every new row, once per statement: one INSERT, a COPY of 100,000 rows,
-- a unique insert, a cron occurrence or a RabbitMQ record alike.
CREATE FUNCTION pgqueue.record_enqueued() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgqueue.task_events (task_id, at, event, attempt, details)
    SELECT n.id, n.created_at, 'enqueued', n.attempts,
           CASE WHEN n.status = 'PENDING' THEN
                    CASE WHEN n.run_at > n.created_at THEN jsonb_build_object('run_at', n.run_at) END
                -- A workflow's member: WAITING for its parents (or CANCELLED by one that failed).
                ELSE jsonb_strip_nulls(jsonb_build_object(
                    'run_at', CASE WHEN n.run_at > n.created_at THEN n.run_at END,
                    'status', n.status,
                    'waiting_for', CASE WHEN n.status = 'WAITING' THEN n.parents_left END,
                    'parent', n.cancelled_by)) END
    FROM new_tasks AS n
    WHERE pgqueue.history_enabled();
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_history_insert
    AFTER INSERT ON pgqueue.tasks
    REFERENCING NEW TABLE AS new_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.record_enqueued();

-- ===========================================================================================
-- Workflows: the edges of task dependencies (`.delay(depends_on=...)`, chain, group, chord).
-- Here rather than in features.sql, beside the columns they use, so that the lifecycle
-- functions of functions.sql can name the table. docs/features.md, "Workflows".
-- ===========================================================================================

-- One row per (parent, child): the child waits for the parent. Written with the child, in
-- its transaction; deleted with the child (cleanup, purge), never changed.
CREATE TABLE pgqueue.task_dependencies (
    parent_id uuid NOT NULL,
    child_id  uuid NOT NULL,
    -- A parent's children, read by the transaction that finishes the parent.
    PRIMARY KEY (parent_id, child_id)
);

-- A child's parents: `parent_results()`, `tasks show`, cleanup.
CREATE INDEX task_dependencies_child_idx ON pgqueue.task_dependencies (child_id);
