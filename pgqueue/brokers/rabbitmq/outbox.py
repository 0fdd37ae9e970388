"""The RabbitMQ broker's outbox: tasks queued in a caller's transaction, relayed after commit.

`write`/`awrite` add rows in the caller's transaction: a rollback leaves nothing. The
`Relay` runs in every RabbitMQ worker: woken by the NOTIFY that the insert trigger sends
(delivered at commit only), it locks a batch of rows (SKIP LOCKED, so relays share the
work), publishes them, waits for the broker's confirms, then deletes them and commits.
A relay that dies after publishing and before its commit leaves the rows to be published
again: at least once, never lost.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg

from pgqueue.db.database import (
    CONNECT_TIMEOUT_SECONDS,
    KEEPALIVES,
    UNAVAILABLE,
    Database,
    describe_dsn,
)
from pgqueue.db.drivers import AsyncDriverConnection
from pgqueue.db.queries import Channel
from pgqueue.errors import BrokerUnavailable, first_line
from pgqueue.loops import BackgroundLoop, Backoff

log = logging.getLogger("pgqueue.outbox")

BATCH_SIZE = 500
POLL_SECONDS = 5.0  # a safety net: NOTIFY normally wakes the relay at once
MAX_BACKOFF_SECONDS = 10.0
#: The relay waits these out: the database or the broker is away.
RELAY_PAUSES: tuple[type[Exception], ...] = (*UNAVAILABLE, BrokerUnavailable)


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxRow:
    """One task waiting in the outbox: what the relay needs to publish it."""

    task_id: uuid.UUID
    queue: str
    priority: int
    message: str
    run_at: float  # epoch seconds

    def params(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "queue": self.queue,
            "priority": self.priority,
            "message": self.message,
            "run_at": self.run_at,
        }


def write(
    conn: psycopg.Connection[Any], queries: dict[str, str], rows: Sequence[OutboxRow]
) -> None:
    """Add rows inside the caller's (open) transaction."""
    with conn.cursor() as cursor:
        cursor.executemany(queries["outbox_insert"], [row.params() for row in rows])


async def awrite(
    conn: AsyncDriverConnection, queries: dict[str, str], rows: Sequence[OutboxRow]
) -> None:
    async with conn.cursor() as cursor:
        await cursor.executemany(queries["outbox_insert"], [row.params() for row in rows])


Publish = Callable[[Sequence[OutboxRow]], Awaitable[None]]


class Relay(BackgroundLoop):
    """Publishes committed outbox rows through `publish` (which returns after the confirms)."""

    name = "pgqueue-outbox-relay"

    def __init__(self, database: Database, publish: Publish) -> None:
        super().__init__()
        self._database = database
        self._publish = publish

    async def _run(self) -> None:
        backoff = Backoff(first=0.1, most=MAX_BACKOFF_SECONDS)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._database.dsn,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT_SECONDS,
                    application_name="pgqueue-outbox-relay",
                    **KEEPALIVES,  # a dead network is noticed, not waited on (listener.py)
                ) as listener:
                    await listener.execute(Channel.OUTBOX.listen(self._database.schema))
                    while True:
                        await self.relay_all()
                        backoff.reset()
                        async for _ in listener.notifies(timeout=POLL_SECONDS, stop_after=1):
                            pass
            except RELAY_PAUSES as error:
                await backoff.pause(log, "outbox relay paused (%s)", first_line(error))

    async def relay_all(self) -> int:
        """Publish batches until the outbox is empty (for this relay); returns how many."""
        total = 0
        while True:
            moved = await self._relay_batch()
            total += moved
            if moved < BATCH_SIZE:
                return total

    async def _relay_batch(self) -> int:
        queries = self._database.queries
        async with self._database.async_connection() as conn, conn.transaction():
            cursor = await conn.execute(queries["outbox_take"], {"limit": BATCH_SIZE})
            taken = await cursor.fetchall()
            if not taken:
                return 0
            rows = [
                OutboxRow(task_id, queue, priority, message, run_at)
                for (_, task_id, queue, priority, message, run_at) in taken
            ]
            await self._publish(rows)
            await conn.execute(queries["outbox_delete"], {"ids": [row[0] for row in taken]})
        log.debug(
            "outbox relay published %d tasks from %s", len(taken), describe_dsn(self._database.dsn)
        )
        return len(taken)
