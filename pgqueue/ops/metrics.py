"""Prometheus metrics of a worker: task counters and durations from the event dispatcher,
queue gauges read from the `pgqueue.queue_stats` view at each scrape.

>>> metrics = WorkerMetrics(worker)        # `pgqueue worker start --metrics-port 9100`
>>> metrics.serve(9100)                    # http://host:9100/metrics
>>> asyncio.run(worker.start()); metrics.close()
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import start_wsgi_server
from prometheus_client.registry import Collector

from pgqueue import events
from pgqueue.db.database import resolve_dsn
from pgqueue.errors import PgQueueError
from pgqueue.ops.admin import Admin
from pgqueue.records import Task

if TYPE_CHECKING:
    from pgqueue.worker import WorkerManager

log = logging.getLogger("pgqueue.metrics")

#: Tasks run from milliseconds to an hour: buckets that cover both ends.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: Several Prometheus servers scraping at once cost one read of the view per this period.
QUEUE_STATS_MAX_AGE_SECONDS = 5.0

# The executor dispatches the before/after/error events of one run from that run's own
# asyncio task, so a context variable carries the start time with no table to leak.
_run_started: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "pgqueue_metrics_run_started", default=None
)


class QueueStatsCollector(Collector):
    """Queue depth and oldest-pending age of some queues, read from `pgqueue.queue_stats`."""

    def __init__(self, dsn: str, schema: str, queues: list[str]) -> None:
        self._dsn = dsn
        self._schema = schema
        self._queues = queues
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._rows: list[dict[str, Any]] | None = None

    def _stats(self) -> list[dict[str, Any]] | None:
        with self._lock:
            if time.monotonic() - self._read_at >= QUEUE_STATS_MAX_AGE_SECONDS:
                try:
                    with Admin.connect(self._dsn, self._schema) as admin:
                        self._rows = admin.queue_stats(self._queues)
                except PgQueueError as error:
                    log.warning("queue metrics unavailable: %s", error)
                    self._rows = None
                self._read_at = time.monotonic()
            return self._rows

    def collect(self) -> Iterator[Metric]:
        rows = self._stats()
        up = GaugeMetricFamily(
            "pgqueue_queue_stats_up", "1 if the last read of pgqueue.queue_stats succeeded"
        )
        up.add_metric([], 0 if rows is None else 1)
        yield up
        if rows is None:
            return
        depth = GaugeMetricFamily(
            "pgqueue_queue_depth",
            "Tasks waiting to run (PENDING or RETRYING, due or scheduled)",
            labels=["queue"],
        )
        due = GaugeMetricFamily(
            "pgqueue_queue_due", "Tasks due now that no worker has started", labels=["queue"]
        )
        waiting = GaugeMetricFamily(
            "pgqueue_queue_waiting",
            "Tasks waiting for their parents (WAITING: workflows)",
            labels=["queue"],
        )
        oldest = GaugeMetricFamily(
            "pgqueue_queue_oldest_pending_seconds",
            "How long the oldest due task has waited since its run_at (0: none due)",
            labels=["queue"],
        )
        seen = set()
        for row in rows:
            seen.add(row["queue"])
            depth.add_metric([row["queue"]], row["pending"] + row["retrying"])
            due.add_metric([row["queue"]], row["due"])
            waiting.add_metric([row["queue"]], row["waiting"])
            oldest.add_metric([row["queue"]], row["oldest_pending_seconds"] or 0.0)
        for queue in self._queues:  # a worker's queue with no task yet is empty, not absent
            if queue not in seen:
                for family in (depth, due, waiting, oldest):
                    family.add_metric([queue], 0.0)
        yield depth
        yield due
        yield waiting
        yield oldest


class WorkerMetrics:
    """A worker's metrics in their own registry, fed by `events.dispatcher`.

    `pgqueue_tasks_failed_total` counts runs that failed for good (retries spent) and
    `pgqueue_tasks_retried_total` those that failed and will run again; a run that raises
    Retry or Snooze counts as started only.
    """

    def __init__(
        self,
        worker: WorkerManager,
        *,
        dsn: str | None = None,
        dispatcher: events.EventDispatcher | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self._dispatcher = dispatcher or events.dispatcher
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        labels = ["queue", "task"]
        self.started = Counter(
            "pgqueue_tasks_started", "Task runs started", labels, registry=self.registry
        )
        self.completed = Counter(
            "pgqueue_tasks_completed", "Task runs completed", labels, registry=self.registry
        )
        self.failed = Counter(
            "pgqueue_tasks_failed",
            "Task runs that failed with no retry left (the task is FAILED)",
            labels,
            registry=self.registry,
        )
        self.retried = Counter(
            "pgqueue_tasks_retried",
            "Task runs that failed and will be retried (the task is RETRYING)",
            labels,
            registry=self.registry,
        )
        self.duration = Histogram(
            "pgqueue_task_duration_seconds",
            "Run time of completed and failed task runs",
            labels,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        in_use = Gauge(
            "pgqueue_worker_concurrency_in_use",
            "Tasks this worker runs now",
            registry=self.registry,
        )
        in_use.set_function(lambda: worker.tasks_running)
        limit = Gauge(
            "pgqueue_worker_concurrency", "Tasks this worker runs at most", registry=self.registry
        )
        limit.set_function(lambda: worker.concurrency)
        settings = worker.settings
        self.registry.register(
            QueueStatsCollector(
                dsn or resolve_dsn(settings), settings.schema_name, list(worker.queues)
            )
        )
        self._listeners = {
            events.TASK_BEFORE_EXECUTION: self._on_started,
            events.TASK_AFTER_EXECUTION: self._on_completed,
            events.TASK_EXECUTION_ERROR: self._on_error,
        }
        for event, listener in self._listeners.items():
            self._dispatcher.add_listener(event, listener)

    # -- events --------------------------------------------------------------------------

    def _on_started(self, payload: dict[str, Any]) -> None:
        task: Task = payload["task"]
        _run_started.set(time.perf_counter())
        self.started.labels(task.queue, task.name).inc()

    def _on_completed(self, payload: dict[str, Any]) -> None:
        task: Task = payload["task"]
        self.completed.labels(task.queue, task.name).inc()
        self._observe(task)

    def _on_error(self, payload: dict[str, Any]) -> None:
        task: Task = payload["task"]
        # The same rule as pgqueue.fail_task: attempts (this run included) <= max_retries.
        if task.attempts <= task.max_retries:
            self.retried.labels(task.queue, task.name).inc()
        else:
            self.failed.labels(task.queue, task.name).inc()
        self._observe(task)

    def _observe(self, task: Task) -> None:
        started = _run_started.get()
        if started is not None:
            self.duration.labels(task.queue, task.name).observe(time.perf_counter() - started)
            _run_started.set(None)

    # -- serving -------------------------------------------------------------------------

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics over HTTP in a daemon thread; returns the port (0: a free one).

        On this machine only unless `host` says otherwise ("0.0.0.0": every interface)."""
        self._server, self._thread = start_wsgi_server(port, host, registry=self.registry)
        bound = int(self._server.server_port)
        log.info("serving Prometheus metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        """Stop serving and stop listening to events."""
        for event, listener in self._listeners.items():
            self._dispatcher.remove_listener(event, listener)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
