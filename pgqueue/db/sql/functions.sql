-- pgqueue functions: the task lifecycle, in the database. Workers and the TaskManager
-- call these; Python never re-implements what they decide (back-off, fencing). The claim
-- (ordering) is the statement claim_tasks of queries.sql, which workers prepare.
-- Every write by a worker is fenced by (id, lease_token, status = 'RUNNING'): a worker
-- whose lease was taken over is refused and changes nothing.

-- name: retry_backoff
-- Delay before retry number p_attempts: 1 s, 2 s, 4 s, ... capped at one hour, +/-25% jitter.
CREATE OR REPLACE FUNCTION pgqueue.retry_backoff(p_attempts integer) RETURNS interval
LANGUAGE sql VOLATILE AS $$
    SELECT make_interval(secs => least(power(2, greatest(p_attempts, 1) - 1), 3600)
                                 * (0.75 + random() * 0.5));
$$;

-- ===========================================================================================
-- Workflows: how a change of a parent reaches its children (pgqueue.task_dependencies). The
-- lifecycle functions below call these in their own transaction, after the statement that
-- changed the parents, so that a dependent advances exactly when its parents do. Each locks
-- the children first, in id order (transactions sharing children wait for each other and
-- never deadlock), then changes them in a statement of its own: in READ COMMITTED that
-- statement's snapshot is taken after the locks, so it reads every child as the last
-- transaction that changed it left it, and every edge committed before.
-- ===========================================================================================

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

-- name: cancel_children
-- Parents that just ended FAILED or CANCELLED, and recursively the children this cancels:
-- a WAITING child with on_parent_failure 'cancel' is CANCELLED, its error naming the parent
-- (cancelled_by: a retry of that parent revives it); for one with 'run' the parent is
-- settled, as a completion would (PENDING when none is left). Events: "cancelled" (details:
-- status WAITING, parent; error) and "ready" (details: parent).
CREATE OR REPLACE FUNCTION pgqueue.cancel_children(p_parents uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    frontier uuid[] := p_parents;
    children uuid[];
    queues text[];
BEGIN
    WHILE frontier IS NOT NULL LOOP
        SELECT array_agg(DISTINCT d.child_id) INTO children
        FROM pgqueue.task_dependencies AS d
        WHERE d.parent_id = ANY (frontier);
        EXIT WHEN children IS NULL;
        PERFORM 1 FROM pgqueue.tasks AS t WHERE t.id = ANY (children) ORDER BY t.id FOR UPDATE;
        WITH edges AS (
            SELECT d.child_id, count(*)::integer AS n,
                   (array_agg(d.parent_id ORDER BY d.parent_id))[1] AS parent
            FROM pgqueue.task_dependencies AS d
            WHERE d.parent_id = ANY (frontier)
            GROUP BY d.child_id
        ), targets AS (
            SELECT t.id, e.n, e.parent, p.status AS parent_status,
                   t.on_parent_failure = 'run' AS runs,
                   t.status = 'WAITING' AND t.on_parent_failure = 'cancel' AS cancels,
                   t.status = 'WAITING' AND t.on_parent_failure = 'run'
                       AND t.parents_left <= e.n AS ready
            FROM edges AS e
            JOIN pgqueue.tasks AS t ON t.id = e.child_id
            JOIN pgqueue.tasks AS p ON p.id = e.parent
        ), moved AS (
            UPDATE pgqueue.tasks AS t
            SET parents_left = CASE WHEN x.runs THEN t.parents_left - x.n ELSE t.parents_left END,
                status = CASE WHEN x.cancels THEN 'CANCELLED'
                              WHEN x.ready THEN 'PENDING'
                              ELSE t.status END::pgqueue.task_status,
                finished_at = CASE WHEN x.cancels THEN now() ELSE t.finished_at END,
                cancelled_by = CASE WHEN x.cancels THEN x.parent ELSE t.cancelled_by END,
                error = CASE WHEN x.cancels
                             THEN format('cancelled: parent task %s ended %s', x.parent,
                                         x.parent_status)
                             ELSE t.error END
            FROM targets AS x
            WHERE t.id = x.id AND (x.runs OR x.cancels)
            RETURNING t.id, t.queue, t.attempts, t.error, x.parent, x.cancels, x.ready
        ), recorded AS (
            INSERT INTO pgqueue.task_events (task_id, event, attempt, error, details)
            SELECT m.id, CASE WHEN m.cancels THEN 'cancelled' ELSE 'ready' END, m.attempts,
                   CASE WHEN m.cancels THEN m.error END,
                   CASE WHEN m.cancels
                        THEN jsonb_build_object('status', 'WAITING', 'parent', m.parent)
                        ELSE jsonb_build_object('parent', m.parent) END
            FROM moved AS m
            WHERE (m.cancels OR m.ready) AND pgqueue.history_enabled()
        )
        SELECT array_agg(m.id) FILTER (WHERE m.cancels),
               array_agg(DISTINCT m.queue) FILTER (WHERE m.ready)
        INTO frontier, queues
        FROM moved AS m;
        PERFORM pg_notify('pgqueue.tasks', q) FROM unnest(queues) AS q;
    END LOOP;
END;
$$;

-- name: revive_children
-- Parents put back by a retry (from FAILED or CANCELLED), and recursively the children this
-- revives: what cancel_children did is undone. A child it cancelled (cancelled_by) is
-- WAITING again, unless another parent of its is FAILED or CANCELLED now (it stays
-- CANCELLED, by that one); for a child with 'run' the parent counts as not settled again.
-- Event: "waiting" (details: parent, waiting_for).
CREATE OR REPLACE FUNCTION pgqueue.revive_children(p_parents uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    frontier uuid[] := p_parents;
    children uuid[];
BEGIN
    WHILE frontier IS NOT NULL LOOP
        SELECT array_agg(DISTINCT d.child_id) INTO children
        FROM pgqueue.task_dependencies AS d
        WHERE d.parent_id = ANY (frontier);
        EXIT WHEN children IS NULL;
        PERFORM 1 FROM pgqueue.tasks AS t WHERE t.id = ANY (children) ORDER BY t.id FOR UPDATE;
        WITH edges AS (
            SELECT d.child_id, count(*)::integer AS n
            FROM pgqueue.task_dependencies AS d
            WHERE d.parent_id = ANY (frontier)
            GROUP BY d.child_id
        ), targets AS (
            SELECT t.id, e.n, t.cancelled_by AS parent, t.on_parent_failure = 'run' AS runs,
                   t.status = 'CANCELLED' AND t.cancelled_by = ANY (frontier) AS revives,
                   (SELECT o.id FROM pgqueue.task_dependencies AS od
                    JOIN pgqueue.tasks AS o ON o.id = od.parent_id
                    WHERE od.child_id = t.id AND o.status IN ('FAILED', 'CANCELLED')
                      AND o.id <> ALL (frontier)
                    LIMIT 1) AS still_failed
            FROM edges AS e
            JOIN pgqueue.tasks AS t ON t.id = e.child_id
        ), moved AS (
            UPDATE pgqueue.tasks AS t
            SET parents_left = CASE WHEN x.runs THEN t.parents_left + x.n ELSE t.parents_left END,
                status = CASE WHEN x.revives AND x.still_failed IS NULL THEN 'WAITING'
                              ELSE t.status END::pgqueue.task_status,
                finished_at = CASE WHEN x.revives AND x.still_failed IS NULL THEN NULL
                                   ELSE t.finished_at END,
                cancelled_by = CASE WHEN NOT x.revives THEN t.cancelled_by
                                    ELSE x.still_failed END,
                error = CASE WHEN NOT x.revives THEN t.error
                             WHEN x.still_failed IS NULL THEN NULL
                             ELSE format('cancelled: parent task %s ended %s', x.still_failed,
                                         (SELECT o.status FROM pgqueue.tasks AS o
                                          WHERE o.id = x.still_failed)) END
            FROM targets AS x
            WHERE t.id = x.id AND (x.runs OR x.revives)
            RETURNING t.id, t.attempts, t.parents_left,
                      t.status = 'WAITING' AND x.revives AS revived, x.parent
        ), recorded AS (
            INSERT INTO pgqueue.task_events (task_id, event, attempt, details)
            SELECT m.id, 'waiting', m.attempts,
                   jsonb_build_object('parent', m.parent, 'waiting_for', m.parents_left)
            FROM moved AS m
            WHERE m.revived AND pgqueue.history_enabled()
        )
        SELECT array_agg(m.id) FILTER (WHERE m.revived) INTO frontier FROM moved AS m;
    END LOOP;
END;
$$;

-- ===========================================================================================
-- Limits (sql/limits.sql): the slots a run held.
-- ===========================================================================================

-- name: give_back_slots
-- Tasks that just stopped RUNNING (completed, failed, rescheduled, released, rescued,
-- cancelled): each key they hold with a limit has one run fewer. Called by those lifecycle
-- functions (functions.sql) in their own transaction, with the ids whose status they moved
-- from RUNNING. Here, not in sql/limits.sql with the rest, because reschedule_task (a
-- SQL function, whose body is checked when it is created) names it. Locks the usage rows in key order, as the claim does: no deadlock. Returns
-- the number of keys changed (0 at once when no key has ever been limited).
CREATE OR REPLACE FUNCTION pgqueue.give_back_slots(p_ids uuid[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    held text[];
    changed integer;
BEGIN
    -- Nobody uses limits: one probe of an empty table, no lookup of the tasks.
    IF p_ids IS NULL OR NOT EXISTS (SELECT 1 FROM pgqueue.limit_usage) THEN
        RETURN 0;
    END IF;
    SELECT array_agg(k ORDER BY k) INTO held
    FROM pgqueue.tasks AS t CROSS JOIN LATERAL unnest(t.limit_keys) AS k
    WHERE t.id = ANY (p_ids) AND t.limit_keys IS NOT NULL;
    IF held IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM pgqueue.limit_usage AS u WHERE u.key = ANY (held) ORDER BY u.key FOR UPDATE;
    UPDATE pgqueue.limit_usage AS u
    SET running = greatest(u.running - h.n, 0)
    FROM (SELECT k, count(*)::integer AS n FROM unnest(held) AS k GROUP BY k) AS h
    WHERE u.key = h.k;
    GET DIAGNOSTICS changed = ROW_COUNT;
    RETURN changed;
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

-- name: fail_task
-- Record a failed run: RETRYING after retry_backoff while attempts <= max_retries (and
-- p_retryable), else FAILED. Returns the new status and run_at; no row when refused.
-- Events: "failed" with this attempt's error, then "retry_scheduled" if it runs again.
-- A task that ends FAILED cancels its dependents (cancel_children).
CREATE OR REPLACE FUNCTION pgqueue.fail_task(
    p_id uuid, p_token integer, p_error text, p_retryable boolean DEFAULT true
) RETURNS TABLE (new_status pgqueue.task_status, new_run_at timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    WITH decision AS (
        SELECT t.id, (p_retryable AND t.attempts <= t.max_retries) AS will_retry
        FROM pgqueue.tasks AS t
        WHERE t.id = p_id AND t.lease_token = p_token AND t.status = 'RUNNING'
    ), failed AS (
        UPDATE pgqueue.tasks AS t
        SET status = CASE WHEN d.will_retry THEN 'RETRYING'
                          ELSE 'FAILED' END::pgqueue.task_status,
            run_at = CASE WHEN d.will_retry THEN now() + pgqueue.retry_backoff(t.attempts)
                          ELSE t.run_at END,
            finished_at = CASE WHEN d.will_retry THEN NULL ELSE now() END,
            error = p_error,
            lease_expires_at = NULL,
            -- This worker knew the name: a later give-back by one that does not starts a
            -- new grace.
            unknown_since = NULL, unknown_fails_at = NULL, unknown_give_backs = 0
        FROM decision AS d
        WHERE t.id = d.id
        RETURNING t.id, t.status, t.run_at, t.attempts, t.worker_id
    ), recorded AS (
        INSERT INTO pgqueue.task_events (task_id, event, attempt, worker_id, error, details)
        SELECT f.id, e.event, f.attempts, f.worker_id, e.error, e.details
        FROM failed AS f
        CROSS JOIN LATERAL (VALUES
            (1, 'failed', p_error,
             CASE WHEN NOT p_retryable THEN '{"retryable": false}'::jsonb END),
            (2, 'retry_scheduled', NULL, jsonb_build_object('run_at', f.run_at))
        ) AS e(step, event, error, details)
        WHERE (e.step = 1 OR f.status = 'RETRYING') AND pgqueue.history_enabled()
        ORDER BY e.step
    )
    SELECT f.status, f.run_at INTO new_status, new_run_at FROM failed AS f;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM pgqueue.give_back_slots(ARRAY[p_id]);  -- its limits' slots (sql/limits.sql)
    IF new_status = 'FAILED' THEN
        PERFORM pgqueue.cancel_children(ARRAY[p_id]);
    END IF;
    RETURN NEXT;
END;
$$;

-- name: reschedule_task
-- Put a running task back to run after p_delay_seconds without recording a failure
-- (Retry, Snooze). With p_refund_attempt the run does not count as an attempt.
-- Event: "retry_scheduled" (details: run_at, rescheduled, attempt_refunded).
CREATE OR REPLACE FUNCTION pgqueue.reschedule_task(
    p_id uuid, p_token integer, p_delay_seconds double precision, p_refund_attempt boolean
) RETURNS timestamptz
LANGUAGE sql AS $$
    WITH rescheduled AS (
        UPDATE pgqueue.tasks AS t
        SET status = 'RETRYING',
            run_at = now() + make_interval(secs => p_delay_seconds),
            attempts = CASE WHEN p_refund_attempt THEN greatest(t.attempts - 1, 0)
                            ELSE t.attempts END,
            lease_expires_at = NULL,
            unknown_since = NULL, unknown_fails_at = NULL, unknown_give_backs = 0
        WHERE t.id = p_id AND t.lease_token = p_token AND t.status = 'RUNNING'
        RETURNING t.id, t.run_at, t.attempts, t.worker_id
    ), recorded AS (
        INSERT INTO pgqueue.task_events (task_id, event, attempt, worker_id, details)
        SELECT r.id, 'retry_scheduled', r.attempts, r.worker_id,
               jsonb_build_object('run_at', r.run_at, 'rescheduled', true,
                                  'attempt_refunded', p_refund_attempt)
        FROM rescheduled AS r
        WHERE pgqueue.history_enabled()
    )
    -- The run's limit slots go back with it (sql/limits.sql): a call per row, one row.
    SELECT run_at FROM rescheduled WHERE pgqueue.give_back_slots(ARRAY[id]) >= 0;
$$;

-- name: unknown_task_backoff
-- Delay before a task given back by a worker that does not know its name is due again, after
-- p_give_backs give-backs: 1 s, 2 s, 4 s, ... capped at 30 s, +/-25% jitter. Growing, so
-- workers that do not know it claim it a bounded number of times (about 120 an hour) and
-- a backlog of such tasks leaves the head of its queue; capped, so a worker that knows it
-- runs it soon.
CREATE OR REPLACE FUNCTION pgqueue.unknown_task_backoff(p_give_backs integer) RETURNS interval
LANGUAGE sql VOLATILE AS $$
    SELECT make_interval(secs => least(power(2, greatest(p_give_backs, 1) - 1), 30)
                                 * (0.75 + random() * 0.5));
$$;

-- name: give_back_unknown_tasks
-- Running tasks whose name the worker holding them has not registered: that worker never
-- calls them, and they are not its to fail. Each goes back PENDING, its attempt refunded,
-- due again after unknown_task_backoff, with an error naming the worker (worker_id, kept,
-- is the one the lease token proves claimed it). Once it has been given back for
-- p_grace_seconds since the first give-back (no worker knowing the name ran it meanwhile:
-- that clears unknown_since), it ends FAILED instead. Fenced like the other writes;
-- returns (id, new status, new run_at, error) of those accepted, and wakes the workers of
-- their queues, so that an idle worker that knows the name sets its timer to the new run_at.
-- Those that end FAILED cancel their dependents (cancel_children).
CREATE OR REPLACE FUNCTION pgqueue.give_back_unknown_tasks(
    p_ids uuid[], p_tokens integer[], p_grace_seconds double precision
) RETURNS TABLE (
    task_id uuid, new_status pgqueue.task_status, new_run_at timestamptz, task_error text
)
LANGUAGE plpgsql AS $$
DECLARE
    ids uuid[];
    statuses pgqueue.task_status[];
    run_ats timestamptz[];
    errors text[];
    queues text[];
    failed uuid[];
BEGIN
    WITH held AS (
        SELECT h.id, since, since + make_interval(secs => p_grace_seconds) AS fails_at,
               since + make_interval(secs => p_grace_seconds) <= now() AS expired
        FROM unnest(p_ids, p_tokens) AS h(id, token)
        -- status::text: a primary-key lookup per element (see complete_tasks).
        JOIN pgqueue.tasks AS t
          ON t.id = h.id AND t.lease_token = h.token AND t.status::text = 'RUNNING'
        CROSS JOIN LATERAL (SELECT coalesce(t.unknown_since, now()) AS since) AS began
    ), moved AS (
        UPDATE pgqueue.tasks AS t
        SET status = CASE WHEN held.expired THEN 'FAILED'
                          ELSE 'PENDING' END::pgqueue.task_status,
            attempts = greatest(t.attempts - 1, 0),
            run_at = CASE WHEN held.expired THEN t.run_at
                          ELSE now() + pgqueue.unknown_task_backoff(t.unknown_give_backs + 1)
                     END,
            started_at = NULL,
            finished_at = CASE WHEN held.expired THEN now() END,
            lease_expires_at = NULL,
            unknown_since = held.since,
            unknown_fails_at = held.fails_at,
            unknown_give_backs = t.unknown_give_backs + 1,
            error = CASE
                WHEN held.expired THEN format(
                    'UnknownTask: no worker knew task name %L for %s s (given back %s '
                    'time%s since %s, last by worker %s); start a worker that imports the '
                    'module defining it (--import or PGQUEUE_IMPORTS), then '
                    '`pgqueue tasks retry`',
                    t.name, round(EXTRACT(epoch FROM now() - held.since)),
                    t.unknown_give_backs + 1,
                    CASE WHEN t.unknown_give_backs = 0 THEN '' ELSE 's' END,
                    date_trunc('second', held.since), t.worker_id)
                ELSE format(
                    'UnknownTask: worker %s has no task named %L registered; given back '
                    'without spending an attempt, for a worker that imports the module '
                    'defining it (--import or PGQUEUE_IMPORTS); FAILED at %s if none has',
                    t.worker_id, t.name, date_trunc('second', held.fails_at))
            END
        FROM held
        WHERE t.id = held.id
        RETURNING t.id, t.status, t.run_at, t.error, t.queue, t.attempts, t.worker_id
    ), recorded AS (
        -- "released" (given back, PENDING) or "failed" (the grace is over), with the error.
        INSERT INTO pgqueue.task_events (task_id, event, attempt, worker_id, error, details)
        SELECT m.id, CASE WHEN m.status = 'FAILED' THEN 'failed' ELSE 'released' END,
               m.attempts, m.worker_id, m.error,
               CASE WHEN m.status = 'FAILED' THEN '{"unknown_task": true}'::jsonb
                    ELSE jsonb_build_object('unknown_task', true, 'run_at', m.run_at) END
        FROM moved AS m
        WHERE pgqueue.history_enabled()
    )
    SELECT array_agg(m.id), array_agg(m.status), array_agg(m.run_at), array_agg(m.error),
           array_agg(DISTINCT m.queue) FILTER (WHERE m.status = 'PENDING'),
           array_agg(m.id) FILTER (WHERE m.status = 'FAILED')
    INTO ids, statuses, run_ats, errors, queues, failed
    FROM moved AS m;
    PERFORM pgqueue.give_back_slots(ids);  -- their limits' slots (sql/limits.sql)
    PERFORM pg_notify('pgqueue.tasks', q) FROM unnest(queues) AS q;
    IF failed IS NOT NULL THEN
        PERFORM pgqueue.cancel_children(failed);
    END IF;
    RETURN QUERY SELECT * FROM unnest(ids, statuses, run_ats, errors);
END;
$$;

-- name: extend_leases
-- Heartbeat: renew the leases a worker still holds; returns the ids it still holds.
-- p_started (per task, NULL for those still waiting in the worker's buffer): when a task
-- claimed ahead started, recorded here at no extra write (see rescue_expired_leases),
-- with its "started" event.
CREATE OR REPLACE FUNCTION pgqueue.extend_leases(
    p_ids uuid[], p_tokens integer[], p_lease_seconds double precision,
    p_started timestamptz[] DEFAULT NULL
) RETURNS SETOF uuid
LANGUAGE sql AS $$
    WITH held AS (
        -- Locked first: whether the start is recorded here is read from the latest row
        -- (see complete_tasks).
        SELECT t.id, h.started_at, t.started_at IS NULL AND h.started_at IS NOT NULL AS starts
        FROM unnest(p_ids, p_tokens, p_started) AS h(id, token, started_at)
        -- status::text: a primary-key lookup per element (see complete_tasks).
        JOIN pgqueue.tasks AS t
          ON t.id = h.id AND t.lease_token = h.token AND t.status::text = 'RUNNING'
        FOR UPDATE OF t
    ), renewed AS (
        UPDATE pgqueue.tasks AS t
        SET lease_expires_at = now() + make_interval(secs => p_lease_seconds),
            started_at = coalesce(t.started_at, held.started_at)
        FROM held
        WHERE t.id = held.id
        RETURNING t.id, t.attempts, t.worker_id, t.started_at, held.starts
    ), recorded AS (
        INSERT INTO pgqueue.task_events (task_id, at, event, attempt, worker_id)
        SELECT r.id, r.started_at, 'started', r.attempts, r.worker_id
        FROM renewed AS r
        WHERE r.starts AND pgqueue.history_enabled()
    )
    SELECT id FROM renewed;
$$;

-- name: release_tasks
-- Graceful shutdown: give running tasks back, PENDING, their attempt not counted.
-- Event: "released" (details: started, whether the run had begun), by the worker.
CREATE OR REPLACE FUNCTION pgqueue.release_tasks(p_ids uuid[], p_tokens integer[])
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    released integer;
    queues text[];
    slots integer;
BEGIN
    WITH held AS (
        SELECT t.id, t.worker_id, t.started_at IS NOT NULL AS started
        FROM unnest(p_ids, p_tokens) AS h(id, token)
        -- status::text: a primary-key lookup per element (see complete_tasks).
        JOIN pgqueue.tasks AS t
          ON t.id = h.id AND t.lease_token = h.token AND t.status::text = 'RUNNING'
        FOR UPDATE OF t
    ), freed AS (
        UPDATE pgqueue.tasks AS t
        SET status = 'PENDING', attempts = greatest(t.attempts - 1, 0), started_at = NULL,
            worker_id = NULL, lease_expires_at = NULL
        FROM held
        WHERE t.id = held.id
        RETURNING t.id, t.queue, t.attempts, held.worker_id, held.started
    ), recorded AS (
        INSERT INTO pgqueue.task_events (task_id, event, attempt, worker_id, details)
        SELECT f.id, 'released', f.attempts, f.worker_id, jsonb_build_object('started', f.started)
        FROM freed AS f
        WHERE pgqueue.history_enabled()
    )
    -- Their limits' slots go back in the same statement (sql/limits.sql).
    SELECT count(*), array_agg(DISTINCT queue), pgqueue.give_back_slots(array_agg(id))
    INTO released, queues, slots FROM freed;
    PERFORM pg_notify('pgqueue.tasks', q) FROM unnest(queues) AS q;
    RETURN released;
END;
$$;

-- name: rescue_expired_leases
-- Tasks whose worker vanished (lease expired): the lost run counts as an attempt, so a
-- task that kills its worker ends FAILED ("worker lost") instead of looping forever.
-- A task the lost worker had claimed ahead and not started (started_at NULL) never ran:
-- it goes back to PENDING with its attempt given back, as release_tasks does. Its start
-- is recorded at the worker's next heartbeat (a third of a lease), so a task that kills
-- its worker sooner looks unstarted: after max_unstarted_rescues such rescues, it counts.
-- Events: "rescued", then "failed" for a task that ends FAILED (which cancels its
-- dependents: cancel_children).
CREATE OR REPLACE FUNCTION pgqueue.rescue_expired_leases() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    max_unstarted_rescues CONSTANT integer := 3;
    rescued integer;
    queues text[];
    failed uuid[];
    slots integer;
BEGIN
    WITH expired AS (
        SELECT t.id, (t.started_at IS NULL AND t.unstarted_rescues < max_unstarted_rescues)
                     AS unstarted, t.worker_id
        FROM pgqueue.tasks AS t
        WHERE t.status = 'RUNNING' AND t.lease_expires_at < now()
        FOR UPDATE SKIP LOCKED
    ), moved AS (
        UPDATE pgqueue.tasks AS t
        SET status = CASE WHEN expired.unstarted THEN 'PENDING'
                          WHEN t.attempts > t.max_retries THEN 'FAILED'
                          ELSE 'RETRYING' END::pgqueue.task_status,
            attempts = CASE WHEN expired.unstarted THEN greatest(t.attempts - 1, 0)
                            ELSE t.attempts END,
            unstarted_rescues = t.unstarted_rescues + expired.unstarted::integer,
            finished_at = CASE WHEN NOT expired.unstarted AND t.attempts > t.max_retries
                               THEN now() END,
            run_at = CASE WHEN expired.unstarted OR t.attempts > t.max_retries THEN t.run_at
                          ELSE now() END,
            error = CASE WHEN expired.unstarted THEN t.error
                         ELSE format('worker lost: worker %s stopped renewing its lease '
                                     '(expired at %s)', t.worker_id, t.lease_expires_at) END,
            worker_id = CASE WHEN expired.unstarted THEN NULL ELSE t.worker_id END,
            lease_expires_at = NULL
        FROM expired
        WHERE t.id = expired.id
        RETURNING t.id, t.queue, t.status, t.attempts, t.error, expired.worker_id,
                  expired.unstarted
    ), recorded AS (
        -- "rescued" (the lost worker; its error, or started false for a run given back
        -- unstarted), then "failed" when that was the last attempt.
        INSERT INTO pgqueue.task_events (task_id, event, attempt, worker_id, error, details)
        SELECT m.id, e.event, m.attempts, m.worker_id,
               CASE WHEN m.unstarted THEN NULL ELSE m.error END, e.details
        FROM moved AS m
        CROSS JOIN LATERAL (VALUES
            (1, 'rescued', CASE WHEN m.unstarted THEN '{"started": false}'::jsonb END),
            (2, 'failed', NULL)
        ) AS e(step, event, details)
        WHERE (e.step = 1 OR m.status = 'FAILED') AND pgqueue.history_enabled()
        ORDER BY m.id, e.step
    )
    -- Their limits' slots go back in the same statement (sql/limits.sql).
    SELECT count(*), array_agg(DISTINCT queue) FILTER (WHERE status <> 'FAILED'),
           array_agg(id) FILTER (WHERE status = 'FAILED'), pgqueue.give_back_slots(array_agg(id))
    INTO rescued, queues, failed, slots FROM moved;
    PERFORM pg_notify('pgqueue.tasks', q) FROM unnest(queues) AS q;
    IF failed IS NOT NULL THEN
        PERFORM pgqueue.cancel_children(failed);
    END IF;
    RETURN rescued;
END;
$$;

-- name: cancel_task
-- Cancel a task that has not finished; True if it is now CANCELLED. A RUNNING task's
-- worker hears of it on the "pgqueue.control" channel (payload "cancel <id>") and stops
-- the run at once; its outcome is refused in any case (and its lease lost at the next
-- heartbeat, should the notification be missed). Event: "cancelled" (details: status,
-- the one it had). A WAITING task can be cancelled too; the cancel reaches the task's
-- dependents as a failure would (cancel_children).
CREATE OR REPLACE FUNCTION pgqueue.cancel_task(p_id uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    previous pgqueue.task_status;
BEGIN
    SELECT status INTO previous FROM pgqueue.tasks WHERE id = p_id FOR UPDATE;
    IF previous IS NULL OR previous NOT IN ('PENDING', 'RETRYING', 'RUNNING', 'WAITING') THEN
        RETURN false;
    END IF;
    WITH cancelled AS (
        UPDATE pgqueue.tasks
        SET status = 'CANCELLED', finished_at = now(), lease_expires_at = NULL,
            cancelled_by = NULL
        WHERE id = p_id
        RETURNING id, attempts, worker_id
    )
    INSERT INTO pgqueue.task_events (task_id, event, attempt, worker_id, details)
    SELECT c.id, 'cancelled', c.attempts,
           CASE WHEN previous = 'RUNNING' THEN c.worker_id END,
           jsonb_build_object('status', previous)
    FROM cancelled AS c
    WHERE pgqueue.history_enabled();
    IF previous = 'RUNNING' THEN
        PERFORM pgqueue.give_back_slots(ARRAY[p_id]);  -- its limits' slots (sql/limits.sql)
        PERFORM pg_notify('pgqueue.control', 'cancel ' || p_id::text);
    END IF;
    PERFORM pgqueue.cancel_children(ARRAY[p_id]);
    RETURN true;
END;
$$;

-- name: retry_task
-- Run a FAILED or CANCELLED task once more, now; its attempts keep counting. A task whose
-- parents are not all settled goes back to WAITING instead of PENDING. The dependents it
-- cancelled wait again (revive_children). Event: "retried" (details: status, the one it had).
CREATE OR REPLACE FUNCTION pgqueue.retry_task(p_id uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    previous pgqueue.task_status;
    task_queue text;
BEGIN
    SELECT status INTO previous FROM pgqueue.tasks WHERE id = p_id FOR UPDATE;
    IF previous IS NULL OR previous NOT IN ('FAILED', 'CANCELLED') THEN
        RETURN false;
    END IF;
    WITH retried AS (
        UPDATE pgqueue.tasks AS t
        SET status = CASE WHEN t.parents_left > 0 THEN 'WAITING'
                          ELSE 'PENDING' END::pgqueue.task_status,
            run_at = now(), started_at = NULL, finished_at = NULL,
            result = NULL, lease_expires_at = NULL, cancelled_by = NULL,
            unknown_since = NULL, unknown_fails_at = NULL, unknown_give_backs = 0,
            -- It keeps its unique_key (sql/features.sql) unless another task holds it now.
            unique_key = CASE WHEN EXISTS (
                SELECT 1 FROM pgqueue.tasks AS o
                WHERE o.unique_key = t.unique_key
                  AND o.status IN ('PENDING', 'RETRYING', 'RUNNING')
            ) THEN NULL ELSE t.unique_key END
        WHERE t.id = p_id
        RETURNING t.id, t.queue, t.attempts, t.status
    ), recorded AS (
        INSERT INTO pgqueue.task_events (task_id, event, attempt, details)
        SELECT r.id, 'retried', r.attempts, jsonb_build_object('status', previous)
        FROM retried AS r
        WHERE pgqueue.history_enabled()
    )
    SELECT CASE WHEN status = 'PENDING' THEN queue END INTO task_queue FROM retried;
    IF task_queue IS NOT NULL THEN
        PERFORM pg_notify('pgqueue.tasks', task_queue);
    END IF;
    PERFORM pgqueue.revive_children(ARRAY[p_id]);
    RETURN true;
END;
$$;

-- name: cleanup_tasks
-- Delete up to p_batch_size finished tasks (COMPLETED, FAILED, CANCELLED) older than
-- p_older_than, with their events and the edges to their parents; callers loop until it
-- returns less than p_batch_size, so no transaction holds many row locks for long. A
-- workflow stays together: no task is deleted while a child of its has not finished.
CREATE OR REPLACE FUNCTION pgqueue.cleanup_tasks(p_older_than interval, p_batch_size integer)
RETURNS integer
LANGUAGE sql AS $$
    WITH doomed AS (
        SELECT t.id FROM pgqueue.tasks AS t
        WHERE t.status IN ('COMPLETED', 'FAILED', 'CANCELLED')
          AND t.finished_at < now() - p_older_than
          AND NOT EXISTS (
              SELECT 1 FROM pgqueue.task_dependencies AS d
              JOIN pgqueue.tasks AS c ON c.id = d.child_id
              WHERE d.parent_id = t.id
                AND c.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED'))
        ORDER BY t.finished_at
        LIMIT p_batch_size
        FOR UPDATE OF t SKIP LOCKED
    ), deleted AS (
        DELETE FROM pgqueue.tasks AS t USING doomed WHERE t.id = doomed.id RETURNING 1
    ), forgotten AS (
        DELETE FROM pgqueue.task_events AS e USING doomed WHERE e.task_id = doomed.id
    ), unlinked AS (
        DELETE FROM pgqueue.task_dependencies AS d USING doomed WHERE d.child_id = doomed.id
    )
    SELECT count(*)::integer FROM deleted;
$$;

-- ===========================================================================================
-- Operations: the worker registry, paused queues, bulk retry and purge (sql/operations.sql
-- has the views; `pgqueue workers`, `pgqueue queue`, `pgqueue tasks` call these).
-- ===========================================================================================

-- name: register_worker
-- Record a worker at start (or again, if its row expired while the database was away).
CREATE OR REPLACE FUNCTION pgqueue.register_worker(
    p_id text, p_host text, p_pid integer, p_queues text[], p_concurrency integer,
    p_version text, p_lease_seconds double precision
) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO pgqueue.workers AS w
        (id, host, pid, queues, concurrency, version, lease_seconds)
    VALUES (p_id, p_host, p_pid, p_queues, p_concurrency, p_version, p_lease_seconds)
    ON CONFLICT (id) DO UPDATE
    SET host = excluded.host, pid = excluded.pid, queues = excluded.queues,
        concurrency = excluded.concurrency, version = excluded.version,
        lease_seconds = excluded.lease_seconds, last_heartbeat = now();
$$;

-- name: worker_heartbeat
-- A worker is alive and runs p_tasks_running tasks; false if its row is gone (re-register).
CREATE OR REPLACE FUNCTION pgqueue.worker_heartbeat(p_id text, p_tasks_running integer)
RETURNS boolean
LANGUAGE sql AS $$
    WITH beat AS (
        UPDATE pgqueue.workers
        SET last_heartbeat = now(), tasks_running = p_tasks_running
        WHERE id = p_id
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM beat);
$$;

-- name: unregister_worker
-- A worker's clean exit; true if it was registered.
CREATE OR REPLACE FUNCTION pgqueue.unregister_worker(p_id text) RETURNS boolean
LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM pgqueue.workers WHERE id = p_id RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM gone);
$$;

-- name: expire_stale_workers
-- Forget workers silent for three of their leases (killed, host lost); returns how many.
CREATE OR REPLACE FUNCTION pgqueue.expire_stale_workers() RETURNS integer
LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM pgqueue.workers
        WHERE last_heartbeat < now() - make_interval(secs => 3 * lease_seconds)
        RETURNING 1
    )
    SELECT count(*)::integer FROM gone;
$$;

-- name: pause_queue
-- Make the claim skip a queue; running tasks finish. True if it was not paused already.
CREATE OR REPLACE FUNCTION pgqueue.pause_queue(p_queue text) RETURNS boolean
LANGUAGE sql AS $$
    WITH paused AS (
        INSERT INTO pgqueue.paused_queues (queue) VALUES (p_queue)
        ON CONFLICT (queue) DO NOTHING
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM paused);
$$;

-- name: resume_queue
-- Let workers claim from a paused queue again, and wake them. True if it was paused.
CREATE OR REPLACE FUNCTION pgqueue.resume_queue(p_queue text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM pgqueue.paused_queues WHERE queue = p_queue;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_notify('pgqueue.tasks', p_queue);
    RETURN true;
END;
$$;

-- name: retry_failed_tasks
-- retry_task for every FAILED task (of one queue, or all when p_queue is NULL); their ids.
-- Event: "retried" for each; their dependents are revived as retry_task does.
CREATE OR REPLACE FUNCTION pgqueue.retry_failed_tasks(p_queue text DEFAULT NULL)
RETURNS SETOF uuid
LANGUAGE plpgsql AS $$
DECLARE
    retried_ids uuid[];
    queues text[];
BEGIN
    WITH failed AS (
        -- Of failed tasks sharing a unique_key, only the newest may keep it.
        SELECT id, row_number() OVER (PARTITION BY unique_key ORDER BY id DESC) AS rank
        FROM pgqueue.tasks
        WHERE status = 'FAILED' AND (p_queue IS NULL OR queue = p_queue)
    ), retried AS (
        UPDATE pgqueue.tasks AS t
        SET status = CASE WHEN t.parents_left > 0 THEN 'WAITING'
                          ELSE 'PENDING' END::pgqueue.task_status,
            run_at = now(), started_at = NULL, finished_at = NULL,
            result = NULL, lease_expires_at = NULL, cancelled_by = NULL,
            unknown_since = NULL, unknown_fails_at = NULL, unknown_give_backs = 0,
            unique_key = CASE WHEN f.rank > 1 OR EXISTS (
                SELECT 1 FROM pgqueue.tasks AS o
                WHERE o.unique_key = t.unique_key
                  AND o.status IN ('PENDING', 'RETRYING', 'RUNNING')
            ) THEN NULL ELSE t.unique_key END
        FROM failed AS f
        WHERE t.id = f.id
        RETURNING t.id, t.queue, t.attempts
    ), recorded AS (
        INSERT INTO pgqueue.task_events (task_id, event, attempt, details)
        SELECT r.id, 'retried', r.attempts, '{"status": "FAILED"}'::jsonb
        FROM retried AS r
        WHERE pgqueue.history_enabled()
    )
    SELECT array_agg(id), array_agg(DISTINCT queue) INTO retried_ids, queues FROM retried;
    PERFORM pg_notify('pgqueue.tasks', q) FROM unnest(queues) AS q;
    IF retried_ids IS NOT NULL THEN
        PERFORM pgqueue.revive_children(retried_ids);
    END IF;
    RETURN QUERY SELECT unnest(retried_ids);
END;
$$;

-- name: purge_tasks
-- Delete up to p_batch_size tasks of one status older than p_older_than (by finished_at,
-- else created_at), with their events and the edges to their parents; callers loop until
-- it returns less than p_batch_size. Never RUNNING, nor a parent of an unfinished task.
CREATE OR REPLACE FUNCTION pgqueue.purge_tasks(
    p_status pgqueue.task_status, p_older_than interval, p_batch_size integer
) RETURNS integer
LANGUAGE sql AS $$
    WITH doomed AS (
        SELECT t.id FROM pgqueue.tasks AS t
        WHERE t.status = p_status AND p_status <> 'RUNNING'
          AND coalesce(t.finished_at, t.created_at) < now() - p_older_than
          AND NOT EXISTS (
              SELECT 1 FROM pgqueue.task_dependencies AS d
              JOIN pgqueue.tasks AS c ON c.id = d.child_id
              WHERE d.parent_id = t.id
                AND c.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED'))
        LIMIT p_batch_size
        FOR UPDATE OF t SKIP LOCKED
    ), deleted AS (
        DELETE FROM pgqueue.tasks AS t USING doomed WHERE t.id = doomed.id RETURNING 1
    ), forgotten AS (
        DELETE FROM pgqueue.task_events AS e USING doomed WHERE e.task_id = doomed.id
    ), unlinked AS (
        DELETE FROM pgqueue.task_dependencies AS d USING doomed WHERE d.child_id = doomed.id
    )
    SELECT count(*)::integer FROM deleted;
$$;
