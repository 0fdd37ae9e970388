"""A lifespan for ASGI apps (FastAPI, Starlette): a pgqueue worker in the app's own process,
for small apps, and the dashboard mounted when `pgqueue.web` is there (docs/fastapi.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from pgqueue.settings import Settings, get_settings
from pgqueue.worker import WorkerManager

log = logging.getLogger("pgqueue.asgi")

Lifespan = Callable[[Any], AbstractAsyncContextManager[None]]


def lifespan(
    *,
    queues: Sequence[str] | None = None,
    concurrency: int = 4,
    run_worker: bool = True,
    dashboard_path: str | None = None,
    settings: Settings | None = None,
) -> Lifespan:
    """A lifespan that runs a worker beside the app while it serves, and stops it (draining
    running tasks) at shutdown; with `dashboard_path`, mounts pgqueue's dashboard there if
    this pgqueue has one (`pgqueue.web`), and logs that it has not otherwise.

    >>> app = FastAPI(lifespan=lifespan(queues=["default"], dashboard_path="/pgqueue"))

    The worker leaves SIGINT/SIGTERM to the server; a bigger app runs `pgqueue worker`
    processes of its own instead (`run_worker=False` keeps only the dashboard).
    """
    if isinstance(queues, str):
        raise TypeError(f"queues must be a list of queue names, not the string {queues!r}")
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1, not {concurrency!r}")

    @contextlib.asynccontextmanager
    async def run(app: Any) -> AsyncIterator[None]:
        chosen = settings or get_settings()
        if dashboard_path is not None:
            mount_dashboard(app, dashboard_path, chosen)
        if not run_worker:
            yield
            return
        worker = WorkerManager(settings=chosen)
        worker.set_queues(list(queues or [chosen.defaults.queue]))
        worker.set_concurrent_tasks(concurrency)
        running = asyncio.create_task(worker.start(handle_signals=False))
        await asyncio.sleep(0)  # its checks (tasks registered, ...) run before its first wait
        if running.done():
            running.result()  # refused to start: the app does not start either
        try:
            yield
        finally:
            worker.stop()
            await running

    return run


def mount_dashboard(app: Any, path: str, settings: Settings) -> bool:
    """Mount `pgqueue.web.create_app` at `path` on a Starlette/FastAPI app; False (and a log
    line) when this pgqueue has no dashboard or the app cannot mount."""
    try:
        from pgqueue.web import create_app  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        log.info("no dashboard to mount at %s: this pgqueue has no pgqueue.web", path)
        return False
    if not callable(getattr(app, "mount", None)):
        log.warning("cannot mount the dashboard: %s has no mount()", type(app).__name__)
        return False
    app.mount(path, create_app(dsn=settings.dsn))
    return True
