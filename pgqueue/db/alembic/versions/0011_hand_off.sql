-- Revision 0011: workflows, faster.
-- - complete_and_hand_off (new): a completion hands the children it makes ready to the
--   worker that completed their parents, in its own transaction.
-- - release_children: copied from sql/functions.sql as revision 0008 made it; the one change
--   is that it leaves the wake-up of the queues it made tasks ready in to
--   complete_and_hand_off when that runs it (the transaction's pgqueue.hand_off setting).
-- - WAITING counted: the view queue_stats gets the column waiting (metrics, pgqueue status),
--   and the partial index tasks_waiting_idx serves the dashboard's count.

-- name: release_children
-- Parents that just became COMPLETED: each child has one parent fewer left; a WAITING child
-- with none left becomes PENDING (due at the run_at it was queued with) and its workers are
-- woken (by complete_and_hand_off instead, when it runs this). Event: "ready" (details:
-- parent, the one that released it).
CREATE OR REPLACE FUNCTION pgqueue.release_children(p_parents uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    children uuid[];
    queues text[];
BEGIN
    SELECT array_agg(DISTINCT d.child_id) INTO children
    FROM pgqueue.task_dependencies AS d
    WHERE d.parent_id = ANY (p_parents);
    IF children IS NULL THEN
        RETURN;  -- no workflow: one probe of the primary key per parent
    END IF;
    PERFORM 1 FROM pgqueue.tasks AS t WHERE t.id = ANY (children) ORDER BY t.id FOR UPDATE;
    WITH edges AS (
        SELECT d.child_id, count(*)::integer AS n,
               (array_agg(d.parent_id ORDER BY d.parent_id))[1] AS parent
        FROM pgqueue.task_dependencies AS d
        WHERE d.parent_id = ANY (p_parents)
        GROUP BY d.child_id
    ), targets AS (
        SELECT t.id, e.n, e.parent, t.status = 'WAITING' AND t.parents_left <= e.n AS ready
        FROM edges AS e
        JOIN pgqueue.tasks AS t ON t.id = e.child_id
    ), moved AS (
        UPDATE pgqueue.tasks AS t
        SET parents_left = t.parents_left - x.n,
            status = CASE WHEN x.ready THEN 'PENDING' ELSE t.status END::pgqueue.task_status
        FROM targets AS x
        WHERE t.id = x.id
        RETURNING t.id, t.queue, t.attempts, x.ready, x.parent
    ), recorded AS (
        INSERT INTO pgqueue.task_events (task_id, event, attempt, details)
        SELECT m.id, 'ready', m.attempts, jsonb_build_object('parent', m.parent)
        FROM moved AS m
        WHERE m.ready AND pgqueue.history_enabled()
    )
    SELECT array_agg(DISTINCT m.queue) FILTER (WHERE m.ready) INTO queues FROM moved AS m;
    IF current_setting('pgqueue.hand_off', true) IS DISTINCT FROM 'on' THEN
        -- (complete_and_hand_off wakes the queues of the children it does not take)
        PERFORM pg_notify('pgqueue.tasks', q) FROM unnest(queues) AS q;
    END IF;
END;
$$;


-- name: complete_and_hand_off
-- complete_tasks, and then the hand-off of the children it made ready to the worker that
-- completed their parents, in the same transaction: up to p_slots of them (the worker's
-- free slots) that are due, of a queue in p_queues and not paused, RUNNING under its lease
-- with a fresh fencing token and started now, as the claim marks the tasks it starts
-- (queries.sql, claim_tasks: the same columns, the same "started" event). The worker starts
-- them without a claim's round trip, and nobody is woken for them: a chain step costs one
-- statement. A child handed off goes ahead of the queue's order (it was just made ready; a
-- higher priority task of its queue waits for the worker's next claim). The queues of the
-- ready children it does not take are woken, as release_children would have (it is told
-- not to, through the transaction's pgqueue.hand_off setting). Rows: (false, id) for each
-- completion accepted, then (true, the claim's columns) for each task handed off.
CREATE OR REPLACE FUNCTION pgqueue.complete_and_hand_off(
    p_ids uuid[], p_tokens integer[], p_results jsonb[], p_started timestamptz[],
    p_worker_id text, p_queues text[], p_slots integer, p_lease_seconds double precision
) RETURNS TABLE (
    handed_off boolean, task_id uuid, task_name text, task_queue text, task_priority smallint,
    task_kwargs text, task_attempts integer, task_max_retries integer, task_run_at timestamptz,
    task_created_at timestamptz, task_started_at timestamptz, task_error text,
    task_worker_id text, task_lease_expires_at timestamptz, task_lease_token integer,
    task_unique_key text, task_trace_context jsonb
)
-- Generic plans for every statement it runs (complete_tasks' and release_children's too):
-- planned once per connection, not at each call. Each takes its rows from the primary key
-- of the ids it is given, whatever their number, so no custom plan does better; replanning
-- them was about a fifth of a chain step (0.2 of 1.0 ms).
SET plan_cache_mode = force_generic_plan
LANGUAGE plpgsql AS $$
DECLARE
    accepted uuid[];
    children uuid[];
BEGIN
    PERFORM set_config('pgqueue.hand_off', 'on', true);
    SELECT array_agg(c.id) INTO accepted
    FROM pgqueue.complete_tasks(p_ids, p_tokens, p_results, p_started) AS c(id);
    PERFORM set_config('pgqueue.hand_off', '', true);
    RETURN QUERY SELECT false, a.id, NULL::text, NULL::text, NULL::smallint, NULL::text,
                        NULL::integer, NULL::integer, NULL::timestamptz, NULL::timestamptz,
                        NULL::timestamptz, NULL::text, NULL::text, NULL::timestamptz,
                        NULL::integer, NULL::text, NULL::jsonb
                 FROM unnest(accepted) AS a(id);
    SELECT array_agg(DISTINCT d.child_id) INTO children
    FROM pgqueue.task_dependencies AS d
    WHERE d.parent_id = ANY (accepted);
    IF children IS NULL THEN
        RETURN;  -- no workflow: one probe of the primary key per completion
    END IF;
    -- Statements of their own: their snapshots see what release_children changed.
    RETURN QUERY
    WITH ready AS (
        SELECT t.id
        FROM pgqueue.tasks AS t
        WHERE t.id = ANY (children)
          AND t.status = 'PENDING' AND t.run_at <= now()
          -- A child holding limit keys or a fair key waits for the keyed claim, which
          -- decides its admission (sql/limits.sql): a hand-off must not bypass a limit.
          AND t.limit_keys IS NULL AND t.fair_key IS NULL
          AND t.queue = ANY (p_queues)
          AND t.queue <> ALL (ARRAY(SELECT q.queue FROM pgqueue.paused_queues AS q))
        ORDER BY t.priority DESC, t.run_at, t.id
        LIMIT greatest(p_slots, 0)
        FOR UPDATE OF t SKIP LOCKED
    ), claimed AS (
        UPDATE pgqueue.tasks AS t
        SET status = 'RUNNING', attempts = t.attempts + 1, started_at = now(),
            worker_id = p_worker_id,
            lease_expires_at = now() + make_interval(secs => p_lease_seconds),
            lease_token = t.lease_token + 1
        WHERE t.id = ANY (ARRAY(SELECT ready.id FROM ready))
        RETURNING t.*
    ), started AS (
        INSERT INTO pgqueue.task_events (task_id, at, event, attempt, worker_id)
        SELECT c.id, c.started_at, 'started', c.attempts, c.worker_id
        FROM claimed AS c
        WHERE pgqueue.history_enabled()
    )
    SELECT true, c.id, c.name, c.queue, c.priority, c.kwargs::text, c.attempts, c.max_retries,
           c.run_at, c.created_at, c.started_at, c.error, c.worker_id, c.lease_expires_at,
           c.lease_token, c.unique_key, c.trace_context
    FROM claimed AS c
    ORDER BY c.priority DESC, c.run_at, c.id;
    PERFORM pg_notify('pgqueue.tasks', q.queue)
    FROM (SELECT DISTINCT t.queue FROM pgqueue.tasks AS t
          WHERE t.id = ANY (children) AND t.status = 'PENDING') AS q;
END;
$$;


-- queue_stats (sql/operations.sql): the column waiting, added last (columns are only
-- added to the views).
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
        -- As text: the migrations run in one transaction, which may not name the value
        -- WAITING that it added to the type (revision 0008).
        count(*) FILTER (WHERE t.status::text = 'WAITING') AS waiting,
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
    coalesce(c.failed_last_minute, 0) AS failed_last_minute,
    -- Added by revision 0011, hence last: tasks waiting for their parents (workflows).
    coalesce(c.waiting, 0) AS waiting
FROM counts AS c
FULL JOIN pgqueue.paused_queues AS p ON p.queue = c.queue;

-- Tasks waiting for their parents, by queue: the dashboard counts them from this index alone
-- (revision 0011). Only WAITING rows enter it, so a task without parents never costs it.
-- "> 'CANCELLED'" is WAITING, the one value after it (added last, by revision 0008): the
-- migrations run in one transaction, which may not name a value it added to the type.
CREATE INDEX tasks_waiting_idx ON pgqueue.tasks (queue) WHERE status > 'CANCELLED';
