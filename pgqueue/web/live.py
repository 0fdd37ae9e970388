"""Live updates: one watcher per dashboard process, shared by every open page, and the
server-sent events that tell each page to refresh.

The watcher is a thread with one database connection. It LISTENs on the tasks channel
(new and retried tasks wake it at once) and, every BATCH_SECONDS, reads a fingerprint of
the tables (`dashboard_fingerprint`): when either moved, `version` grows. Where LISTEN is
unavailable (a pooler in transaction mode refuses it, or drops its notifications) the
fingerprint alone keeps the pages current: the polling fallback. It runs only while a page
is open, and stops IDLE_STOP_SECONDS after the last one closed.

Each page's event stream compares `version` every BATCH_SECONDS and sends one `change`
event however many changes happened meanwhile; the page then fetches itself again (htmx).
A hidden tab closes its stream (static/live.js, the Page Visibility API).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg

from pgqueue.db.queries import Channel
from pgqueue.errors import first_line
from pgqueue.ops.dashboard import DashboardQueries

log = logging.getLogger("pgqueue.dashboard")

#: Changes are batched: a page hears of them at most this often.
BATCH_SECONDS = 0.5
#: The watcher stops this long after the last page closed its stream.
IDLE_STOP_SECONDS = 30.0
#: A stream sends a comment this often, so proxies keep it open.
KEEPALIVE_SECONDS = 15.0
#: Reconnection pauses of the watcher after a lost connection: doubling up to this.
MOST_PAUSE_SECONDS = 10.0


class ChangeWatcher:
    """Counts changes of the database (`version`) while someone subscribes."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        schema: str,
        batch_seconds: float = BATCH_SECONDS,
    ) -> None:
        self._connect = connect
        self._schema = schema
        self._batch = batch_seconds
        self._lock = threading.Lock()
        self._subscribers = 0
        self._last_unsubscribe = time.monotonic()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.version = 0
        #: "listen" (LISTEN and fingerprint), "poll" (fingerprint only) or "down".
        self.mode = "down"

    @contextlib.contextmanager
    def subscription(self) -> Iterator[None]:
        """While inside, the watcher runs (started by the first subscriber)."""
        with self._lock:
            self._subscribers += 1
            if self._thread is None or not self._thread.is_alive():
                self._stopping.clear()
                self._thread = threading.Thread(
                    target=self._main, name="pgqueue-dashboard-watcher", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._subscribers -= 1
                self._last_unsubscribe = time.monotonic()

    def stop(self) -> None:
        """Stop the thread now (the app's shutdown)."""
        self._stopping.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    def _idle(self) -> bool:
        with self._lock:
            return (
                self._subscribers == 0
                and time.monotonic() - self._last_unsubscribe > IDLE_STOP_SECONDS
            )

    def _main(self) -> None:
        pause = self._batch
        while not self._stopping.is_set() and not self._idle():
            try:
                with self._connect() as conn:
                    self._watch(conn)
                return
            except psycopg.Error as error:
                self.mode = "down"
                log.warning(
                    "dashboard watcher lost its connection (%s); retrying in %.1fs",
                    first_line(error),
                    pause,
                )
                self._stopping.wait(pause)
                pause = min(pause * 2, MOST_PAUSE_SECONDS)

    def _watch(self, conn: psycopg.Connection[Any]) -> None:
        self.mode = "listen" if self._listen(conn) else "poll"
        board = DashboardQueries(conn, self._schema)
        last = board.fingerprint()
        self.version += 1  # (re)connected: whatever happened meanwhile is news
        while not self._stopping.is_set() and not self._idle():
            woken = self._wait(conn)
            current = board.fingerprint()
            if woken or current != last:
                last = current
                self.version += 1

    def _listen(self, conn: psycopg.Connection[Any]) -> bool:
        try:
            conn.execute(Channel.TASKS.listen(self._schema))
            conn.execute(Channel.CONTROL.listen(self._schema))
        except psycopg.errors.FeatureNotSupported as error:
            log.warning("dashboard: LISTEN refused (%s); polling instead", first_line(error))
            return False
        return True

    def _wait(self, conn: psycopg.Connection[Any]) -> bool:
        """Wait one batch; whether a notification came meanwhile."""
        if self.mode != "listen":
            self._stopping.wait(self._batch)
            return False
        woken = False
        deadline = time.monotonic() + self._batch
        while (left := deadline - time.monotonic()) > 0:
            for _ in conn.notifies(timeout=left, stop_after=1):
                woken = True
        return woken


async def change_events(
    watcher: ChangeWatcher,
    is_disconnected: Callable[[], Any],
    batch_seconds: float = BATCH_SECONDS,
) -> AsyncIterator[str]:
    """The text/event-stream of one page: a `change` event after each batch of changes."""
    with watcher.subscription():
        seen = watcher.version
        quiet = 0.0
        yield "retry: 2000\n\n"
        while not await is_disconnected():
            await asyncio.sleep(batch_seconds)
            if watcher.version != seen:
                seen = watcher.version
                quiet = 0.0
                yield f"event: change\ndata: {seen}\n\n"
            else:
                quiet += batch_seconds
                if quiet >= KEEPALIVE_SECONDS:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
