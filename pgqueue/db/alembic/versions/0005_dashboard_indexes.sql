-- FAILED and CANCELLED rows in id (creation) order, for the dashboard's failures and its
-- task list filtered by those statuses: few rows, so it costs the lifecycle little.
CREATE INDEX IF NOT EXISTS tasks_problems_idx ON pgqueue.tasks (status, id)
    WHERE status IN ('FAILED', 'CANCELLED');
