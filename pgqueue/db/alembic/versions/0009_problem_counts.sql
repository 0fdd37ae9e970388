-- FAILED and CANCELLED rows in id (creation) order, now with their queue: the dashboard's
-- counts per queue read the index alone. Same rows as before, so the lifecycle pays nothing
-- more (a completed task never enters it).
DROP INDEX IF EXISTS pgqueue.tasks_problems_idx;
CREATE INDEX tasks_problems_idx ON pgqueue.tasks (status, id) INCLUDE (queue)
    WHERE status IN ('FAILED', 'CANCELLED');
