"""Prometheus metrics (pgqueue/ops/metrics.py), scraped over HTTP after real tasks ran: counters
and durations from the event dispatcher, queue gauges from pgqueue.queue_stats, and the
`--metrics-port` option of `pgqueue worker start`."""

from __future__ import annotations

import re
import signal
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import operations_tasks
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.waiting import wait_until

from pgqueue import TaskManager, events, metrics
from pgqueue.ops.metrics import QueueStatsCollector, WorkerMetrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def task_labels(name: str) -> dict[str, str]:
    return {"queue": "ops", "task": f"operations_tasks.{name}"}


@pytest.fixture(autouse=True)
def _fresh_queue_stats(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Each scrape reads the view again, so a test sees what it just changed.
    monkeypatch.setattr(metrics, "QUEUE_STATS_MAX_AGE_SECONDS", 0.0)
    operations_tasks.GATE.clear()
    yield
    operations_tasks.GATE.set()


def test_counters_durations_and_gauges_after_real_tasks(
    start_worker: Any, tm: TaskManager, db: psycopg.Connection[Any], dsn: str
) -> None:
    worker = start_worker(queues=["ops"], concurrency=2)
    exported = WorkerMetrics(worker.manager, dsn=dsn)
    port = exported.serve(0, "127.0.0.1")
    try:
        before = scrape(port)
        assert value(before, "pgqueue_worker_concurrency") == 2
        assert value(before, "pgqueue_worker_concurrency_in_use") == 0
        assert value(before, "pgqueue_queue_depth", queue="ops") == 0

        for n in range(3):
            operations_tasks.echo.delay(value=n)
        operations_tasks.explode.delay()
        flaky = operations_tasks.flaky.delay()
        gated = operations_tasks.gated.delay()
        wait_until(lambda: value(scrape(port), "pgqueue_worker_concurrency_in_use") == 1)
        operations_tasks.GATE.set()
        wait_until(lambda: tm.get_task(gated).status.value == "COMPLETED")
        # flaky: attempt 1 fails and is retried after its back-off, attempt 2 fails for good.
        wait_until(lambda: tm.get_task(flaky).status.value == "FAILED")

        samples = scrape(port)
        echo, explode, flaky_labels = (task_labels(n) for n in ("echo", "explode", "flaky"))
        assert value(samples, "pgqueue_tasks_started_total", **echo) == 3
        assert value(samples, "pgqueue_tasks_completed_total", **echo) == 3
        assert value(samples, "pgqueue_tasks_failed_total", **echo) is None
        assert value(samples, "pgqueue_tasks_started_total", **explode) == 1
        assert value(samples, "pgqueue_tasks_failed_total", **explode) == 1  # max_retries=0
        assert value(samples, "pgqueue_tasks_retried_total", **explode) is None
        assert value(samples, "pgqueue_tasks_started_total", **flaky_labels) == 2
        assert value(samples, "pgqueue_tasks_retried_total", **flaky_labels) == 1
        assert value(samples, "pgqueue_tasks_failed_total", **flaky_labels) == 1
        assert value(samples, "pgqueue_task_duration_seconds_count", **echo) == 3
        assert value(samples, "pgqueue_task_duration_seconds_count", **flaky_labels) == 2
        assert value(samples, "pgqueue_worker_concurrency_in_use") == 0

        # The gated run's histogram sum is its run time, as the task table saw it.
        ran = db.execute(
            "SELECT EXTRACT(epoch FROM finished_at - started_at)::float8"
            " FROM pgqueue.tasks WHERE id = %s",
            [gated],
        ).fetchone()
        assert ran is not None
        gated_sum = value(samples, "pgqueue_task_duration_seconds_sum", **task_labels("gated"))
        assert gated_sum == pytest.approx(ran[0], abs=0.25)
        assert value(samples, "pgqueue_task_duration_seconds_bucket", le="+Inf", **echo) == 3

        # Queue gauges: a paused queue's waiting tasks, from the view, at scrape time.
        db.execute("SELECT pgqueue.pause_queue('ops')")
        db.execute(
            "INSERT INTO pgqueue.tasks (name, queue, run_at) VALUES"
            " ('operations_tasks.echo', 'ops', now() - interval '30 seconds'),"
            " ('operations_tasks.echo', 'ops', now() + interval '1 hour')"
        )
        db.execute(
            "INSERT INTO pgqueue.tasks (name, queue, status, parents_left)"
            " VALUES ('operations_tasks.echo', 'ops', 'WAITING', 1)"
        )
        gauges = scrape(port)
        assert value(gauges, "pgqueue_queue_waiting", queue="ops") == 1
        assert value(gauges, "pgqueue_queue_depth", queue="ops") == 2
        assert value(gauges, "pgqueue_queue_due", queue="ops") == 1
        oldest = value(gauges, "pgqueue_queue_oldest_pending_seconds", queue="ops")
        assert oldest == pytest.approx(30, abs=5)
        assert value(gauges, "pgqueue_queue_stats_up") == 1
    finally:
        exported.close()


def test_close_stops_serving_and_listening(start_worker: Any, dsn: str) -> None:
    dispatcher = events.EventDispatcher()
    worker = start_worker(queues=["ops"])
    exported = WorkerMetrics(worker.manager, dsn=dsn, dispatcher=dispatcher)
    port = exported.serve(0, "127.0.0.1")
    assert dispatcher.has_listeners(events.TASK_BEFORE_EXECUTION)
    exported.close()
    assert not dispatcher.has_listeners(events.TASK_BEFORE_EXECUTION)
    with pytest.raises(OSError):
        scrape(port)


def test_queue_gauges_report_an_unreachable_database() -> None:
    collector = QueueStatsCollector("postgresql://postgres@127.0.0.1:1/nothing", "pgqueue", ["q"])
    families = {family.name: family for family in collector.collect()}
    assert list(families) == ["pgqueue_queue_stats_up"]
    assert families["pgqueue_queue_stats_up"].samples[0].value == 0


def test_worker_start_metrics_port_serves_over_http(spawn_worker: Any, tm: TaskManager) -> None:
    worker = spawn_worker(
        "--queues", "ops", "--import", "operations_tasks",
        "--metrics-port", "0", "--metrics-host", "127.0.0.1",
    )  # fmt: skip
    found = wait_until(
        lambda: re.search(r"Prometheus metrics on http://127\.0\.0\.1:(\d+)/metrics", worker.output)
    )
    port = int(found.group(1))
    task_id = operations_tasks.echo.delay(value="hi")
    wait_until(lambda: tm.get_task(task_id).status.value == "COMPLETED")
    samples = scrape(port)
    assert value(samples, "pgqueue_tasks_completed_total", **task_labels("echo")) == 1
    assert value(samples, "pgqueue_worker_concurrency") == 10
    assert value(samples, "pgqueue_queue_depth", queue="ops") == 0
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_a_metrics_port_in_use_is_one_line(spawn_worker: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = spawn_worker(
            "--queues", "ops", "--metrics-port", str(port), "--metrics-host", "127.0.0.1"
        )
        assert worker.wait() == 1
    assert f"Error: cannot serve metrics on 127.0.0.1:{port}: Address already in use" in (
        worker.output
    )
    assert "Traceback" not in worker.output
