"""Tasks of the OpenTelemetry tests (tests/test_telemetry.py), run by worker subprocesses
that also import otel_worker_setup (the SDK, writing spans to a file)."""

from __future__ import annotations

import uuid

from opentelemetry import trace

from pgqueue import AsyncTask, Snooze, current_task

_snoozed: set[uuid.UUID] = set()


@AsyncTask
def traced_add(x: int, y: int) -> int:
    # Sync: runs in a thread, where the run's span is still the current one.
    with trace.get_tracer("app").start_as_current_span("inside the task"):
        return x + y


@AsyncTask(max_retries=2)
async def fails_once() -> str:
    if current_task().attempt == 1:
        raise ValueError("the first attempt fails")
    return "ok"


@AsyncTask
async def snoozes_once() -> str:
    task_id = current_task().id
    if task_id not in _snoozed:
        _snoozed.add(task_id)
        raise Snooze(0.1)
    return "woke"
