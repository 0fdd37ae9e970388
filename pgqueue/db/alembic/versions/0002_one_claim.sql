-- The claim is the statement claim_tasks of queries.sql; the function was a copy of it.
DROP FUNCTION IF EXISTS pgqueue.claim_tasks(text[], integer, text, double precision, integer);
