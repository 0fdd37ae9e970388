-- Revision 0010: limits and fair share. The columns limit_keys and fair_key, the runnable
-- index narrowed to rows without keys and the index of keyed rows, the tables of limits,
-- their usage and fair share, the keyed claim; a copy of the live pgqueue/db/sql/limits.sql
-- as of this revision. Then give_back_slots (new, in functions.sql) and the lifecycle
-- functions that call it, copied from the live functions.sql: their text of revision 0008
-- (with the workflow calls release_children / cancel_children) plus one added call of
-- give_back_slots each (release_tasks and rescue_expired_leases: a column of their last
-- SELECT and its variable). Written for the schema "pgqueue"; the revision points it at
-- the configured one.

ALTER TABLE pgqueue.tasks
    -- Limit keys the task holds while RUNNING ("ses", "tenant:acme"); at most 16, distinct.
    ADD COLUMN limit_keys text[] CHECK (cardinality(limit_keys) BETWEEN 1 AND 16),
    -- Within a queue and a priority, the keys with waiting work take turns by weight.
    ADD COLUMN fair_key text CHECK (fair_key <> '' AND length(fair_key) <= 256);

-- The runnable index of schema.sql, narrowed to rows without keys: the claim of queries.sql
-- (claim_tasks), the one every worker prepares, reads it as it did before limits existed,
-- whatever number of keyed rows a limit holds back.
DROP INDEX pgqueue.tasks_runnable_idx;
CREATE INDEX tasks_runnable_idx ON pgqueue.tasks (queue, priority DESC, run_at, id)
    WHERE status IN ('PENDING', 'RETRYING') AND limit_keys IS NULL AND fair_key IS NULL;

-- Runnable rows with keys, by fair key ('' for none: an equality, so that each key's rows
-- come in claim order): claim_keyed_tasks finds the fair keys with waiting work by a skip
-- scan of it (one probe per key, whatever the number of idle keys) and reads each key's
-- rows in claim order.
CREATE INDEX tasks_keyed_idx
    ON pgqueue.tasks (queue, (coalesce(fair_key, '')), priority DESC, run_at, id)
    WHERE status IN ('PENDING', 'RETRYING') AND (limit_keys IS NOT NULL OR fair_key IS NOT NULL);

-- The view of due tasks (operations.sql), over both partial indexes: the narrowed runnable
-- index alone no longer holds every due row, and a read of the whole table would see every
-- finished row too. Same columns; defined here, where the key columns exist.
CREATE OR REPLACE VIEW pgqueue.due_tasks AS
SELECT
    t.id, t.name, t.queue, t.priority, t.status, t.attempts, t.max_retries,
    t.run_at, t.created_at,
    EXTRACT(epoch FROM now() - t.run_at)::double precision AS waiting_seconds,
    EXISTS (SELECT 1 FROM pgqueue.paused_queues AS p WHERE p.queue = t.queue) AS paused
FROM pgqueue.tasks AS t
WHERE t.status IN ('PENDING', 'RETRYING') AND t.run_at <= now()
  AND t.limit_keys IS NULL AND t.fair_key IS NULL
UNION ALL
SELECT
    t.id, t.name, t.queue, t.priority, t.status, t.attempts, t.max_retries,
    t.run_at, t.created_at,
    EXTRACT(epoch FROM now() - t.run_at)::double precision AS waiting_seconds,
    EXISTS (SELECT 1 FROM pgqueue.paused_queues AS p WHERE p.queue = t.queue) AS paused
FROM pgqueue.tasks AS t
WHERE t.status IN ('PENDING', 'RETRYING') AND t.run_at <= now()
  AND (t.limit_keys IS NOT NULL OR t.fair_key IS NOT NULL);

-- ===========================================================================================
-- Limits: a definition per name. A name ending in "*" is a pattern: every key that starts
-- with the rest has a limit of its own ("tenant:*" gives "tenant:acme" its own 3). A key
-- matches its exact name first, else the longest pattern; a key nothing matches is free.
-- ===========================================================================================

CREATE TABLE pgqueue.limits (
    name        text PRIMARY KEY CHECK (name <> '' AND length(name) <= 256),
    -- At most this many RUNNING tasks hold the key (a task claimed ahead counts); NULL: any.
    concurrency integer CHECK (concurrency >= 0),
    -- A token bucket: `rate` starts per `per` seconds, up to `burst` at once (it starts full).
    rate        double precision CHECK (rate > 0),
    per         double precision CHECK (per > 0),
    burst       double precision CHECK (burst >= 1),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((rate IS NULL) = (per IS NULL) AND (rate IS NULL) = (burst IS NULL)),
    CHECK (concurrency IS NOT NULL OR rate IS NOT NULL)
);

-- The state of each concrete key that has a limit, created by the first claim that meets the
-- key. `running` is kept by the claim (+) and by every change that ends a run (-, the same
-- transaction: give_back_slots), each under this row's lock, so that all workers agree;
-- maintenance recounts it from the RUNNING rows (recount_limit_usage), so a crash or a
-- limit changed under running tasks never leaks a slot for long. `tokens` as of
-- `refilled_at` (refilled lazily, from the database clock or the test clock).
CREATE TABLE pgqueue.limit_usage (
    key         text PRIMARY KEY,
    running     integer NOT NULL DEFAULT 0 CHECK (running >= 0),
    tokens      double precision,
    refilled_at timestamptz
);

-- ===========================================================================================
-- Fair share: stride scheduling per queue. Each fair key has a pass that advances by
-- 1/weight per start; the claim takes the key with the lowest pass first (after priority).
-- A key that comes back after idling starts at the queue's clock (the lowest pass among the
-- keys with work at the last claim), so it cannot bank credit. Rows without a fair key
-- count as one key of their own, stored as ''.
-- ===========================================================================================

CREATE TABLE pgqueue.fair_weights (
    queue  text NOT NULL,
    key    text NOT NULL,
    weight double precision NOT NULL CHECK (weight > 0 AND weight <= 1000000),
    PRIMARY KEY (queue, key)
);

CREATE TABLE pgqueue.fair_passes (
    queue text NOT NULL,
    key   text NOT NULL,
    pass  double precision NOT NULL,
    PRIMARY KEY (queue, key)
);

CREATE TABLE pgqueue.fair_clocks (
    queue text PRIMARY KEY,
    pass  double precision NOT NULL
);

-- A row of the keyed claim's walk (claim_keyed_tasks).
CREATE TYPE pgqueue.limit_candidate AS (
    id         uuid,
    queue      text,
    fair_key   text,
    priority   smallint,
    vpass      double precision,
    limit_keys text[]
);

-- name: limit_for_key
-- The limit that applies to a concrete key: its exact name, else the longest pattern that
-- matches it; NULL (a row of NULLs) when none does.
CREATE FUNCTION pgqueue.limit_for_key(p_key text) RETURNS pgqueue.limits
LANGUAGE sql STABLE AS $$
    SELECT l.* FROM pgqueue.limits AS l
    WHERE l.name = p_key OR (right(l.name, 1) = '*' AND starts_with(p_key, left(l.name, -1)))
    ORDER BY l.name = p_key DESC, length(l.name) DESC
    LIMIT 1;
$$;

-- name: recount_limit_usage
-- Maintenance: set `running` of each key to the number of RUNNING tasks holding it, so a
-- slot a crash leaked (or a limit set under running tasks) comes back; forget keys that
-- have no limit any more and nothing running. Only keys whose count is wrong are locked
-- (SKIP LOCKED: a claim busy with a key is never waited for; the next run sees it). Returns
-- the number of keys corrected.
CREATE FUNCTION pgqueue.recount_limit_usage() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    suspects text[];
    locked text[];
    corrected integer;
BEGIN
    WITH actual AS (
        SELECT k, count(*)::integer AS n
        FROM pgqueue.tasks AS t CROSS JOIN LATERAL unnest(t.limit_keys) AS k
        WHERE t.status = 'RUNNING' AND t.limit_keys IS NOT NULL
        GROUP BY k
    )
    -- Keys counting runs (running > 0: a read of the usage rows, not of the idle keys'
    -- limits) or holding RUNNING tasks, whose count differs.
    SELECT array_agg(x.key ORDER BY x.key) INTO suspects FROM (
        SELECT u.key FROM pgqueue.limit_usage AS u
        LEFT JOIN actual AS a ON a.k = u.key
        WHERE u.running > 0 AND u.running <> coalesce(a.n, 0)
        UNION
        SELECT u.key FROM actual AS a JOIN pgqueue.limit_usage AS u ON u.key = a.k
        WHERE u.running <> a.n
    ) AS x;
    IF suspects IS NULL THEN
        corrected := 0;
    ELSE
        SELECT array_agg(x.key) INTO locked FROM (
            SELECT u.key FROM pgqueue.limit_usage AS u WHERE u.key = ANY (suspects)
            ORDER BY u.key FOR UPDATE SKIP LOCKED
        ) AS x;
        -- A statement of its own: its snapshot, taken after the locks, holds every claim
        -- and give-back of these keys (each commits with its change of the usage row).
        UPDATE pgqueue.limit_usage AS u
        SET running = (SELECT count(*) FROM pgqueue.tasks AS t
                       WHERE t.status = 'RUNNING' AND t.limit_keys IS NOT NULL
                         AND u.key = ANY (t.limit_keys))
        WHERE u.key = ANY (locked);
        GET DIAGNOSTICS corrected = ROW_COUNT;
    END IF;
    -- Keys no limit matches any more (removed), with nothing running: forgotten.
    DELETE FROM pgqueue.limit_usage AS u
    WHERE u.running = 0
      AND NOT EXISTS (SELECT 1 FROM pgqueue.limits AS l WHERE l.name = u.key)
      AND NOT EXISTS (SELECT 1 FROM pgqueue.limits AS l
                      WHERE right(l.name, 1) = '*' AND starts_with(u.key, left(l.name, -1)));
    RETURN corrected;
END;
$$;

-- name: claim_keyed_tasks
-- The claim when keyed rows may be due (the worker knows from keyed_tasks_waiting): up to
-- p_limit tasks of p_queues, like claim_tasks of queries.sql (same columns, same lease,
-- events and start_now), with every row of those queues considered, keyed or not.
--
-- Order: priority first; among equal priorities the fair keys take turns by their pass
-- (start pass + rank/weight within the key); then run_at, id. Admission: candidates are
-- walked in that order WITHOUT being locked; a row is admitted when every key it holds
-- fits (concurrency: running, this claim's admissions included, below the limit; rate: a
-- whole token in the bucket), then the admitted rows are locked (SKIP LOCKED) and marked
-- RUNNING. A held-back row stays as it is: no attempt spent, no lock taken.
--
-- The walk is bounded: the fair keys of each queue are found by a skip scan (at most
-- 10,000 keys with waiting rows, all queues together), of which the p_limit + 16 first in claim order
-- are read, each for at most p_limit + 16 rows (rows without a fair key: the same, from
-- each index). A row behind that many held-back rows of its own key waits for a later
-- claim (docs/features.md).
--
-- Serialization: keyed claims of a queue take turns (an advisory lock per queue, taken in
-- queue order), so passes are read and advanced consistently; usage rows are locked in key
-- order, as give_back_slots and recount_limit_usage lock them.
CREATE FUNCTION pgqueue.claim_keyed_tasks(
    p_queues text[], p_limit integer, p_worker_id text, p_lease_seconds double precision,
    p_start_now integer DEFAULT NULL, p_now timestamptz DEFAULT NULL
) RETURNS TABLE (
    id uuid, name text, queue text, priority smallint, kwargs text, attempts integer,
    max_retries integer, run_at timestamptz, created_at timestamptz, started_at timestamptz,
    error text, worker_id text, lease_expires_at timestamptz, lease_token integer,
    unique_key text, trace_context jsonb
)
LANGUAGE plpgsql
-- Its statements' plans are cached generic plans, which misjudge how many rows a fair key
-- has: a bitmap scan then reads a whole backlog to sort it, where the keyed index gives
-- the first rows in order (LIMIT). Without bitmap scans, the index scan it is.
SET enable_bitmapscan = off
AS $$
#variable_conflict use_column
DECLARE
    clock CONSTANT timestamptz := coalesce(p_now, now());
    -- The admission instant: read after the usage rows are locked, so that per key it only
    -- grows in the order claims admit (now() is the transaction's start, which a claim
    -- waiting for a lock would stamp too early). Buckets refill to it; started_at is it.
    admitted_at timestamptz;
    -- The buckets' clock: the test clock when given, else admitted_at.
    bucket_now timestamptz;
    width CONSTANT integer := p_limit + 16;
    wanted text[];
    q_name text;
    cands pgqueue.limit_candidate[];
    c pgqueue.limit_candidate;
    all_keys text[];
    k text;
    i integer;
    fits boolean;
    -- Per limited key, parallel arrays (few keys per claim: array_position is enough).
    k_names text[];
    k_conc integer[];
    k_running integer[];
    k_tokens double precision[];
    k_tokens0 double precision[];
    k_rated boolean[];
    -- Per fair group (queue, key): its start pass, weight and admissions.
    g_queue text[] := '{}';
    g_key text[] := '{}';
    g_start double precision[] := '{}';
    g_weight double precision[] := '{}';
    g_n integer[] := '{}';
    admitted uuid[] := '{}';
    locked uuid[];
    starting uuid[];
BEGIN
    SELECT array_agg(DISTINCT q ORDER BY q) INTO wanted
    FROM unnest(p_queues) AS q
    WHERE q <> ALL (ARRAY(SELECT pq.queue FROM pgqueue.paused_queues AS pq));
    IF wanted IS NULL OR p_limit <= 0 THEN
        RETURN;
    END IF;
    FOREACH q_name IN ARRAY wanted LOOP
        PERFORM pg_advisory_xact_lock(hashtext('pgqueue.fair'), hashtext(q_name));
    END LOOP;

    -- The candidates, in claim order. A statement after the locks: it sees every claim of
    -- these queues that committed before.
    WITH RECURSIVE key_walk AS (
        SELECT w.queue, head_key.fair_key
        FROM unnest(wanted) AS w(queue)
        CROSS JOIN LATERAL (
            SELECT coalesce(t.fair_key, '') AS fair_key FROM pgqueue.tasks AS t
            WHERE t.queue = w.queue AND t.status IN ('PENDING', 'RETRYING')
              AND (t.limit_keys IS NOT NULL OR t.fair_key IS NOT NULL)
            ORDER BY coalesce(t.fair_key, '') LIMIT 1
        ) AS head_key
        UNION ALL
        SELECT key_walk.queue, (
            SELECT coalesce(t.fair_key, '') FROM pgqueue.tasks AS t
            WHERE t.queue = key_walk.queue AND t.status IN ('PENDING', 'RETRYING')
              AND (t.limit_keys IS NOT NULL OR t.fair_key IS NOT NULL)
              AND coalesce(t.fair_key, '') > key_walk.fair_key
            ORDER BY coalesce(t.fair_key, '') LIMIT 1)
        FROM key_walk
        WHERE key_walk.fair_key IS NOT NULL
    ), fair_groups AS (
        -- '' stands for the rows without a fair key, keyed or not: always a group.
        SELECT g.queue, g.fair_key FROM (SELECT * FROM key_walk LIMIT 10000) AS g
        WHERE g.fair_key IS NOT NULL
        UNION
        SELECT w.queue, '' FROM unnest(wanted) AS w(queue)
    ), heads AS (
        -- Each group's first due row (its priority decides first), its start and weight.
        -- The pass and the weight by a primary-key probe per group (subqueries): a join
        -- would let the generic plan, which guesses a thousand groups, hash the whole
        -- table of passes (a seq scan of every idle key's row: 13 ms at 100,000 keys).
        SELECT g.queue, g.fair_key, h.priority,
               greatest(coalesce((SELECT fp.pass FROM pgqueue.fair_passes AS fp
                                  WHERE fp.queue = g.queue AND fp.key = g.fair_key),
                                 fc.pass, 0),
                        coalesce(fc.pass, 0)) AS start,
               coalesce((SELECT fw.weight FROM pgqueue.fair_weights AS fw
                         WHERE fw.queue = g.queue AND fw.key = g.fair_key), 1) AS weight
        FROM fair_groups AS g
        CROSS JOIN LATERAL (
            SELECT max(x.priority) AS priority FROM (
                (SELECT t.priority FROM pgqueue.tasks AS t
                 WHERE t.queue = g.queue AND coalesce(t.fair_key, '') = g.fair_key
                   AND t.status IN ('PENDING', 'RETRYING')
                   AND (t.limit_keys IS NOT NULL OR t.fair_key IS NOT NULL)
                   AND t.run_at <= clock
                 ORDER BY t.priority DESC, t.run_at, t.id LIMIT 1)
                UNION ALL
                (SELECT t.priority FROM pgqueue.tasks AS t
                 WHERE g.fair_key = '' AND t.queue = g.queue
                   AND t.status IN ('PENDING', 'RETRYING')
                   AND t.limit_keys IS NULL AND t.fair_key IS NULL
                   AND t.run_at <= clock
                 ORDER BY t.priority DESC, t.run_at, t.id LIMIT 1)
            ) AS x
        ) AS h
        LEFT JOIN pgqueue.fair_clocks AS fc ON fc.queue = g.queue
        WHERE h.priority IS NOT NULL
        ORDER BY h.priority DESC, 4, g.fair_key
        LIMIT width
    ), cand_rows AS (
        SELECT hd.queue, nullif(hd.fair_key, '') AS fair_key, r.id, r.priority, r.run_at,
               r.limit_keys,
               hd.start + (row_number() OVER (PARTITION BY hd.queue, hd.fair_key
                                              ORDER BY r.priority DESC, r.run_at, r.id) - 1)
                          / hd.weight AS vpass
        FROM heads AS hd
        CROSS JOIN LATERAL (
            (SELECT t.id, t.priority, t.run_at, t.limit_keys FROM pgqueue.tasks AS t
             WHERE t.queue = hd.queue AND coalesce(t.fair_key, '') = hd.fair_key
               AND t.status IN ('PENDING', 'RETRYING')
               AND (t.limit_keys IS NOT NULL OR t.fair_key IS NOT NULL)
               AND t.run_at <= clock
             ORDER BY t.priority DESC, t.run_at, t.id LIMIT width)
            UNION ALL
            (SELECT t.id, t.priority, t.run_at, t.limit_keys FROM pgqueue.tasks AS t
             WHERE hd.fair_key = '' AND t.queue = hd.queue
               AND t.status IN ('PENDING', 'RETRYING')
               AND t.limit_keys IS NULL AND t.fair_key IS NULL
               AND t.run_at <= clock
             ORDER BY t.priority DESC, t.run_at, t.id LIMIT width)
        ) AS r
    )
    SELECT array_agg(ROW(r.id, r.queue, r.fair_key, r.priority, r.vpass, r.limit_keys)
                     ::pgqueue.limit_candidate
                     ORDER BY r.priority DESC, r.vpass, r.run_at, r.id),
           (SELECT array_agg(DISTINCT x ORDER BY x) FROM cand_rows AS rr, unnest(rr.limit_keys) AS x)
    INTO cands, all_keys
    FROM cand_rows AS r;
    IF cands IS NULL THEN
        RETURN;
    END IF;
    SELECT array_agg(hd_queue), array_agg(hd_key), array_agg(hd_start), array_agg(hd_weight),
           array_agg(0)
    INTO g_queue, g_key, g_start, g_weight, g_n
    FROM (
        SELECT DISTINCT ON (x.queue, x.fair_key) x.queue AS hd_queue,
               coalesce(x.fair_key, '') AS hd_key, x.vpass AS hd_start,
               coalesce((SELECT fw.weight FROM pgqueue.fair_weights AS fw
                         WHERE fw.queue = x.queue AND fw.key = coalesce(x.fair_key, '')),
                        1) AS hd_weight
        FROM unnest(cands) AS x
        ORDER BY x.queue, x.fair_key, x.vpass
    ) AS g;

    -- The limited keys among them: a usage row each (the first claim to meet a key counts
    -- the tasks already RUNNING with it), locked in key order, tokens refilled.
    IF all_keys IS NOT NULL THEN
        INSERT INTO pgqueue.limit_usage (key, running, tokens, refilled_at)
        SELECT key_name,
               (SELECT count(*) FROM pgqueue.tasks AS t
                WHERE t.status = 'RUNNING' AND t.limit_keys IS NOT NULL
                  AND key_name = ANY (t.limit_keys)),
               l.burst, clock
        FROM unnest(all_keys) AS key_name
        CROSS JOIN LATERAL pgqueue.limit_for_key(key_name) AS l
        WHERE l.name IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM pgqueue.limit_usage AS u WHERE u.key = key_name)
        ORDER BY key_name
        ON CONFLICT (key) DO NOTHING;
        PERFORM 1 FROM pgqueue.limit_usage AS u
        WHERE u.key = ANY (all_keys)
        ORDER BY u.key
        FOR UPDATE;
        admitted_at := clock_timestamp();
        bucket_now := coalesce(p_now, admitted_at);
        SELECT array_agg(u.key ORDER BY u.key), array_agg(l.concurrency ORDER BY u.key),
               array_agg(u.running ORDER BY u.key),
               array_agg(CASE WHEN l.rate IS NULL THEN NULL
                              ELSE least(l.burst, coalesce(u.tokens, l.burst)
                                   + greatest(EXTRACT(epoch FROM bucket_now
                                                      - coalesce(u.refilled_at, bucket_now)),
                                              0)
                                     * l.rate / l.per) END ORDER BY u.key),
               array_agg(l.rate IS NOT NULL ORDER BY u.key)
        INTO k_names, k_conc, k_running, k_tokens, k_rated
        FROM pgqueue.limit_usage AS u
        CROSS JOIN LATERAL pgqueue.limit_for_key(u.key) AS l
        WHERE u.key = ANY (all_keys) AND l.name IS NOT NULL;
        k_tokens0 := k_tokens;
    END IF;

    -- The walk: admit in claim order while every key fits.
    FOREACH c IN ARRAY cands LOOP
        EXIT WHEN cardinality(admitted) >= p_limit;
        fits := true;
        IF c.limit_keys IS NOT NULL AND k_names IS NOT NULL THEN
            FOREACH k IN ARRAY c.limit_keys LOOP
                i := array_position(k_names, k);
                CONTINUE WHEN i IS NULL;
                IF (k_conc[i] IS NOT NULL AND k_running[i] >= k_conc[i])
                   OR (k_rated[i] AND k_tokens[i] < 1) THEN
                    fits := false;
                    EXIT;
                END IF;
            END LOOP;
        END IF;
        CONTINUE WHEN NOT fits;
        IF c.limit_keys IS NOT NULL AND k_names IS NOT NULL THEN
            FOREACH k IN ARRAY c.limit_keys LOOP
                i := array_position(k_names, k);
                CONTINUE WHEN i IS NULL;
                k_running[i] := k_running[i] + 1;
                IF k_rated[i] THEN
                    k_tokens[i] := k_tokens[i] - 1;
                END IF;
            END LOOP;
        END IF;
        admitted := admitted || c.id;
    END LOOP;
    IF cardinality(admitted) = 0 THEN
        RETURN;
    END IF;

    -- Lock what was admitted; a row another transaction holds (a cancel, say) is skipped.
    SELECT array_agg(x.id) INTO locked FROM (
        SELECT t.id FROM pgqueue.tasks AS t
        WHERE t.id = ANY (admitted) AND t.status IN ('PENDING', 'RETRYING')
        FOR UPDATE SKIP LOCKED
    ) AS x;
    IF locked IS NULL THEN
        RETURN;
    END IF;

    -- Usage: each key's locked rows run now; tokens as refilled above, less those starts.
    IF k_names IS NOT NULL THEN
        UPDATE pgqueue.limit_usage AS u
        SET running = u.running + n.n,
            tokens = CASE WHEN s.rated THEN s.tokens - n.n END,
            refilled_at = CASE WHEN s.rated
                               THEN greatest(coalesce(u.refilled_at, bucket_now), bucket_now)
                          END
        FROM (
            SELECT key_name, count(*)::integer AS n
            FROM unnest(cands) AS x CROSS JOIN LATERAL unnest(x.limit_keys) AS key_name
            WHERE x.id = ANY (locked)
            GROUP BY key_name
        ) AS n
        JOIN unnest(k_names, k_tokens0, k_rated) AS s(key_name, tokens, rated)
          ON s.key_name = n.key_name
        WHERE u.key = n.key_name;
    END IF;

    -- Fair share: each group's pass moves on by its starts / weight; the queue's clock to
    -- the lowest pass among the groups that had work.
    SELECT array_agg((SELECT count(*)::integer FROM unnest(cands) AS x
                      WHERE x.id = ANY (locked) AND x.queue = g.gq
                        AND coalesce(x.fair_key, '') = g.gk) ORDER BY g.n)
    INTO g_n
    FROM unnest(g_queue, g_key) WITH ORDINALITY AS g(gq, gk, n);
    INSERT INTO pgqueue.fair_passes AS fp (queue, key, pass)
    SELECT g.gq, g.gk, g.gs + g.gn / g.gw
    FROM unnest(g_queue, g_key, g_start, g_weight, g_n) AS g(gq, gk, gs, gw, gn)
    WHERE g.gn > 0
    ORDER BY g.gq, g.gk
    ON CONFLICT (queue, key) DO UPDATE SET pass = excluded.pass;
    INSERT INTO pgqueue.fair_clocks AS fc (queue, pass)
    SELECT g.gq, min(g.gs + g.gn / g.gw)
    FROM unnest(g_queue, g_key, g_start, g_weight, g_n) AS g(gq, gk, gs, gw, gn)
    GROUP BY g.gq
    ORDER BY g.gq
    ON CONFLICT (queue) DO UPDATE SET pass = greatest(fc.pass, excluded.pass);

    -- As claim_tasks of queries.sql: RUNNING under a fresh lease, the first p_start_now
    -- (in claim order) started, their "started" events; returned in claim order.
    starting := CASE WHEN p_start_now IS NULL THEN locked
                     ELSE ARRAY(SELECT a.aid FROM unnest(admitted) WITH ORDINALITY AS a(aid, n)
                                WHERE a.aid = ANY (locked) ORDER BY a.n LIMIT p_start_now) END;
    RETURN QUERY
    WITH claimed AS (
        UPDATE pgqueue.tasks AS t
        SET status = 'RUNNING',
            attempts = t.attempts + 1,
            started_at = CASE WHEN t.id = ANY (starting)
                              THEN coalesce(admitted_at, now()) END,
            worker_id = p_worker_id,
            lease_expires_at = now() + make_interval(secs => p_lease_seconds),
            lease_token = t.lease_token + 1
        WHERE t.id = ANY (locked)
        RETURNING t.*
    ), started AS (
        INSERT INTO pgqueue.task_events (task_id, at, event, attempt, worker_id)
        SELECT cl.id, cl.started_at, 'started', cl.attempts, cl.worker_id
        FROM claimed AS cl
        WHERE cl.started_at IS NOT NULL AND pgqueue.history_enabled()
    )
    SELECT cl.id, cl.name, cl.queue, cl.priority, cl.kwargs::text, cl.attempts, cl.max_retries,
           cl.run_at, cl.created_at, coalesce(cl.started_at, admitted_at, now()), cl.error,
           cl.worker_id,
           cl.lease_expires_at, cl.lease_token, cl.unique_key, cl.trace_context
    FROM claimed AS cl
    ORDER BY array_position(admitted, cl.id);
END;
$$;

-- name: set_limit
-- Define (or replace, whole) the limit of a name; a new rate starts with a full bucket.
CREATE FUNCTION pgqueue.set_limit(
    p_name text, p_concurrency integer, p_rate double precision, p_per double precision,
    p_burst double precision
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgqueue.limits AS l (name, concurrency, rate, per, burst)
    VALUES (p_name, p_concurrency, p_rate, p_per, p_burst)
    ON CONFLICT (name) DO UPDATE
    SET concurrency = excluded.concurrency, rate = excluded.rate, per = excluded.per,
        burst = excluded.burst, updated_at = now();
    -- Buckets refill to the new burst at most; a raised limit may admit at once: wake.
    UPDATE pgqueue.limit_usage AS u SET tokens = least(u.tokens, p_burst)
    WHERE u.tokens IS NOT NULL AND (u.key = p_name OR (right(p_name, 1) = '*'
                                    AND starts_with(u.key, left(p_name, -1))));
    PERFORM pg_notify('pgqueue.tasks', q.queue)
    FROM (SELECT DISTINCT t.queue FROM pgqueue.tasks AS t
          WHERE t.status IN ('PENDING', 'RETRYING') AND t.limit_keys IS NOT NULL) AS q;
END;
$$;

-- name: set_fair_weight
-- A fair key's weight in a queue (1 when unset): it gets `weight` starts for every one of
-- a weight-1 key while both have work waiting.
CREATE FUNCTION pgqueue.set_fair_weight(p_queue text, p_key text, p_weight double precision)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO pgqueue.fair_weights (queue, key, weight) VALUES (p_queue, p_key, p_weight)
    ON CONFLICT (queue, key) DO UPDATE SET weight = excluded.weight;
$$;

-- ===== functions.sql =====

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

-- name: complete_tasks
-- Record the results of finished runs, many per call; returns the ids it accepted.
-- p_started (optional, per task): when a run claimed ahead of a free slot really started.
-- Events: "completed", after "started" for a run whose start this records. Their children
-- advance in the same transaction (release_children).
CREATE OR REPLACE FUNCTION pgqueue.complete_tasks(
    p_ids uuid[], p_tokens integer[], p_results jsonb[], p_started timestamptz[] DEFAULT NULL
) RETURNS SETOF uuid
LANGUAGE plpgsql AS $$
DECLARE
    completed_ids uuid[];
BEGIN
    WITH held AS (
        -- Locked first, so that whether the start is recorded here (started_at NULL) is
        -- read from the latest row, not from a heartbeat's concurrent write recording it.
        SELECT t.id, done.result, done.started_at,
               t.started_at IS NULL AND done.started_at IS NOT NULL AS starts
        FROM unnest(p_ids, p_tokens, p_results, p_started) AS done(id, token, result, started_at)
        -- status::text (not status): the planner then cannot drive the join from the
        -- partial index of RUNNING rows, whose row count is always stale on a queue table
        -- (estimated 1), which made a nested loop of every RUNNING row times every array
        -- element: O(n^2), 850 ms for 2,000 completions. The array drives it, one
        -- primary-key lookup per element.
        JOIN pgqueue.tasks AS t
          ON t.id = done.id AND t.lease_token = done.token AND t.status::text = 'RUNNING'
        -- In id order, as producers lock the parents they name (store.py): no deadlock.
        ORDER BY t.id
        FOR UPDATE OF t
    ), completed AS (
        UPDATE pgqueue.tasks AS t
        SET status = 'COMPLETED', result = held.result, finished_at = now(),
            lease_expires_at = NULL, started_at = coalesce(held.started_at, t.started_at)
        FROM held
        WHERE t.id = held.id
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
    SELECT array_agg(completed.id) INTO completed_ids FROM completed;
    PERFORM pgqueue.give_back_slots(completed_ids);  -- their limits' slots (sql/limits.sql)
    IF completed_ids IS NOT NULL THEN
        PERFORM pgqueue.release_children(completed_ids);
    END IF;
    RETURN QUERY SELECT unnest(completed_ids);
END;
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
