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

from pgqueue.brokers.base import Broker, CancelCallback, HandOff
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
    configure_async,
    database_from_settings,
)
from pgqueue.db.outcomes import HandOffOffer, complete_outcomes
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
#: While producers of its queues are in flight, a worker about to sleep looks again after
#: these pauses (doubling) instead: it cannot yet rely on being notified (announce_sleep).
SETTLE_FIRST_SECONDS = 0.001
SETTLE_MOST_SECONDS = 0.2
#: While keyed rows (limits, fair share) are due but held back by a limit, an idle worker
#: claims again after this pause: the longest a freed slot or a refilled token waits.
KEYED_POLL_SECONDS = 0.1
#: How often a worker looks whether keyed rows wait in its queues (while it claims without
#: sleeping): the longest it claims rows without keys ahead of keyed rows of higher priority.
KEYED_CHECK_SECONDS = 1.0
#: A worker that gave back a task whose name it does not know wakes this much after a due
#: time its timer waits for, for as long as such a task may come due again (the longest
#: back-off of unknown_task_backoff, 30 s +25%, and a margin): a worker that knows the
#: name, woken by its timer at the due time, claims it first instead of losing the race to
#: the one that would only give it back again (during a rolling deploy).
UNKNOWN_YIELD_SECONDS = 0.25
UNKNOWN_YIELD_FOR_SECONDS = 45.0
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
    """Outcomes commit without waiting for the WAL flush (a lost one is rescued). A session
    setting: behind a pooler it would leak to other clients' transactions, so not there."""
    await configure_async(conn)
    if conn.prepare_threshold is not None:  # a direct connection (configure_async)
        await conn.execute("SET synchronous_commit = off")


class PostgresBroker(Broker):
    """Tasks are rows of the task table; workers claim them with the claim of db/claim.py."""

    #: The worker may claim ahead of its free slots (worker.py): buffered tasks are RUNNING
    #: under this worker's lease, heartbeated, and released (PENDING) if not started.
    claims_ahead = True
    #: Tasks with parents wait in the task table; the completion that settles the last
    #: parent makes them PENDING (sql/functions.sql, release_children).
    workflows = True
    limits = True
    #: The completion that makes children ready claims them for the worker that completed
    #: their parents, if it has free slots (sql/functions.sql, complete_and_hand_off).
    hands_off = True
    # The contract's optional capabilities, always there on this broker.
    database: Database
    lease_seconds: float

    def __init__(
        self,
        database: Database,
        lease_seconds: float = 30.0,
        unknown_task_grace_seconds: float = 3600.0,
        log_failure_tracebacks: bool = True,
    ) -> None:
        self.database = database
        self.store = TaskStore(database)
        self.lease_seconds = lease_seconds
        self.unknown_task_grace_seconds = unknown_task_grace_seconds
        self.log_failure_tracebacks = log_failure_tracebacks
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
        self._hand_off: HandOff | None = None
        self._cron: CronScheduler | None = None
        # The listener generation under which this worker announced itself asleep, with no
        # producer in flight (None: awake, or not yet sure); whether its rows may exist.
        self._asleep_since: int | None = None
        self._announced = False
        self._forgetting: asyncio.Task[None] | None = None
        self._settle_seconds = SETTLE_FIRST_SECONDS
        # Until when (time.monotonic()) this worker's timer yields to workers that know
        # the names it gave back (UNKNOWN_YIELD_SECONDS).
        self._yield_until = 0.0
        # Limits and fair share: whether keyed rows wait (the keyed claim then), when that
        # was last looked at, and whether due keyed rows are held back (a short poll).
        self._keyed = False
        self._keyed_checked_at = -KEYED_CHECK_SECONDS
        self._keyed_held = False

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresBroker:
        return cls(
            database_from_settings(settings),
            lease_seconds=settings.lease_seconds,
            unknown_task_grace_seconds=settings.unknown_task_grace_seconds,
            log_failure_tracebacks=settings.log_failure_tracebacks,
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
        hand_off: HandOff | None = None,
    ) -> None:
        self._worker_id = worker_id
        self._queues = list(queues)
        # The worker hears of a cancel at once, through the listener's control channel.
        self._on_cancel = on_cancel
        self._hand_off = hand_off
        self._wake = asyncio.Event()
        self._wake.set()  # the first claim looks at once
        self._interrupted = False
        self._asleep_since = None
        # Refuse an unmigrated database now, in one line, rather than fail every loop.
        await self._retrying("schema check", self.database.check_migrated)
        self._listener = Listener(self.database, queues, self._wake.set, self._on_control)
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
            log_failure_tracebacks=self.log_failure_tracebacks,
            offer=self._hand_off_offer if hand_off is not None else None,
            take=hand_off.take if hand_off is not None else None,
            on_unknown_given_back=self._yield_to_workers_that_know,
        )
        self._completer.start()
        self._maintenance = Maintenance(self.database, self.lease_seconds, cleanup)
        self._maintenance.start()
        self._registry = WorkerRegistry(
            self.database, worker_id, queues, worker or WorkerInfo(), self.lease_seconds
        )
        self._registry.start()

    def _yield_to_workers_that_know(self) -> None:
        self._yield_until = time.monotonic() + UNKNOWN_YIELD_FOR_SECONDS

    def _hand_off_offer(self) -> HandOffOffer | None:
        """The worker's free slots now, for the children its completions make ready."""
        assert self._hand_off is not None
        slots = self._hand_off.free_slots()
        if slots <= 0 or self._interrupted:
            return None
        return HandOffOffer(self._worker_id, self._queues, slots, self.lease_seconds)

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
            if tasks:
                await self._wake_up()
                return tasks
            if wait_seconds <= 0:
                return tasks
            settle: float | None = None
            if self._must_announce():
                if await self._retrying("sleep", self._announce_sleep):
                    continue  # claim once more: what no NOTIFY will announce is visible now
                settle = self._settle_seconds  # a producer in flight: look again soon
                self._settle_seconds = min(2 * settle, SETTLE_MOST_SECONDS)
            until_next = await self._retrying("next due task", self._seconds_until_next_task)
            timeout = deadline - time.monotonic()
            if self._keyed_held:
                # Keyed rows due but held back by a limit: no NOTIFY says when a slot frees
                # or a token refills, so look again shortly (KEYED_POLL_SECONDS).
                timeout = min(timeout, KEYED_POLL_SECONDS)
            if until_next is not None:
                timeout = min(timeout, max(until_next, 0.0))
            if settle is not None:
                timeout = min(timeout, settle)
            if timeout <= 0 and time.monotonic() >= deadline:
                return []
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    return []
        return []

    # -- sleeping: producers notify only queues that have a sleeping worker ------------
    # A worker about to wait for NOTIFY announces itself (announce_sleep, queries.sql); the
    # announcement holds only if no producer of its queues is in flight, and it claims once
    # more after it. Found work: it forgets the announcement. See notify_new_tasks in
    # sql/schema.sql for why no wake-up is lost.

    def _must_announce(self) -> bool:
        listener = self._listener
        if listener is None or listener.polling or not listener.connected.is_set():
            return False  # nobody would hear a NOTIFY: producers need not send one
        return self._asleep_since != listener.generation

    async def _announce_sleep(self) -> bool:
        assert self._listener is not None
        await self._forgotten()  # never after the announcement: it would erase it
        generation = self._listener.generation
        self._announced = True
        row = await self.database.afetch_one(
            "announce_sleep", {"worker_id": self._worker_id, "queues": self._queues}
        )
        if row is None or not row["settled"]:
            return False
        self._asleep_since = generation
        self._settle_seconds = SETTLE_FIRST_SECONDS
        return True

    async def _wake_up(self) -> None:
        """Forget the announcement beside the run that starts now, not before it."""
        self._asleep_since = None
        if self._announced and self._forgetting is None:
            self._forgetting = asyncio.create_task(
                self._retrying("wake-up", self._forget_sleep), name="pgqueue-forget-sleep"
            )

    async def _forgotten(self) -> None:
        if self._forgetting is not None:
            forgetting, self._forgetting = self._forgetting, None
            await asyncio.gather(forgetting, return_exceptions=True)

    async def _forget_sleep(self) -> None:
        async with self.database.async_connection() as conn:
            await conn.execute(
                self.database.queries["forget_sleep"], {"worker_id": self._worker_id}
            )
        self._announced = False

    async def _claim(self, limit: int, start_now: int | None) -> list[Task]:
        now = time.monotonic()
        if now >= self._keyed_checked_at + KEYED_CHECK_SECONDS:
            # Whether keyed rows wait: the keyed claim (which also takes the others, in
            # priority order) only then; the claim of rows without keys stays as cheap as
            # before limits existed.
            async with self.database.async_connection() as conn:
                cursor = await conn.execute(
                    self.database.queries["keyed_tasks_waiting"], {"queues": self._queues}
                )
                row = await cursor.fetchone()
                self._keyed = bool(row and row[0])
            self._keyed_checked_at = now
        async with self.database.async_connection() as conn:
            return await claim_tasks(
                conn,
                self.database.queries,
                queues=self._queues,
                limit=limit,
                worker_id=self._worker_id,
                lease_seconds=self.lease_seconds,
                start_now=start_now,
                keyed=self._keyed,
            )

    async def _seconds_until_next_task(self) -> float | None:
        """Seconds until a row is due (later by UNKNOWN_YIELD_SECONDS while this worker
        yields); keyed rows due now (a limit holds them back) set `_keyed_held` instead, for
        a short poll, and make the next claim the keyed one."""
        async with self.database.async_connection() as conn:
            cursor = await conn.execute(
                self.database.queries["seconds_until_next_task"], {"queues": self._queues}
            )
            row = await cursor.fetchone()
        plain = None if row is None or row[0] is None else float(row[0])
        keyed = None if row is None or row[1] is None else float(row[1])
        self._keyed_held = keyed is not None and keyed <= 0
        if keyed is not None:
            self._keyed, self._keyed_checked_at = True, time.monotonic()
        if keyed is not None and keyed > 0:
            plain = keyed if plain is None else min(plain, keyed)
        if plain is not None and time.monotonic() < self._yield_until:
            plain += UNKNOWN_YIELD_SECONDS
        return plain

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
                configure=configure_async,
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
        await self._forgotten()
        if self._announced:
            with contextlib.suppress(*UNAVAILABLE):
                await self._forget_sleep()
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
