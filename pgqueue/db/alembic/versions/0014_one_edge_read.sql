-- Revision 0014: release_children reads the edges of the parents it settles once, not twice
-- (docs/performance.md, workflows: a chord's header drains faster).
-- Copied from sql/functions.sql.

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
    -- By child, in id order: how many of p_parents it had, and the first of them.
    children uuid[];
    released integer[];
    releasers uuid[];
    claimed pgqueue.tasks[];
    queues text[];
BEGIN
    -- The edges are read once (one probe of the primary key per parent); for a chord's
    -- header each batch of completions reads as many edges as it completed tasks.
    SELECT array_agg(e.child_id ORDER BY e.child_id), array_agg(e.n ORDER BY e.child_id),
           array_agg(e.parent ORDER BY e.child_id)
    INTO children, released, releasers
    FROM (
        SELECT d.child_id, count(*)::integer AS n, (array_agg(p.id ORDER BY p.id))[1] AS parent
        FROM unnest(p_parents) AS p(id)
        CROSS JOIN LATERAL (SELECT d.child_id FROM pgqueue.task_dependencies AS d
                            WHERE d.parent_id = p.id OFFSET 0) AS d
        GROUP BY d.child_id
    ) AS e;
    IF children IS NULL THEN
        RETURN;  -- no workflow
    END IF;
    -- In id order (children is sorted), as every writer of several tasks locks them.
    PERFORM 1
    FROM unnest(children) AS c(id)
    CROSS JOIN LATERAL (SELECT FROM pgqueue.tasks AS t WHERE t.id = c.id LIMIT 1 FOR UPDATE) AS l;
    WITH edges AS (
        SELECT * FROM unnest(children, released, releasers) AS e(child_id, n, parent)
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
