-- The trace context of the .delay() call that queued a task (OpenTelemetry), NULL without it.
ALTER TABLE pgqueue.tasks ADD COLUMN trace_context jsonb;
