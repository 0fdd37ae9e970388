"""The database broker: the task table is the queue; SKIP LOCKED claims, NOTIFY wake-ups."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from pgqueue.brokers.base import Broker, CancelCallback
from pgqueue.brokers.postgres.completer import Completer
from pgqueue.brokers.postgres.listener import Listener
from pgqueue.brokers.postgres.maintenance import Maintenance
from pgqueue.brokers.postgres.presence import WorkerRegistry
from pgqueue.db.claim import claim_tasks
from pgqueue.db.cron import CronScheduler
from pgqueue.db.database import (
    CONNECT_TIMEOUT_SECONDS,
    UNAVAILABLE,
    Database,
    database_from_settings,
)
from pgqueue.db.outcomes import complete_outcomes
from pgqueue.db.store import TaskStore
from pgqueue.errors import LeaseLost
from pgqueue.loops import Backoff, retrying
from pgqueue.records import CleanupPolicy, NewTask, Outcome, OutcomeKind, Task, WorkerInfo
from pgqueue.settings import Settings

if TYPE_CHECKING:
    from pgqueue.settings import TaskDefaults
    from pgqueue.tasks.definition import TaskFunction

log = logging.getLogger("pgqueue.postgres")

T = TypeVar("T")
MAX_BACKOFF_SECONDS = 10.0
#: Connections of transactional tasks: their own pool, so that long tasks holding a
#: transaction never starve the claims and heartbeats of the main pool.
TASK_POOL_MAX_SIZE = 32


class PostgresTaskTransaction:
    """An open transaction that a transactional task writes in; `complete` records the task
    COMPLETED in it, fenced by the lease token, so both commit together or not at all."""

    def __init__(
        self, conn: psycopg.AsyncConnection[Any], task: Task, queries: dict[str, str]
    ) -> None:
        self.connection = conn
        self._task = task
        self._queries = queries

    async def complete(self, result_json: str) -> None:
        outcome = Outcome(self._task, OutcomeKind.COMPLETED, result_json)
        if await complete_outcomes(self.connection, self._queries, [outcome]):
            raise LeaseLost(
                f"lease lost: task {self._task.id} {self._task.name} (lease token "
                f"{self._task.lease_token}) was taken over or cancelled; its writes are "
                "rolled back"
            )


async def _asynchronous_commit(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute("SET synchronous_commit = off")


class PostgresBroker(Broker):
    """Tasks are rows of the task table; workers claim them with the claim of db/claim.py."""

    #: The worker may claim ahead of its free slots (worker.py): buffered tasks are RUNNING
    #: under this worker's lease, heartbeated, and released (PENDING) if not started.
    claims_ahead = True
    #: Tasks with parents wait in the task table; the completion that settles the last
    #: parent makes them PENDING (sql/functions.sql, release_children).
    workflows = True
    # The contract's optional capabilities, always there on this broker.
    database: Database
    lease_seconds: float

    def __init__(
        self,
        database: Database,
        lease_seconds: float = 30.0,
        unknown_task_grace_seconds: float = 3600.0,
    ) -> None:
        self.database = database
        self.store = TaskStore(database)
        self.lease_seconds = lease_seconds
        self.unknown_task_grace_seconds = unknown_task_grace_seconds
        self._worker_id = ""
        self._queues: list[str] = []
        self._wake = asyncio.Event()
        self._interrupted = False
        self._listener: Listener | None = None
        self._completer: Completer | None = None
        self._completion_pool: AsyncConnectionPool | None = None
        self._maintenance: Maintenance | None = None
        self._registry: WorkerRegistry | None = None
        self._task_pool: AsyncConnectionPool | None = None
        self._on_cancel: CancelCallback | None = None
        self._cron: CronScheduler | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresBroker:
        return cls(
            database_from_settings(settings),
            lease_seconds=settings.lease_seconds,
            unknown_task_grace_seconds=settings.unknown_task_grace_seconds,
        )

    # -- producers ---------------------------------------------------------------------

    def enqueue(self, tasks: Sequence[NewTask], connection: Any = None) -> None:
        self.store.insert(tasks, connection)

    async def aenqueue(self, tasks: Sequence[NewTask], connection: Any = None) -> None:
        await self.store.ainsert(tasks, connection)

    def enqueue_unique(self, tasks: Sequence[NewTask], connection: Any = None) -> list[uuid.UUID]:
        """Deliver tasks with unique keys; per row, its id or the id of its key's holder."""
        return self.store.insert_unique(tasks, connection)

    async def aenqueue_unique(
        self, tasks: Sequence[NewTask], connection: Any = None
    ) -> list[uuid.UUID]:
        return await self.store.ainsert_unique(tasks, connection)

    def parent_results(self, task_id: uuid.UUID) -> dict[uuid.UUID, Any]:
        return self.store.parent_results(task_id)

    async def aparent_results(self, task_id: uuid.UUID) -> dict[uuid.UUID, Any]:
        return await self.store.aparent_results(task_id)

    # -- workers -----------------------------------------------------------------------

    async def open(
        self,
        worker_id: str,
        queues: Sequence[str],
        cleanup: CleanupPolicy | None,
        worker: WorkerInfo | None = None,
        *,
        on_cancel: CancelCallback | None = None,
    ) -> None:
        self._worker_id = worker_id
        self._queues = list(queues)
        # The worker hears of a cancel at once, through the listener's control channel.
        self._on_cancel = on_cancel
        self._wake = asyncio.Event()
        self._wake.set()  # the first claim looks at once
        self._interrupted = False
        self._listener = Listener(
            self.database.dsn, self.database.schema, queues, self._wake.set, self._on_control
        )
        self._listener.start()
        self._completion_pool = AsyncConnectionPool(
            self.database.dsn,
            min_size=1,
            max_size=2,
            kwargs={
                "autocommit": True,
                "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                "application_name": "pgqueue-completer",
            },
            configure=_asynchronous_commit,
            open=False,
            name="pgqueue-completer",
        )
        await self._completion_pool.open()
        self._completer = Completer(
            self._completion_pool,
            self.database.queries,
            self._wake.set,
            self.unknown_task_grace_seconds,
        )
        self._completer.start()
        self._maintenance = Maintenance(self.database, self.lease_seconds, cleanup)
        self._maintenance.start()
        self._registry = WorkerRegistry(
            self.database, worker_id, queues, worker or WorkerInfo(), self.lease_seconds
        )
        self._registry.start()

    async def schedule_cron(
        self, tasks: Sequence[TaskFunction[Any]], defaults: TaskDefaults
    ) -> None:
        # Each occurrence is written in the transaction that claims it in cron_runs (cron.py).
        self._cron = CronScheduler(self.database, tasks, defaults, self.aenqueue)
        self._cron.start()

    async def claim(
        self, limit: int, wait_seconds: float, start_now: int | None = None
    ) -> list[Task]:
        deadline = time.monotonic() + wait_seconds
        while not self._interrupted:
            self._wake.clear()
            tasks = await self._retrying("claim", lambda: self._claim(limit, start_now))
            if tasks or wait_seconds <= 0:
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

    async def _claim(self, limit: int, start_now: int | None) -> list[Task]:
        async with self.database.async_connection() as conn:
            return await claim_tasks(
                conn,
                self.database.queries,
                queues=self._queues,
                limit=limit,
                worker_id=self._worker_id,
                lease_seconds=self.lease_seconds,
                start_now=start_now,
            )

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

    async def heartbeat(
        self, running: Sequence[Task], claimed_ahead: Sequence[Task] = ()
    ) -> set[uuid.UUID]:
        if self._registry is not None:
            await self._registry.heartbeat(len(running) + len(claimed_ahead))
        if not running and not claimed_ahead:
            return set()
        held = await self._extend_leases(running, claimed_ahead)
        return {task.id for task in [*running, *claimed_ahead]} - held

    async def record_starts(self, tasks: Sequence[Task]) -> None:
        await self._extend_leases(tasks)

    async def _extend_leases(
        self, running: Sequence[Task], claimed_ahead: Sequence[Task] = ()
    ) -> set[uuid.UUID]:
        """Renew leases and record the starts of `running` (once, fenced by the token: see
        sql/functions.sql); the ids still held."""
        tasks = [*running, *claimed_ahead]
        async with self.database.async_connection() as conn:
            cursor = await conn.execute(
                self.database.queries["extend_leases"],
                {
                    "ids": [task.id for task in tasks],
                    "tokens": [task.lease_token for task in tasks],
                    "lease_seconds": self.lease_seconds,
                    "started": [task.started_at for task in running] + [None] * len(claimed_ahead),
                },
            )
            return {row[0] for row in await cursor.fetchall()}

    @property
    def recording(self) -> bool:
        completer = self._completer
        return completer is None or completer.recording.is_set()

    async def until_recording(self) -> None:
        if self._completer is not None:
            await self._completer.recording.wait()

    @contextlib.asynccontextmanager
    async def completion_transaction(self, task: Task) -> AsyncIterator[PostgresTaskTransaction]:
        """A transaction for a transactional task; rolled back if the body raises."""
        if self._task_pool is None:
            self._task_pool = AsyncConnectionPool(
                self.database.dsn,
                min_size=0,
                max_size=TASK_POOL_MAX_SIZE,
                kwargs={
                    "autocommit": True,
                    "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                    "application_name": "pgqueue-task",
                },
                open=False,
                name="pgqueue-task",
            )
            await self._task_pool.open()
        async with self._task_pool.connection() as conn, conn.transaction():
            yield PostgresTaskTransaction(conn, task, self.database.queries)

    def _on_control(self, payload: str) -> None:
        command, _, argument = payload.partition(" ")
        if command == "cancel" and self._on_cancel is not None:
            try:
                task_id = uuid.UUID(argument)
            except ValueError:
                log.warning("ignoring a malformed control message %r", payload)
                return
            self._on_cancel(task_id)

    def wake(self) -> None:
        self._interrupted = True
        self._wake.set()

    async def close(self) -> None:
        if self._cron is not None:
            await self._cron.stop()
            self._cron = None
        if self._registry is not None:
            await self._registry.close()
            self._registry = None
        if self._maintenance is not None:
            await self._maintenance.stop()
        if self._listener is not None:
            await self._listener.stop()
        if self._completer is not None:
            await self._completer.close(timeout=max(self.lease_seconds / 2, 1.0))
        if self._completion_pool is not None:
            await self._completion_pool.close()
        if self._task_pool is not None:
            await self._task_pool.close()
            self._task_pool = None
        await self.database.aclose()

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """A worker never dies because the database went away: back off and try again."""
        return await retrying(
            call,
            UNAVAILABLE,
            Backoff(first=0.1, most=MAX_BACKOFF_SECONDS),
            log,
            f"{what} failed, database unavailable",
            give_up=lambda: self._interrupted,
        )
