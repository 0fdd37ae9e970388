-- Revision 0013: a chain step costs a third of what it did (docs/performance.md, workflows).
-- - release_children: hands the children it makes ready to the worker that completed their
--   parents (WAITING to RUNNING in one update, no PENDING in between), and finds every row
--   by its key; it now returns the rows handed off, so it is dropped and made again.
-- - complete_and_hand_off: the completion itself (it was complete_tasks'), then
--   release_children with the worker's offer; the pgqueue.hand_off setting is gone.
-- - complete_tasks: complete_and_hand_off with no slot to hand off.
-- - history_enabled: PL/pgSQL, so that its plan is kept (sql/schema.sql says why).
-- Copied from sql/schema.sql and sql/functions.sql.

CREATE OR REPLACE FUNCTION pgqueue.history_enabled() RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN coalesce((SELECT s.enabled FROM pgqueue.history_settings AS s), true);
END;
$$;

DROP FUNCTION pgqueue.release_children(uuid[]);

-- name: release_children
-- Parents that just became COMPLETED: each child has one parent fewer left; a WAITING child
-- with none left is ready. Up to p_slots ready children that the worker p_worker_id may
-- take (due, unkeyed, of a queue in p_queues and not paused; the claim's rules) go
-- straight to RUNNING under its lease, as the claim marks a task it starts (queries.sql,
-- claim_tasks: fresh fencing token, "started"), and come back: the hand-off of
-- complete_and_hand_off. The other ready ones become PENDING (due at the run_at they were
-- queued with) and their queues are woken. Events: "ready" (details: parent, the one that
-- released it), then "started" for a child handed off.
-- Plans: every row is found by its key (LATERAL lookups; the children updated by TID, safe
-- since they were locked by a statement before, so this one's snapshot sees the versions
-- locked), so that a chain step does not scan a small table: a hash join over a sequential
-- scan was half of a step.
CREATE OR REPLACE FUNCTION pgqueue.release_children(
    p_parents uuid[], p_worker_id text DEFAULT NULL, p_queues text[] DEFAULT NULL,
    p_slots integer DEFAULT 0, p_lease_seconds double precision DEFAULT NULL
) RETURNS SETOF pgqueue.tasks
LANGUAGE plpgsql AS $$
DECLARE
    children uuid[];
    claimed pgqueue.tasks[];
    queues text[];
BEGIN
    SELECT array_agg(DISTINCT d.child_id) INTO children
    FROM unnest(p_parents) AS p(id)
    CROSS JOIN LATERAL (SELECT d.child_id FROM pgqueue.task_dependencies AS d
                        WHERE d.parent_id = p.id OFFSET 0) AS d;
    IF children IS NULL THEN
        RETURN;  -- no workflow: one probe of the primary key per parent
    END IF;
    PERFORM 1
    FROM (SELECT c.id FROM unnest(children) AS c(id) ORDER BY c.id) AS c
    CROSS JOIN LATERAL (SELECT FROM pgqueue.tasks AS t WHERE t.id = c.id LIMIT 1 FOR UPDATE) AS l;
    WITH edges AS (
        SELECT d.child_id, count(*)::integer AS n,
               (array_agg(p.id ORDER BY p.id))[1] AS parent
        FROM unnest(p_parents) AS p(id)
        CROSS JOIN LATERAL (SELECT d.child_id FROM pgqueue.task_dependencies AS d
                            WHERE d.parent_id = p.id OFFSET 0) AS d
        GROUP BY d.child_id
    ), targets AS (
        SELECT t.tid, t.id, e.n, e.parent,
               t.status = 'WAITING' AND t.parents_left <= e.n AS ready,
               t.queue, t.priority, t.run_at,
               t.limit_keys IS NULL AND t.fair_key IS NULL AS unkeyed
        FROM edges AS e
        CROSS JOIN LATERAL (SELECT t.ctid AS tid, t.* FROM pgqueue.tasks AS t
                            WHERE t.id = e.child_id LIMIT 1) AS t
    ), taken AS (
        -- A child holding limit keys or a fair key waits for the keyed claim, which
        -- decides its admission (sql/limits.sql): a hand-off must not bypass a limit.
        SELECT x.id
        FROM targets AS x
        WHERE p_slots > 0 AND x.ready AND x.unkeyed AND x.run_at <= now()
          AND x.queue = ANY (p_queues)
          AND x.queue <> ALL (ARRAY(SELECT q.queue FROM pgqueue.paused_queues AS q))
        ORDER BY x.priority DESC, x.run_at, x.id
        LIMIT greatest(p_slots, 0)
    ), decided AS (
        SELECT x.*, k.id IS NOT NULL AS takes
        FROM targets AS x LEFT JOIN taken AS k ON k.id = x.id
    ), moved AS (
        UPDATE pgqueue.tasks AS t
        SET parents_left = t.parents_left - x.n,
            status = CASE WHEN x.takes THEN 'RUNNING' WHEN x.ready THEN 'PENDING'
                          ELSE t.status END::pgqueue.task_status,
            attempts = CASE WHEN x.takes THEN t.attempts + 1 ELSE t.attempts END,
            started_at = CASE WHEN x.takes THEN now() ELSE t.started_at END,
            worker_id = CASE WHEN x.takes THEN p_worker_id ELSE t.worker_id END,
            lease_expires_at = CASE WHEN x.takes
                                    THEN now() + make_interval(secs => p_lease_seconds)
                                    ELSE t.lease_expires_at END,
            lease_token = CASE WHEN x.takes THEN t.lease_token + 1 ELSE t.lease_token END
        FROM decided AS x
        WHERE t.ctid = ANY (ARRAY(SELECT x.tid FROM targets AS x)) AND t.id = x.id
        RETURNING t AS task, x.ready, x.takes, x.parent
    ), recorded AS (
        INSERT INTO pgqueue.task_events (task_id, at, event, attempt, worker_id, details)
        SELECT (m.task).id, now(), e.event,
               (m.task).attempts - CASE WHEN m.takes AND e.step = 1 THEN 1 ELSE 0 END,
               CASE WHEN e.step = 2 THEN (m.task).worker_id END,
               CASE WHEN e.step = 1 THEN jsonb_build_object('parent', m.parent) END
        FROM moved AS m
        CROSS JOIN LATERAL (VALUES (1, 'ready'), (2, 'started')) AS e(step, event)
        WHERE m.ready AND (e.step = 1 OR m.takes) AND pgqueue.history_enabled()
        ORDER BY (m.task).id, e.step
    )
    SELECT array_agg(m.task) FILTER (WHERE m.takes),
           array_agg(DISTINCT (m.task).queue) FILTER (WHERE m.ready AND NOT m.takes)
    INTO claimed, queues
    FROM moved AS m;
    PERFORM pg_notify('pgqueue.tasks', q) FROM unnest(queues) AS q;
    RETURN QUERY SELECT * FROM unnest(claimed);
END;
$$;


-- name: complete_and_hand_off
-- Record the results of finished runs (fenced by their lease tokens) and advance their
-- children in the same transaction (release_children), handing the ready ones to the worker
-- that completed their parents for up to p_slots of its free slots: it starts them without
-- a claim's round trip, and nobody is woken for them: a chain step is one statement. A
-- child handed off goes ahead of the queue's order (it was just made ready; a higher
-- priority task of its queue waits for the worker's next claim). p_started (optional, per
-- task): when a run claimed ahead of a free slot really started. Events: "completed", after
-- "started" for a run whose start this records. Rows: (false, id) for each completion
-- accepted, then (true, the claim's columns) for each task handed off.
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
-- Generic plans for every statement it runs (release_children's too): planned once per
-- connection, not at each call; replanning them was a fifth of a chain step. Each finds its
-- rows by key whatever their number, and the cost of random pages that of an SSD, so that
-- a generic plan reads them by index or TID, not by a scan of a small table.
SET plan_cache_mode = force_generic_plan
SET random_page_cost = 1.1
LANGUAGE plpgsql AS $$
DECLARE
    accepted uuid[];
BEGIN
    WITH done AS (
        SELECT * FROM unnest(p_ids, p_tokens, p_results, p_started)
            AS done(id, token, result, started_at)
        ORDER BY done.id
    ), held AS (
        -- Locked first (in id order, as producers lock the parents they name: no
        -- deadlock), so that whether the start is recorded here (started_at NULL) is read
        -- from the latest row, not from a heartbeat's concurrent write recording it.
        SELECT l.id, done.result, done.started_at,
               l.started_at IS NULL AND done.started_at IS NOT NULL AS starts
        FROM done
        CROSS JOIN LATERAL (
            -- status::text (not status): the planner then cannot take the row from the
            -- partial index of RUNNING rows (estimated 1 row, always stale on a queue
            -- table), which made completions O(n^2); LIMIT keeps this a lookup per element.
            SELECT t.id, t.started_at FROM pgqueue.tasks AS t
            WHERE t.id = done.id AND t.lease_token = done.token AND t.status::text = 'RUNNING'
            LIMIT 1
            FOR UPDATE
        ) AS l
    ), completed AS (
        UPDATE pgqueue.tasks AS t
        SET status = 'COMPLETED', result = held.result, finished_at = now(),
            lease_expires_at = NULL, started_at = coalesce(held.started_at, t.started_at)
        FROM held
        -- By id, not by the TID held locked: when a heartbeat changed the row after this
        -- statement's snapshot, the lock returns the new version, which a TID scan under
        -- that snapshot does not see (the completion was refused as a lost lease); the
        -- scan by id finds the version the snapshot sees and follows it to the new one.
        WHERE t.id = ANY (ARRAY(SELECT held.id FROM held)) AND t.id = held.id
        RETURNING t.id, t.attempts, t.worker_id, t.started_at, held.starts
    ), recorded AS (
        INSERT INTO pgqueue.task_events (task_id, at, event, attempt, worker_id)
        SELECT c.id, e.at, e.event, c.attempts, c.worker_id
        FROM completed AS c
        CROSS JOIN LATERAL (VALUES (1, c.started_at, 'started'), (2, now(), 'completed'))
            AS e(step, at, event)
        WHERE (e.step = 2 OR c.starts) AND pgqueue.history_enabled()
        ORDER BY c.id, e.step
    )
    SELECT array_agg(completed.id) INTO accepted FROM completed;
    IF accepted IS NULL THEN
        RETURN;
    END IF;
    PERFORM pgqueue.give_back_slots(accepted);
    RETURN QUERY SELECT false, a.id, NULL::text, NULL::text, NULL::smallint, NULL::text,
                        NULL::integer, NULL::integer, NULL::timestamptz, NULL::timestamptz,
                        NULL::timestamptz, NULL::text, NULL::text, NULL::timestamptz,
                        NULL::integer, NULL::text, NULL::jsonb
                 FROM unnest(accepted) AS a(id);
    RETURN QUERY
    SELECT true, c.id, c.name, c.queue, c.priority, c.kwargs::text, c.attempts, c.max_retries,
           c.run_at, c.created_at, c.started_at, c.error, c.worker_id, c.lease_expires_at,
           c.lease_token, c.unique_key, c.trace_context
    FROM pgqueue.release_children(accepted, p_worker_id, p_queues, p_slots, p_lease_seconds) AS c
    ORDER BY c.priority DESC, c.run_at, c.id;
END;
$$;


-- name: complete_tasks
-- Record the results of finished runs, many per call; returns the ids it accepted.
-- p_started (optional, per task): when a run claimed ahead of a free slot really started.
-- complete_and_hand_off with no slot to hand off: its children advance, none is claimed.
CREATE OR REPLACE FUNCTION pgqueue.complete_tasks(
    p_ids uuid[], p_tokens integer[], p_results jsonb[], p_started timestamptz[] DEFAULT NULL
) RETURNS SETOF uuid
LANGUAGE sql AS $$
    SELECT c.task_id
    FROM pgqueue.complete_and_hand_off(p_ids, p_tokens, p_results, p_started, NULL, NULL, 0,
                                       NULL) AS c;
$$;

