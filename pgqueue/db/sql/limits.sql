-- Limits and fair share (docs/features.md, "Limits and fair share"): keys a task holds
-- (`limit_keys`), limits on those keys (concurrency, a token bucket), and turns among the
-- fair keys of a queue (`fair_key`, weights). All decided in the claim, in SQL: a task a
-- limit holds back is never claimed, so it spends no attempt and locks nothing.
-- Runs last of the schema files (migrations.SCHEMA_FILES): it adds columns and replaces the
-- runnable index of schema.sql, as revision 0010 does.

-- ===========================================================================================
-- The keys of a task. NULL, the usual case: none, and the claim of queries.sql takes it.
-- ===========================================================================================

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
