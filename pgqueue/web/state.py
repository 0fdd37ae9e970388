"""What one dashboard app holds: its database (a small pool, opened at the first request, so
the app works without its lifespan running), its defences, its templates and its watcher."""

from __future__ import annotations

import functools
import json
import threading
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse

from pgqueue.db.database import CONNECT_TIMEOUT_SECONDS, resolve_dsn, unavailable
from pgqueue.ops.activity import RecentActivity
from pgqueue.ops.dashboard import DashboardQueries
from pgqueue.settings import get_settings
from pgqueue.web.live import ChangeWatcher
from pgqueue.web.security import CSRF_COOKIE, Security, new_nonce

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
#: Connections of one dashboard process to the database (the watcher has its own).
POOL_SIZE = 4
#: The overview's window: the chart's span and bucket, and "recent" in the queue table.
WINDOW_SECONDS = 3600
BUCKET_SECONDS = 60


class DashboardState:
    """Shared by every request of one app (`request.app.state.dashboard`)."""

    def __init__(
        self, dsn: str | None, schema: str | None, read_only: bool, security: Security
    ) -> None:
        self._dsn = dsn
        self._schema = schema
        self.read_only = read_only
        self.security = security
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Any] | None = None
        self.templates = _environment()
        #: The overview's last hour; the minutes that closed are read once and kept here.
        self.recent = RecentActivity(WINDOW_SECONDS, BUCKET_SECONDS)
        self.watcher = ChangeWatcher(self.connect, self.schema)

    # -- the database --------------------------------------------------------------------

    @functools.cached_property
    def dsn(self) -> str:
        return self._dsn if self._dsn is not None else resolve_dsn(get_settings())

    @functools.cached_property
    def schema(self) -> str:
        return self._schema if self._schema is not None else get_settings().schema_name

    def connect(self) -> psycopg.Connection[Any]:
        """A connection of its own (the watcher's LISTEN connection)."""
        try:
            return psycopg.connect(self.dsn, **_CONNECTION_OPTIONS)
        except psycopg.OperationalError as error:
            raise unavailable(self.dsn, error) from error

    def pool(self) -> ConnectionPool[Any]:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.dsn,
                    min_size=1,
                    max_size=POOL_SIZE,
                    kwargs=_CONNECTION_OPTIONS,
                    open=False,
                    name="pgqueue-dashboard",
                    timeout=CONNECT_TIMEOUT_SECONDS,
                )
                self._pool.open(wait=False)
            return self._pool

    async def run(self, call: Callable[[DashboardQueries], T]) -> T:
        """`call(board)` in a worker thread, on a connection of the pool."""
        return await run_in_threadpool(self._run, call)

    def _run(self, call: Callable[[DashboardQueries], T]) -> T:
        try:
            with self.pool().connection() as conn:
                return call(DashboardQueries(conn, self.schema))
        except psycopg.OperationalError as error:
            raise unavailable(self.dsn, error) from error

    def close(self) -> None:
        """Stop the watcher and close the pool (the app's shutdown, when it runs one)."""
        self.watcher.stop()
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    # -- pages ---------------------------------------------------------------------------

    def render(
        self, request: Request, template: str, context: dict[str, Any], status: int = 200
    ) -> HTMLResponse:
        """A page of `template`, with what every page needs: links under the app's root
        path, the read-only flag, and this browser's action token (its cookie set)."""
        nonce = request.cookies.get(CSRF_COOKIE)
        fresh = not nonce
        if fresh:
            nonce = new_nonce()
        assert nonce is not None
        root = request.scope.get("root_path", "")
        page = self.templates.get_template(template).render(
            request=request,
            url=functools.partial(link, root),
            here=link(root, request.url.path.removeprefix(root) or "/", **request.query_params),
            root=root,
            can_act=not self.read_only,
            read_only=self.read_only,
            csrf_token=self.security.token_for(nonce),
            **context,
        )
        response = HTMLResponse(page, status_code=status)
        if fresh:
            response.set_cookie(
                CSRF_COOKIE, nonce, path=root or "/", httponly=True, samesite="strict"
            )
        return response


_CONNECTION_OPTIONS: dict[str, Any] = {
    "autocommit": True,
    # Never prepared: each statement is planned with its filters' values, so a status
    # filter picks its partial index.
    "prepare_threshold": None,
    "connect_timeout": CONNECT_TIMEOUT_SECONDS,
    "application_name": "pgqueue-dashboard",
}


def link(root: str, path: str, **params: Any) -> str:
    """`path` under the app's root path, with the non-empty query parameters."""
    query = urllib.parse.urlencode(
        {key: value for key, value in params.items() if value not in (None, "")}
    )
    return f"{root}{path}" + (f"?{query}" if query else "")


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        ago=ago, duration=duration, number=number, pretty_json=pretty_json, short_id=short_id
    )
    return env


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """ "3 s ago", "in 5 min", "2 h ago"; empty for None."""
    if moment is None:
        return ""
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    text = duration(abs(seconds))
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{timedelta(seconds=round(seconds)).days} d"


def number(value: int | float | None) -> str:
    return "" if value is None else f"{value:,}"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def short_id(value: Any) -> Markup | str:
    text = str(value)
    return text[:8] + "…" + text[-4:] if len(text) > 16 else text
