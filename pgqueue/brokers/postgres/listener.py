"""The LISTEN connection of a Postgres worker: wake-ups for new work, health-checked."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable

import psycopg

from pgqueue.db.database import (
    CONNECT_TIMEOUT_SECONDS,
    KEEPALIVES,
    UNAVAILABLE,
    Database,
    describe_dsn,
)
from pgqueue.db.queries import Channel
from pgqueue.errors import first_line
from pgqueue.loops import BackgroundLoop, Backoff

log = logging.getLogger("pgqueue.listener")

HEALTH_CHECK_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 10.0
#: How long a probe notification may take to arrive before LISTEN is deemed not to work.
#: Generous: on a direct connection it takes milliseconds, and the worker polls meanwhile.
PROBE_SECONDS = 3.0


class Listener(BackgroundLoop):
    """Calls `on_wake` when work arrives on one of `queues`, and after every reconnect;
    `on_control` (if given) with the payload of each control message ("cancel <id>").

    It connects to the database's `listen_dsn` and first proves that notifications reach
    it: it sends one to itself through the database's pool and waits for it. Through a
    pooler in transaction mode none arrives (the LISTEN stays on a server connection that
    the pooler lends to others): it then warns once and ends, `polling` is true, and the
    worker polls at its interval.

    A LISTEN connection can die silently (a proxy drops it, the server restarts); a
    query every HEALTH_CHECK_SECONDS notices, and the connection is re-established
    with back-off. Meanwhile the worker's polling interval keeps due tasks moving.
    """

    name = "pgqueue-listener"

    def __init__(
        self,
        database: Database,
        queues: Iterable[str],
        on_wake: Callable[[], None],
        on_control: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self._database = database
        self._schema = database.schema
        self._control_channel = Channel.CONTROL.in_schema(database.schema)
        self._on_control = on_control
        self._queues = frozenset(queues)
        self._on_wake = on_wake
        self.connected = asyncio.Event()
        #: Notifications cannot reach this process: the worker polls.
        self.polling = False
        #: Counts the connections that listened: a new one means wake-ups were missed.
        self.generation = 0

    async def _run(self) -> None:
        backoff = Backoff(first=0.1, most=MAX_BACKOFF_SECONDS)
        dsn = self._database.listen_dsn
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    dsn,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT_SECONDS,
                    application_name="pgqueue-listener",
                    **KEEPALIVES,
                ) as conn:
                    await conn.execute(Channel.CONTROL.listen(self._schema))
                    if not await self._probe(conn):
                        await conn.execute("UNLISTEN *")  # not left on a pooled server session
                        self._fall_back_to_polling(dsn)
                        return
                    await conn.execute(Channel.TASKS.listen(self._schema))
                    self.generation += 1
                    self.connected.set()
                    self._on_wake()  # catch up on whatever was queued while not listening
                    backoff.reset()
                    await self._listen(conn)
            except UNAVAILABLE as error:  # its own connection, or the probe's sender
                self.connected.clear()
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # stop() while connecting
                    raise asyncio.CancelledError from error
                await backoff.pause(
                    log,
                    "LISTEN connection to %s lost (%s)",
                    describe_dsn(dsn),
                    first_line(error),
                )

    async def _probe(self, conn: psycopg.AsyncConnection[object]) -> bool:
        """Whether a notification sent from another connection reaches `conn`."""
        token = uuid.uuid4().hex
        async with self._database.async_connection() as sender:
            await sender.execute(
                self._database.queries["notify_probe"],
                {"channel": self._control_channel, "token": token},
            )
        async for note in conn.notifies(timeout=PROBE_SECONDS):
            if note.channel == self._control_channel and note.payload == f"probe {token}":
                return True
        return False

    def _fall_back_to_polling(self, dsn: str) -> None:
        self.polling = True
        self.connected.clear()
        log.warning(
            "notifications sent through %s do not reach a LISTEN connection to %s (a pooler "
            "in transaction mode?): polling instead, so new tasks wait up to the polling "
            "interval; set PGQUEUE_LISTEN_DSN to a direct connection to the server",
            describe_dsn(self._database.dsn),
            describe_dsn(dsn),
        )
        self._on_wake()

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
