"""`pgqueue worker [start]`: run a worker until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from typing import TYPE_CHECKING

import click

from pgqueue.db.database import check_reachable, resolve_dsn
from pgqueue.settings import get_settings
from pgqueue.tasks.registry import import_task_modules
from pgqueue.worker import WorkerManager
from pgqueue.worker.manager import MAX_CLAIM_AHEAD

if TYPE_CHECKING:
    from pgqueue.ops.metrics import WorkerMetrics


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def serve_metrics(manager: WorkerManager, port: int, host: str) -> WorkerMetrics:
    """Start the /metrics server; a port in use is a one-line error, not a traceback."""
    from pgqueue.ops.metrics import WorkerMetrics

    metrics = WorkerMetrics(manager)
    try:
        metrics.serve(port, host)
    except OSError as error:
        metrics.close()
        raise click.ClickException(
            f"cannot serve metrics on {host}:{port}: {error.strerror or error}"
        ) from None
    return metrics


@click.command()
@click.argument("action", required=False, default="start", type=click.Choice(["start"]))
@click.option(
    "--queues",
    "-q",
    default=None,
    help="Comma-separated queues [default: settings' default queue].",
)
@click.option(
    "--concurrent",
    "-c",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    help="Tasks run at once.",
)
@click.option(
    "--interval",
    "-i",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="Polling interval in seconds (a safety net: NOTIFY wakes the worker).",
)
@click.option(
    "--import",
    "imports",
    multiple=True,
    help="Module that defines tasks (repeatable, or comma-separated; adds to PGQUEUE_IMPORTS).",
)
@click.option(
    "--grace",
    default=None,
    type=click.FloatRange(min=0),
    help="Seconds SIGTERM waits for running tasks [default: PGQUEUE_SHUTDOWN_GRACE_SECONDS].",
)
@click.option(
    "--cleanup-hours",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="Delete old finished tasks every so many hours.",
)
@click.option(
    "--retain-days",
    default=7.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Keep finished tasks this many days.",
)
@click.option(
    "--prefetch",
    default=None,
    type=click.IntRange(min=0),
    help="Most tasks claimed ahead of the free slots while runs are short (0: off) "
    f"[default: up to {MAX_CLAIM_AHEAD}, as many as the runs' pace needs, with the database "
    "broker; 0 with RabbitMQ, whose prefetch is --concurrent].",
)
@click.option(
    "--log-level",
    default=None,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Logging level of this worker (overrides `pgqueue --log-level`).",
)
@click.option(
    "--metrics-port",
    default=None,
    type=click.IntRange(min=0, max=65535),
    help="Serve Prometheus metrics on this port at /metrics (0: any free port, logged).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    envvar="PGQUEUE_METRICS_HOST",
    show_envvar=True,
    help="Address the metrics server listens on (0.0.0.0: every interface).",
)
@click.option(
    "--log-tracebacks/--no-log-tracebacks",
    default=None,
    help="Log a task that fails for good (no retry left) at ERROR with its traceback "
    "[default: on; PGQUEUE_LOG_FAILURE_TRACEBACKS].",
)
def worker(
    action: str,
    queues: str | None,
    concurrent: int,
    interval: float,
    imports: tuple[str, ...],
    grace: float | None,
    cleanup_hours: float,
    retain_days: float,
    metrics_port: int | None,
    metrics_host: str,
    prefetch: int | None,
    log_level: str | None,
    log_tracebacks: bool | None,
) -> None:
    """Start a worker: `pgqueue worker start` (or just `pgqueue worker`)."""
    if log_level is not None:
        logging.getLogger().setLevel(log_level.upper())
    settings = get_settings()
    if log_tracebacks is not None:
        settings = dataclasses.replace(settings, log_failure_tracebacks=log_tracebacks)
    import_task_modules([*settings.imports, *(m for item in imports for m in _split(item))])
    if settings.broker == "database":
        # A worker rides out outages once running; at start, a wrong DSN is a user mistake.
        check_reachable(resolve_dsn(settings))
    manager = WorkerManager(settings=settings)
    manager.set_queues(_split(queues) if queues else [settings.defaults.queue])
    manager.set_concurrent_tasks(concurrent)
    manager.set_polling_interval(interval)
    manager.set_cleanup_config(interval_hours=cleanup_hours, retain_days=retain_days)
    if grace is not None:
        manager.set_shutdown_grace(grace)
    if prefetch is not None:
        manager.set_prefetch(prefetch)
    metrics = None if metrics_port is None else serve_metrics(manager, metrics_port, metrics_host)
    try:
        asyncio.run(manager.start())
    finally:
        if metrics is not None:
            metrics.close()
    if manager.stopped_at_once:
        # Sync tasks may still hold threads; a second signal means now.
        os._exit(1)
