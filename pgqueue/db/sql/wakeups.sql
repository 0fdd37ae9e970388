-- pgqueue wake-ups: how producers wake the workers asleep on LISTEN. Runs after limits.sql
-- (its column comes last, as revision 0012 added it after 0010's).

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
