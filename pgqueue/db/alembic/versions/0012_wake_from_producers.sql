-- Revision 0012: producers wake sleeping workers themselves (the same section of
-- sql/wakeups.sql). pgqueue's inserts look for a sleeping worker in the statement
-- that writes (queries.sql insert_task, insert_unique_tasks; wake_copied_queues after a COPY)
-- and mark their rows producer_wakes; the insert trigger becomes a row trigger that only rows
-- written by other SQL fire, and the per-queue advisory lock is gone: a worker's announcement
-- now settles on a SHARE try-lock of the table (lock_out_writers), which every writer's own
-- ROW EXCLUSIVE lock already conflicts with.
-- notify_new_tasks is rewritten (row level, from revision 0004's statement-level function).

DROP TRIGGER tasks_notify_insert ON pgqueue.tasks;
DROP FUNCTION pgqueue.notify_new_tasks();

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
