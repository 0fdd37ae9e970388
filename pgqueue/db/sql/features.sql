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

-- ===========================================================================================
-- OpenTelemetry (docs/opentelemetry.md): the trace context current at .delay(), as the
-- carrier the app's propagator writes ({"traceparent": ..., "tracestate": ...}); NULL when
-- tracing is off. The run's span continues that trace.
-- ===========================================================================================

ALTER TABLE pgqueue.tasks ADD COLUMN trace_context jsonb;
-- Workflows: a task with parents (pgqueue.task_dependencies, sql/schema.sql) is queued
-- WAITING and becomes PENDING in the transaction that completes its last parent
-- (release_children); a parent ending FAILED or CANCELLED cancels it (cancel_children)
-- unless it said on_parent_failure = 'run'; a retry of that parent revives it
-- (revive_children). docs/features.md, "Workflows".
-- ===========================================================================================

ALTER TABLE pgqueue.tasks
    -- Parents not settled yet: not COMPLETED (nor, for on_parent_failure 'run', FAILED or
    -- CANCELLED). Kept exact by every change of a parent, each an UPDATE of this row, so
    -- parents finishing at once in different transactions serialize on it and the last
    -- one sees 0.
    ADD COLUMN parents_left integer NOT NULL DEFAULT 0,
    ADD COLUMN on_parent_failure text NOT NULL DEFAULT 'cancel'
        CHECK (on_parent_failure IN ('cancel', 'run')),
    -- The parent whose failure or cancel cancelled this task: a retry of it revives this one.
    ADD COLUMN cancelled_by uuid;

-- ===========================================================================================
-- Wake-ups (#20): a NOTIFY per queue, only while a worker of that queue sleeps on LISTEN
-- (pgqueue.sleeping_workers, sql/schema.sql). NOTIFY is costly: it takes a database-wide
-- lock at commit, so notifying commits cannot share a WAL flush; and a busy worker claims
-- again by itself. The payload is the queue name.
--
-- pgqueue's producers look for a sleeping worker in the statement that writes the rows
-- (insert_task, insert_unique_tasks in queries.sql) or in one statement after a COPY
-- (wake_copied_queues), and mark their rows producer_wakes; for rows written by any other
-- SQL, the insert trigger below looks. A row trigger whose WHEN is false queues no event,
-- so pgqueue's own inserts pay neither a trigger call nor a transition table for it.
--
-- No wake-up is lost between a producer that looked before a worker's announcement was
-- visible and a worker whose last claim ran before that producer committed. Every writer of
-- pgqueue.tasks holds ROW EXCLUSIVE on it from its first write to its end, taken before the
-- snapshot of the statement that writes (at parse or bind) and so before every look of its
-- (each in that statement or a later one). The worker announces and tries a SHARE lock on
-- the table without waiting, in one transaction (announce_sleep): the try fails while any
-- writer is in flight (the worker then looks again soon, its announcement standing), and a
-- writer that takes its lock after the worker's commit sees the announcement. So a
-- transaction needs to look once per queue, after its first write. Under REPEATABLE READ or
-- SERIALIZABLE the snapshot is the transaction's, maybe older than the lock, so those
-- producers always notify.
-- ===========================================================================================

ALTER TABLE pgqueue.tasks
    -- True when the statement that wrote the row woke the workers of its queue itself
    -- (pgqueue's producers); false, the default, for rows written by other SQL.
    ADD COLUMN producer_wakes boolean NOT NULL DEFAULT false;

-- Rows written by other SQL: a look per row, the first of each queue in a transaction doing
-- the work (the queue looked at last is remembered in a setting local to the transaction;
-- see above for why once is enough).
CREATE FUNCTION pgqueue.notify_new_tasks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('pgqueue.woken_queue', true) IS DISTINCT FROM NEW.queue THEN
        PERFORM set_config('pgqueue.woken_queue', NEW.queue, true);
        -- A statement of its own, so its snapshot is taken after the row's lock.
        PERFORM pg_notify('pgqueue.tasks', NEW.queue)
        WHERE current_setting('transaction_isolation') <> 'read committed'
           OR EXISTS (SELECT FROM pgqueue.sleeping_workers AS s WHERE s.queue = NEW.queue);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_notify_insert
    AFTER INSERT ON pgqueue.tasks
    FOR EACH ROW WHEN (NOT NEW.producer_wakes)
    EXECUTE FUNCTION pgqueue.notify_new_tasks();

-- name: lock_out_writers
-- True if no transaction is writing pgqueue.tasks: this transaction then holds a SHARE lock
-- on it, so writers that come later wait for its commit (an instant: it only announces a
-- sleep) and see what it wrote. False, at once, if a writer holds its lock (or VACUUM runs).
CREATE FUNCTION pgqueue.lock_out_writers() RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    LOCK TABLE pgqueue.tasks IN SHARE MODE NOWAIT;
    RETURN true;
EXCEPTION WHEN lock_not_available THEN
    RETURN false;
END;
$$;
