"""Paused queues for RabbitMQ workers: the table `pgqueue queue pause` writes, read every
POLL_SECONDS, so that a worker stops consuming a queue while it is paused and starts
again once it is resumed (the database broker's claim reads the same table)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from pgqueue.db.database import UNAVAILABLE, Database
from pgqueue.errors import first_line
from pgqueue.loops import BackgroundLoop

log = logging.getLogger("pgqueue.rabbitmq.pauses")

#: How soon a RabbitMQ worker sees a pause or a resume (it has no NOTIFY connection).
POLL_SECONDS = 1.0

OnChange = Callable[[set[str]], Awaitable[None]]


class PauseWatcher(BackgroundLoop):
    """Calls `on_change(paused)` with the paused ones among `queues` whenever they change.

    `paused` holds the last state read; while the database is away the worker keeps it.
    """

    name = "pgqueue-rabbitmq-pauses"

    def __init__(self, database: Database, queues: Sequence[str], on_change: OnChange) -> None:
        super().__init__()
        self._database = database
        self._queues = list(queues)
        self._on_change = on_change
        self.paused: set[str] = set()
        self._away = False

    async def read(self) -> set[str]:
        """The paused ones among the worker's queues, now."""
        async with self._database.async_connection() as conn:
            cursor = await conn.execute(
                self._database.queries["paused_among"], {"queues": self._queues}
            )
            return {row[0] for row in await cursor.fetchall()}

    async def _run(self) -> None:
        while True:
            try:
                paused = await self.read()
            except UNAVAILABLE as error:
                if not self._away:  # once per outage: the other loops say more
                    log.warning("cannot read paused queues (%s); as before", first_line(error))
                self._away = True
            else:
                self._away = False
                if paused != self.paused:
                    for queue in sorted(paused - self.paused):
                        log.info("queue %s paused: not consuming it until it is resumed", queue)
                    for queue in sorted(self.paused - paused):
                        log.info("queue %s resumed: consuming it again", queue)
                    self.paused = paused
                    await self._on_change(paused)
            await asyncio.sleep(POLL_SECONDS)
