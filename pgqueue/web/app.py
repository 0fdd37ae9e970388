"""`create_app()`: the dashboard as an ASGI app (Starlette), to serve or to mount.

>>> from pgqueue.web import create_app
>>> app = create_app("postgresql://localhost/app", read_only=True)
>>> # uvicorn.run(app, host="127.0.0.1", port=8080), or mount it in FastAPI:
>>> # api.mount("/pgqueue", app)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pgqueue.errors import DatabaseUnavailable, PgQueueError
from pgqueue.web import actions, pages
from pgqueue.web.live import change_events
from pgqueue.web.security import BasicAuth, Security
from pgqueue.web.state import HERE, DashboardState


def create_app(dsn: str | None = None, read_only: bool = False) -> Starlette:
    """The dashboard on the database `dsn` (None: the configured one, PGQUEUE_DSN...).

    `read_only=True` offers no action and refuses every one (403). When the environment
    sets PGQUEUE_DASHBOARD_USER and PGQUEUE_DASHBOARD_PASSWORD, every request needs them
    (HTTP basic auth); PGQUEUE_DASHBOARD_REDACT names the argument keys shown as `***`.
    The app opens its database on its first request: it works without its lifespan
    running (mounted in another app); when the lifespan runs, shutdown closes it.
    """
    state = DashboardState(dsn, None, read_only, Security.from_environment())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            state.close()

    routes = [
        Route("/", pages.overview, name="overview"),
        Route("/queues", pages.queues, name="queues"),
        Route("/queues/pause", actions.pause_queue, methods=["POST"]),
        Route("/queues/resume", actions.resume_queue, methods=["POST"]),
        Route("/tasks", pages.tasks, name="tasks"),
        Route("/tasks/retry", pages.confirm_retry, name="confirm_retry"),
        Route("/tasks/retry", actions.retry_matching, methods=["POST"]),
        Route("/tasks/{task_id}", pages.task, name="task"),
        Route("/tasks/{task_id}/retry", actions.retry_task, methods=["POST"]),
        Route("/tasks/{task_id}/cancel", actions.cancel_task, methods=["POST"]),
        Route("/failures", pages.failures, name="failures"),
        Route("/workers", pages.workers, name="workers"),
        Route("/cron", pages.cron, name="cron"),
        Route("/events", events, name="events"),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = []
    if state.security.asks_password:
        middleware.append(Middleware(BasicAuth, security=state.security))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={PgQueueError: _pgqueue_error},
    )
    app.state.dashboard = state
    return app


async def events(request: Request) -> Response:
    """The page's stream of `change` events (text/event-stream)."""
    state = pages.state_of(request)
    return StreamingResponse(
        change_events(state.watcher, request.is_disconnected),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _pgqueue_error(request: Request, error: Exception) -> Response:
    """The database away, or its schema missing: one line on the page, not a traceback."""
    status = 503 if isinstance(error, DatabaseUnavailable) else 500
    return pages.state_of(request).render(
        request, "error.html", {"page": "", "message": str(error)}, status=status
    )
