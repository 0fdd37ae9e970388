"""OpenTelemetry traces and metrics (`pgqueue-tasks[otel]`): on by itself once the OpenTelemetry
API is installed and the app has configured a tracer provider; nothing otherwise.

A producer's `.delay()` runs in a `send <queue>` span (kind PRODUCER) whose context is
stored with the task (`tasks.trace_context`). The run is a `process <queue>` span (kind
CONSUMER): a child of that context on the first attempt, a new trace linked to it on a
retry. Attributes follow OpenTelemetry's messaging conventions (`messaging.system`
"pgqueue", `messaging.destination.name`, `messaging.message.id`, `messaging.operation`)
plus `pgqueue.task.name` and `pgqueue.task.attempt`; a retry, a snooze and a lost lease
are span events. The histogram `pgqueue.task.wait_duration` records, per run, how long
the task waited past its `run_at` (started_at - run_at).

Whether the API is importable is checked once, here at import: without it every hook is
one test of a module constant.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from pgqueue.records import NewTask, Outcome, OutcomeKind, Task
from pgqueue.version import __version__

try:
    from opentelemetry import metrics, propagate, trace
except ImportError:  # pgqueue-tasks[otel] is not installed: tracing is off, for good
    INSTALLED = False
else:
    INSTALLED = True
    _UNCONFIGURED = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    # get_tracer_provider() reads the environment at each call (a provider named there is
    # made at first call): a worker asks once per run, so without that variable the
    # API's global is read directly, and an unset one costs a getattr.
    _FAST_UNSET_CHECK = "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ

SYSTEM = "pgqueue"
#: Span event names.
RETRY_EVENT = "pgqueue.retry"
SNOOZE_EVENT = "pgqueue.snooze"
LEASE_LOST_EVENT = "pgqueue.lease_lost"
CANCELLED_EVENT = "pgqueue.cancelled"
#: The message a worker cancels a run with when its lease is lost (worker/manager.py).
LEASE_LOST = "lease lost"
WAIT_HISTOGRAM = "pgqueue.task.wait_duration"

_tracer: Any = None  # set once the app has configured a provider (it can do so once)
_histogram: Any = None


def tracer() -> Any:
    """pgqueue's tracer, or None while the app has configured no tracer provider."""
    global _tracer
    if _tracer is not None or not INSTALLED:
        return _tracer
    if _FAST_UNSET_CHECK and getattr(trace, "_TRACER_PROVIDER", True) is None:
        return None  # nothing set: the API's own global, read without its environment lookup
    provider = trace.get_tracer_provider()
    if isinstance(provider, _UNCONFIGURED):
        return None  # the API alone: spans would record nothing
    _tracer = provider.get_tracer("pgqueue", __version__)
    return _tracer


def _attributes(operation: str, queue: str) -> dict[str, Any]:
    return {
        "messaging.system": SYSTEM,
        "messaging.operation": operation,
        "messaging.operation.type": operation,
        "messaging.destination.name": queue,
    }


@contextlib.contextmanager
def sending(tasks: Sequence[NewTask]) -> Iterator[None]:
    """Around the write of one `.delay()` / `queue_tasks()` call: a `send` span whose
    context every row stores. Does nothing while tracing is off.

    >>> with telemetry.sending(new_tasks):
    ...     broker.enqueue(new_tasks)
    """
    found = tracer() if tasks else None
    if found is None:
        yield
        return
    first = tasks[0]
    attributes = _attributes("send", first.queue)
    attributes["pgqueue.task.name"] = first.name
    if len(tasks) == 1:
        attributes["messaging.message.id"] = str(first.id)
    else:
        attributes["messaging.batch.message_count"] = len(tasks)
    with found.start_as_current_span(
        f"send {first.queue}", kind=trace.SpanKind.PRODUCER, attributes=attributes
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        stored = json.dumps(carrier) if carrier else None
        for task in tasks:
            task.trace_context = stored
        yield


@contextlib.contextmanager
def processing(found: Any, task: Task) -> Iterator[Any]:
    """Around one run, with the tracer that `tracer()` gave: the `process` span, current
    while the task runs."""
    _record_wait(task)
    parent = propagate.extract(task.trace_context) if task.trace_context else None
    links = None
    if parent is not None and task.attempts > 1:  # a retry: a trace of its own, linked
        producer = trace.get_current_span(parent).get_span_context()
        links = [trace.Link(producer)] if producer.is_valid else None
        parent = None
    attributes = _attributes("process", task.queue)
    attributes["messaging.message.id"] = str(task.id)
    attributes["pgqueue.task.name"] = task.name
    attributes["pgqueue.task.attempt"] = task.attempts
    with found.start_as_current_span(
        f"process {task.queue}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
        links=links,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as error:  # CancelledError: the worker stopped this run
            lost = LEASE_LOST in error.args
            span.add_event(LEASE_LOST_EVENT if lost else CANCELLED_EVENT)
            raise


def lease_lost(span: Any, why: str) -> None:
    """The run's writes were refused: another run took the task over."""
    if span is not None:
        span.add_event(LEASE_LOST_EVENT, {"pgqueue.reason": why})


def ended(span: Any, outcome: Outcome | None) -> None:
    """Mark the run's span with how it ended: events for a retry or a snooze, an error
    status for a failure."""
    if span is None or outcome is None:
        return
    task = outcome.task
    if outcome.kind is OutcomeKind.RESCHEDULED:
        name = SNOOZE_EVENT if outcome.refund_attempt else RETRY_EVENT
        span.add_event(name, {"pgqueue.delay_seconds": float(outcome.delay)})
    elif outcome.kind is OutcomeKind.FAILED:
        error = (outcome.error or "").partition("\n")[0]
        span.set_status(trace.Status(trace.StatusCode.ERROR, error))
        if outcome.retryable and task.attempts <= task.max_retries:
            span.add_event(RETRY_EVENT, {"pgqueue.error": error})
    elif outcome.kind is OutcomeKind.UNKNOWN:
        span.add_event("pgqueue.unknown_task")


def _record_wait(task: Task) -> None:
    global _histogram
    if task.started_at is None or task.run_at is None:
        return
    if _histogram is None:
        _histogram = metrics.get_meter("pgqueue", __version__).create_histogram(
            WAIT_HISTOGRAM,
            unit="s",
            description="How long a task waited past its run_at before its run started",
        )
    waited = max((task.started_at - task.run_at).total_seconds(), 0.0)
    _histogram.record(
        waited,
        {"messaging.system": SYSTEM, "messaging.destination.name": task.queue},
    )
