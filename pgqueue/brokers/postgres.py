"""The database broker: the task table is the queue; SKIP LOCKED claims, NOTIFY wake-ups."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from pgqueue.brokers import Broker, CleanupPolicy
from pgqueue.completer import Completer
from pgqueue.database import CONNECT_TIMEOUT_SECONDS, Database, database_from_settings
from pgqueue.errors import DatabaseUnavailable
from pgqueue.listener import Listener
from pgqueue.maintenance import Maintenance
from pgqueue.records import NewTask, Outcome, Task
from pgqueue.settings import Settings
from pgqueue.store import TaskStore

log = logging.getLogger("pgqueue.worker")

T = TypeVar("T")
MAX_BACKOFF_SECONDS = 10.0


async def _asynchronous_commit(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute("SET synchronous_commit = off")


class PostgresBroker(Broker):
    """Tasks are rows of the task table; workers claim them with `claim_tasks()`."""

    def __init__(self, database: Database, lease_seconds: float = 30.0) -> None:
        self.database = database
        self.store = TaskStore(database)
        self.lease_seconds = lease_seconds
        self._worker_id = ""
        self._queues: list[str] = []
        self._wake = asyncio.Event()
        self._interrupted = False
        self._listener: Listener | None = None
        self._completer: Completer | None = None
        self._completion_pool: AsyncConnectionPool | None = None
        self._maintenance: Maintenance | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresBroker:
        return cls(database_from_settings(settings), lease_seconds=settings.lease_seconds)

    # -- producers ---------------------------------------------------------------------

    def enqueue(self, tasks: Sequence[NewTask], connection: Any = None) -> None:
        self.store.insert(tasks, connection)

    async def aenqueue(self, tasks: Sequence[NewTask], connection: Any = None) -> None:
        await self.store.ainsert(tasks, connection)

    # -- workers -----------------------------------------------------------------------

    async def open(
        self, worker_id: str, queues: Sequence[str], cleanup: CleanupPolicy | None
    ) -> None:
        self._worker_id = worker_id
        self._queues = list(queues)
        self._wake = asyncio.Event()
        self._wake.set()  # the first claim looks at once
        self._interrupted = False
        self._listener = Listener(self.database.dsn, self.database.schema, queues, self._wake.set)
        self._listener.start()
        self._completion_pool = AsyncConnectionPool(
            self.database.dsn,
            min_size=1,
            max_size=2,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_SECONDS},
            configure=_asynchronous_commit,
            open=False,
            name="pgqueue-completer",
        )
        await self._completion_pool.open()
        self._completer = Completer(self._completion_pool, self.database.queries, self._wake.set)
        self._completer.start()
        self._maintenance = Maintenance(self.database, self.lease_seconds, cleanup)
        self._maintenance.start()

    async def claim(self, limit: int, wait_seconds: float) -> list[Task]:
        deadline = time.monotonic() + wait_seconds
        while not self._interrupted:
            self._wake.clear()
            tasks = await self._retrying("claim", lambda: self._claim(limit))
            if tasks:
                return tasks
            until_next = await self._retrying("next due task", self._seconds_until_next_task)
            timeout = deadline - time.monotonic()
            if until_next is not None:
                timeout = min(timeout, max(until_next, 0.0))
            if timeout <= 0 and time.monotonic() >= deadline:
                return []
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    return []
        return []

    async def _claim(self, limit: int) -> list[Task]:
        async with self.database.async_connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                self.database.queries["claim_tasks"],
                {
                    "queues": self._queues,
                    "limit": limit,
                    "worker_id": self._worker_id,
                    "lease_seconds": self.lease_seconds,
                },
            )
            return [Task.from_row(row) for row in await cursor.fetchall()]

    async def _seconds_until_next_task(self) -> float | None:
        async with self.database.async_connection() as conn:
            cursor = await conn.execute(
                self.database.queries["seconds_until_next_task"], {"queues": self._queues}
            )
            row = await cursor.fetchone()
            return None if row is None or row[0] is None else float(row[0])

    async def finish(self, outcome: Outcome) -> None:
        assert self._completer is not None, "open() the broker first"
        self._completer.add(outcome)

    async def heartbeat(self, tasks: Sequence[Task]) -> set[uuid.UUID]:
        if not tasks:
            return set()
        async with self.database.async_connection() as conn:
            cursor = await conn.execute(
                self.database.queries["extend_leases"],
                {
                    "ids": [task.id for task in tasks],
                    "tokens": [task.lease_token for task in tasks],
                    "lease_seconds": self.lease_seconds,
                },
            )
            held = {row[0] for row in await cursor.fetchall()}
        return {task.id for task in tasks} - held

    def wake(self) -> None:
        self._interrupted = True
        self._wake.set()

    async def close(self) -> None:
        if self._maintenance is not None:
            await self._maintenance.stop()
        if self._listener is not None:
            await self._listener.stop()
        if self._completer is not None:
            await self._completer.close(timeout=max(self.lease_seconds / 2, 1.0))
        if self._completion_pool is not None:
            await self._completion_pool.close()
        await self.database.aclose()

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """A worker never dies because the database went away: back off and try again."""
        backoff = 0.1
        while True:
            try:
                return await call()
            except (psycopg.OperationalError, PoolTimeout, DatabaseUnavailable) as error:
                if self._interrupted:
                    raise
                log.warning(
                    "%s failed, database unavailable (%s); retrying in %.1fs", what, error, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
