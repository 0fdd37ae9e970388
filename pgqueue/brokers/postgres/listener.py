"""The LISTEN connection of a Postgres worker: wake-ups for new work, health-checked."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

import psycopg

from pgqueue.db.database import CONNECT_TIMEOUT_SECONDS, KEEPALIVES, describe_dsn
from pgqueue.db.queries import Channel
from pgqueue.errors import first_line
from pgqueue.loops import BackgroundLoop, Backoff

log = logging.getLogger("pgqueue.listener")

HEALTH_CHECK_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 10.0


class Listener(BackgroundLoop):
    """Calls `on_wake` when work arrives on one of `queues`, and after every reconnect;
    `on_control` (if given) with the payload of each control message ("cancel <id>").

    A LISTEN connection can die silently (a proxy drops it, the server restarts); a
    query every HEALTH_CHECK_SECONDS notices, and the connection is re-established
    with back-off. Meanwhile the worker's polling interval keeps due tasks moving.
    """

    name = "pgqueue-listener"

    def __init__(
        self,
        dsn: str,
        schema: str,
        queues: Iterable[str],
        on_wake: Callable[[], None],
        on_control: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self._dsn = dsn
        self._schema = schema
        self._control_channel = Channel.CONTROL.in_schema(schema)
        self._on_control = on_control
        self._queues = frozenset(queues)
        self._on_wake = on_wake
        self.connected = asyncio.Event()

    async def _run(self) -> None:
        backoff = Backoff(first=0.1, most=MAX_BACKOFF_SECONDS)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._dsn,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT_SECONDS,
                    application_name="pgqueue-listener",
                    **KEEPALIVES,
                ) as conn:
                    await conn.execute(Channel.TASKS.listen(self._schema))
                    if self._on_control is not None:
                        await conn.execute(Channel.CONTROL.listen(self._schema))
                    self.connected.set()
                    self._on_wake()  # catch up on whatever was queued while not listening
                    backoff.reset()
                    await self._listen(conn)
            except psycopg.OperationalError as error:
                self.connected.clear()
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # stop() while connecting
                    raise asyncio.CancelledError from error
                await backoff.pause(
                    log,
                    "LISTEN connection to %s lost (%s)",
                    describe_dsn(self._dsn),
                    first_line(error),
                )

    def _crashed(self) -> None:
        self.connected.clear()

    async def _listen(self, conn: psycopg.AsyncConnection[object]) -> None:
        while True:
            async for note in conn.notifies(timeout=HEALTH_CHECK_SECONDS):
                if note.channel == self._control_channel:
                    if self._on_control is not None:
                        self._on_control(note.payload)
                elif note.payload in self._queues:
                    self._on_wake()
            try:  # a dead network may never answer: the check has a deadline of its own
                await asyncio.wait_for(conn.execute("SELECT 1"), HEALTH_CHECK_SECONDS)
            except TimeoutError:
                raise psycopg.OperationalError("health check got no answer in time") from None
