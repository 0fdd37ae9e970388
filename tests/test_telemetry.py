"""OpenTelemetry: the context current at .delay() travels with the task into a real worker
process, whose `process` span continues that trace (a retry links to it instead); messaging
attributes; retry, snooze and lost-lease events; the wait histogram. The test process
exports to the SDK's in-memory exporter, the worker subprocess to a file it reads back."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from otel_tasks import fails_once, snoozes_once, traced_add
from sample_tasks import async_sleep
from support.waiting import wait_until

from pgqueue import telemetry
from pgqueue.task_manager import TaskManager

_EXPORTER = InMemorySpanExporter()
_METRICS = InMemoryMetricReader()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The test process's spans (the SDK configured once per process, as an app does)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[_METRICS]))
    if telemetry.tracer() is None:
        pytest.skip("another tracer provider was configured in this process first")
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def worker_spans(path: Path, name: str, count: int = 1) -> list[dict[str, Any]]:
    """The worker's spans called `name`, once it has written `count` of them."""

    def found() -> list[dict[str, Any]] | None:
        if not path.exists():
            return None
        lines = [json.loads(line) for line in path.read_text().splitlines() if line]
        matching = [line for line in lines if line["name"] == name]
        return matching if len(matching) >= count else None

    return wait_until(found, timeout=30)  # type: ignore[no-any-return]


@pytest.fixture
def traced_worker(spawn_worker: Callable[..., Any], tmp_path: Path) -> Path:
    """A worker subprocess with the SDK configured; returns the file of its spans."""
    path = tmp_path / "worker-spans.jsonl"
    spawn_worker(
        "--import",
        "otel_worker_setup,otel_tasks",
        "--interval",
        "0.5",
        env={"PGQUEUE_TEST_SPANS": str(path)},
    )
    return path


def test_the_run_continues_the_trace_of_delay_in_another_process(
    tm: TaskManager, spans: InMemorySpanExporter, traced_worker: Path
) -> None:
    with trace.get_tracer("app").start_as_current_span("request") as request:
        task_id = traced_add.delay(x=2, y=3)
    assert tm.wait(task_id, timeout=30) == 5

    (send,) = [span for span in spans.get_finished_spans() if span.name == "send default"]
    trace_id, send_id = hex_ids(send)
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    assert send.kind is trace.SpanKind.PRODUCER
    assert send.attributes is not None
    assert send.attributes["messaging.message.id"] == str(task_id)
    assert send.attributes["messaging.operation"] == "send"

    (process,) = worker_spans(traced_worker, "process default")
    assert process["trace_id"] == trace_id
    assert process["parent_span_id"] == send_id
    assert process["kind"] == "CONSUMER"
    assert process["attributes"] == {
        "messaging.system": "pgqueue",
        "messaging.operation": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": "default",
        "messaging.message.id": str(task_id),
        "pgqueue.task.name": "otel_tasks.traced_add",
        "pgqueue.task.attempt": 1,
    }
    (inside,) = worker_spans(traced_worker, "inside the task")
    assert inside["trace_id"] == trace_id
    assert inside["parent_span_id"] == process["span_id"]


def test_a_retry_links_to_the_trace_and_the_failure_is_an_event(
    tm: TaskManager, spans: InMemorySpanExporter, traced_worker: Path
) -> None:
    with trace.get_tracer("app").start_as_current_span("request"):
        task_id = fails_once.delay()
    assert tm.wait(task_id, timeout=60) == "ok"
    (send,) = [span for span in spans.get_finished_spans() if span.name == "send default"]
    trace_id, send_id = hex_ids(send)

    first, second = sorted(
        worker_spans(traced_worker, "process default", count=2),
        key=lambda span: span["attributes"]["pgqueue.task.attempt"],
    )
    assert first["trace_id"] == trace_id and first["parent_span_id"] == send_id
    assert first["status"] == "ERROR"
    assert first["events"] == [telemetry.RETRY_EVENT]
    # The retry: a trace of its own, linked to the producer's span.
    assert second["attributes"]["pgqueue.task.attempt"] == 2
    assert second["trace_id"] != trace_id and second["parent_span_id"] is None
    assert second["links"] == [{"trace_id": trace_id, "span_id": send_id}]
    assert second["status"] == "UNSET"


def test_a_snooze_is_an_event(
    tm: TaskManager, spans: InMemorySpanExporter, traced_worker: Path
) -> None:
    task_id = snoozes_once.delay()
    assert tm.wait(task_id, timeout=30) == "woke"
    snoozed, woke = worker_spans(traced_worker, "process default", count=2)
    assert snoozed["events"] == [telemetry.SNOOZE_EVENT]
    assert woke["events"] == []


def test_no_context_is_stored_without_a_tracer_provider(
    tm: TaskManager, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telemetry, "INSTALLED", False)  # as without pgqueue[otel]
    monkeypatch.setattr(telemetry, "_tracer", None)
    task_id = traced_add.delay(x=1, y=1)
    ids = tm.queue_tasks(traced_add, [{"x": 1, "y": 2}, {"x": 3, "y": 4}])
    stored = db.execute("SELECT id, trace_context FROM pgqueue.tasks").fetchall()
    assert {row[0] for row in stored} == {task_id, *ids}
    assert {row[1] for row in stored} == {None}


def test_bulk_rows_store_the_context_of_their_call(
    tm: TaskManager, db: psycopg.Connection[Any], spans: InMemorySpanExporter
) -> None:
    with trace.get_tracer("app").start_as_current_span("request"):
        tm.queue_tasks(traced_add, [{"x": 1, "y": 2}, {"x": 3, "y": 4}])
        tm.queue_tasks(traced_add, [{"x": 1, "y": 2}, {"x": 3, "y": 4}], delay=60)
    (first_send, second_send) = [s for s in spans.get_finished_spans() if s.name == "send default"]
    stored = db.execute("SELECT trace_context->>'traceparent' FROM pgqueue.tasks").fetchall()
    # traceparent: version-trace id-parent id-flags
    assert sorted(row[0].rsplit("-", 1)[0] for row in stored) == sorted(
        f"00-{trace_id}-{span_id}"
        for trace_id, span_id in (hex_ids(first_send), hex_ids(second_send))
        for _ in range(2)
    )


def test_a_lost_lease_is_an_event_and_the_wait_is_measured(
    tm: TaskManager,
    db: psycopg.Connection[Any],
    spans: InMemorySpanExporter,
    start_worker: Callable[..., Any],
) -> None:
    task_id = async_sleep.delay(seconds=60)
    start_worker(lease_seconds=1.5)
    wait_until(
        lambda: db.execute(
            "SELECT status = 'RUNNING' FROM pgqueue.tasks WHERE id = %s", [task_id]
        ).fetchone()[0]  # type: ignore[index]
    )
    # Another run takes the task over: this worker's next heartbeat finds its lease gone.
    db.execute("UPDATE pgqueue.tasks SET lease_token = lease_token + 1 WHERE id = %s", [task_id])
    (span,) = wait_until(
        lambda: [s for s in spans.get_finished_spans() if s.name == "process default"]
    )
    assert [event.name for event in span.events] == [telemetry.LEASE_LOST_EVENT]

    deadline = time.monotonic() + 10
    points: list[Any] = []
    while not points and time.monotonic() < deadline:
        data = _METRICS.get_metrics_data()
        points = [
            point
            for resource in (data.resource_metrics if data else [])
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == telemetry.WAIT_HISTOGRAM
            for point in metric.data.data_points
        ]
    assert points and points[0].count >= 1
    assert points[0].attributes["messaging.destination.name"] == "default"


def test_without_the_api_nothing_of_opentelemetry_is_imported() -> None:
    import subprocess
    import sys

    script = (
        "import sys; sys.modules['opentelemetry'] = None\n"  # as if not installed
        "import pgqueue, pgqueue.worker.executor, pgqueue.telemetry as t\n"
        "assert not t.INSTALLED and t.tracer() is None\n"
        "with t.sending([]): pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
