-- Workers asleep on their LISTEN connection, a row per worker and queue (the announcement
-- of queries.sql, announce_sleep). Unlogged: nothing here needs to survive a crash, and a
-- worker announces again whenever its LISTEN connection comes back.
CREATE UNLOGGED TABLE pgqueue.sleeping_workers (
    queue      text NOT NULL,
    worker_id  text NOT NULL,
    since      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, worker_id)
);

-- A wake-up per queue and statement (not per row), and only for a queue that has a
-- sleeping worker: a busy worker claims again by itself, and NOTIFY is costly (it takes a
-- database-wide lock at commit, so notifying commits cannot share a WAL flush). The
-- payload is the queue name.
--
-- No wake-up is lost between a producer that looks before a worker's announcement is
-- visible and a worker whose last claim ran before the producer's commit: the producer
-- holds a shared per-queue advisory lock from its insert to its commit, and the worker
-- announces with a try-lock of the same key that fails while any such producer is in
-- flight (it then looks again shortly; see announce_sleep). A producer that takes its lock
-- after the worker's statement sees the announcement, as its EXISTS takes a fresh snapshot.
-- Under REPEATABLE READ or SERIALIZABLE the snapshot is the transaction's, older than the
-- lock, so those producers always notify.
CREATE OR REPLACE FUNCTION pgqueue.notify_new_tasks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtext('pgqueue.wake'), hashtext(queue))
    FROM (SELECT DISTINCT queue FROM new_tasks) AS queues;
    -- A statement of its own, so its snapshot is taken after the locks.
    PERFORM pg_notify('pgqueue.tasks', queue)
    FROM (SELECT DISTINCT queue FROM new_tasks) AS queues
    WHERE current_setting('transaction_isolation') <> 'read committed'
       OR EXISTS (SELECT FROM pgqueue.sleeping_workers AS s WHERE s.queue = queues.queue);
    RETURN NULL;
END;
$$;
