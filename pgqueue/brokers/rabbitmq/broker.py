"""The RabbitMQ broker: tasks travel as messages, records (statuses) stay in the task table.

Design (docs/rabbitmq.md): the names, priorities and delay chain are in `amqp_topology.py`,
the message format in `amqp_messages.py`, the connection with publisher confirms (and the
thread sync code publishes from) in `amqp_connection.py`, the batched status writes in
`amqp_records.py`; this module implements the Broker interface on top of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aio_pika.abc import AbstractIncomingMessage

from pgqueue.brokers.base import Broker, CancelCallback, HandOff
from pgqueue.brokers.rabbitmq import outbox
from pgqueue.brokers.rabbitmq.connection import (
    ERRORS,
    MAX_BACKOFF_SECONDS,
    Link,
    PublishingThread,
    publish_new,
    publish_rows,
    safe_url,
)
from pgqueue.brokers.rabbitmq.messages import (
    build_message,
    decode,
    outbox_row,
    record_message,
    unknown_headers,
)
from pgqueue.brokers.rabbitmq.pauses import PauseWatcher
from pgqueue.brokers.rabbitmq.status_writer import (
    FollowUp,
    RecordWriter,
    decide_untracked,
    follow_ups,
)
from pgqueue.brokers.rabbitmq.topology import Topology
from pgqueue.db.cron import CronScheduler
from pgqueue.db.database import UNAVAILABLE, Database, database_from_settings
from pgqueue.db.drivers import async_driver_connection, sync_driver_connection
from pgqueue.db.outcomes import report
from pgqueue.db.queries import queries as named_queries
from pgqueue.db.store import TaskStore
from pgqueue.errors import BrokerUnavailable
from pgqueue.loops import Backoff, SupervisedTask, retrying
from pgqueue.records import CleanupPolicy, NewTask, Outcome, Task, WorkerInfo
from pgqueue.settings import Settings

if TYPE_CHECKING:
    from pgqueue.settings import TaskDefaults
    from pgqueue.tasks.definition import TaskFunction

log = logging.getLogger("pgqueue.rabbitmq")


class RabbitMQBroker(Broker):
    """Tasks travel as RabbitMQ messages; records (statuses) stay in the task table."""

    lease_seconds: float

    def __init__(self, settings: Settings, database: Database | None = None) -> None:
        self.settings = settings
        self.url = settings.rabbitmq_connection_url()
        self.topology = Topology(settings.rabbitmq_prefix)
        self.database = database
        self.tracking = settings.status_tracking and database is not None
        self.lease_seconds = settings.lease_seconds
        self._store = TaskStore(database) if database is not None else None
        self._queries = database.queries if database else named_queries(settings.schema_name)
        self._thread: PublishingThread | None = None
        self._producer: Link | None = None
        self._lock = threading.Lock()
        # worker side (open .. close)
        self._worker_id = ""
        self._queues: list[str] = []
        self._link: Link | None = None
        self._generation = 0
        self._buffer: list[tuple[int, AbstractIncomingMessage]] = []
        self._arrived = asyncio.Event()
        self._connected = asyncio.Event()
        self._inflight: dict[uuid.UUID, tuple[int, AbstractIncomingMessage]] = {}
        self._outcomes: list[Outcome] = []
        self._outcome_ready = asyncio.Event()
        self._settled = asyncio.Event()
        self._background: list[SupervisedTask] = []
        self._relay: outbox.Relay | None = None
        self._pauses: PauseWatcher | None = None
        #: The consumer tag of each queue consumed on the current channel.
        self._consumers: dict[str, str] = {}
        self._records: RecordWriter | None = None
        self._interrupted = False
        self._prefetch = 0
        self._cron: CronScheduler | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RabbitMQBroker:
        """Records in the configured database (or the embedded default) when tracking is on."""
        wants_database = settings.status_tracking or settings.dsn is not None
        return cls(settings, database_from_settings(settings) if wants_database else None)

    # -- producers ---------------------------------------------------------------------

    def _publisher(self) -> tuple[PublishingThread, Link]:
        with self._lock:
            if self._thread is None or self._producer is None:
                self._thread = PublishingThread()
                self._producer = Link(self.url, self.topology)
            return self._thread, self._producer

    def enqueue(self, tasks: Sequence[NewTask], connection: Any = None) -> None:
        if connection is not None:
            conn = sync_driver_connection(connection)
            if self._store is not None and self.tracking:
                self._store.insert(tasks, conn)
            outbox.write(conn, self._queries, [outbox_row(task) for task in tasks])
            return
        thread, link = self._publisher()
        thread.run(link.ensure())  # unreachable: fail before writing anything
        if self._store is not None and self.tracking:
            self._store.insert(tasks)
        try:
            thread.run(publish_new(link, tasks))
        except BrokerUnavailable:
            self._forget(tasks)
            raise

    async def aenqueue(self, tasks: Sequence[NewTask], connection: Any = None) -> None:
        if connection is not None:
            conn = await async_driver_connection(connection)
            if self._store is not None and self.tracking:
                await self._store.ainsert(tasks, conn)
            await outbox.awrite(conn, self._queries, [outbox_row(task) for task in tasks])
            return
        thread, link = self._publisher()
        await asyncio.wrap_future(thread.submit(link.ensure()))
        if self._store is not None and self.tracking:
            await self._store.ainsert(tasks)
        try:
            await asyncio.wrap_future(thread.submit(publish_new(link, tasks)))
        except BrokerUnavailable:
            await asyncio.to_thread(self._forget, tasks)
            raise

    def _forget(self, tasks: Sequence[NewTask]) -> None:
        """The broker refused: take the PENDING records back (a task is queued or absent)."""
        if self.database is not None and self.tracking:
            with self.database.connection() as conn:
                conn.execute(
                    self._queries["delete_pending_tasks"], {"ids": [task.id for task in tasks]}
                )

    def resubmit(self, task_id: uuid.UUID) -> None:
        """After TaskManager.retry: take the message out of the dead-letter queue, publish anew."""
        task = self._store.get(task_id) if self._store is not None else None
        if task is None:
            return
        thread, link = self._publisher()

        async def move() -> None:
            await link.take_dead(task.queue, task.id)
            await link.publish(task.queue, record_message(task), time.time())

        thread.run(move())

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
        # `on_cancel` is not called: the heartbeat reports cancelled tasks (records.held).
        # Nor `hand_off`: no workflows here (hands_off is False).
        self._worker_id = worker_id
        self._queues = list(queues)
        self._interrupted = False
        self._arrived, self._connected = asyncio.Event(), asyncio.Event()
        self._outcome_ready, self._settled = asyncio.Event(), asyncio.Event()
        self._settled.set()
        if self.database is not None:  # refuse an unmigrated database now, in one line
            await retrying(
                self.database.check_migrated,
                UNAVAILABLE,
                Backoff(first=0.1, most=MAX_BACKOFF_SECONDS),
                log,
                "schema check failed, database unavailable",
            )
        self._link = Link(self.url, self.topology, reconnect=False)
        if self.tracking:
            assert self.database is not None
            self._records = RecordWriter(
                self.database,
                self._queries,
                worker_id,
                lambda: self._interrupted,
                self.settings.unknown_task_grace_seconds,
            )
        self._background = [SupervisedTask("pgqueue-settle", self._settle_loop)]
        self._background[0].start()
        if self.database is not None:
            self._relay = outbox.Relay(self.database, self._publish_rows)
            self._relay.start()
            # `pgqueue queue pause`: paused queues are not consumed (pauses.py).
            self._pauses = PauseWatcher(self.database, queues, self._follow_pauses)
            with contextlib.suppress(*UNAVAILABLE):
                self._pauses.paused = await self._pauses.read()
            self._pauses.start()
        if worker is not None:  # prefetch: as many unacked messages as the worker runs
            self._start_consuming(worker.concurrency)

    async def schedule_cron(
        self, tasks: Sequence[TaskFunction[Any]], defaults: TaskDefaults
    ) -> None:
        """Through the database, if any: cron_runs decides which worker queues an occurrence,
        whose record and outbox row commit with that claim (docs/rabbitmq.md)."""
        if self.database is not None:
            self._cron = CronScheduler(self.database, tasks, defaults, self.aenqueue)
            self._cron.start()

    def _start_consuming(self, prefetch: int) -> None:
        self._prefetch = max(prefetch, 1)
        connection = SupervisedTask("pgqueue-rabbitmq", self._stay_connected)
        connection.start()
        self._background.append(connection)

    async def claim(
        self, limit: int, wait_seconds: float, start_now: int | None = None
    ) -> list[Task]:
        if self._prefetch == 0:  # opened without WorkerInfo: the first claim asks for all slots
            self._start_consuming(limit)
        deadline = time.monotonic() + wait_seconds
        while not self._interrupted:
            self._buffer = [(gen, m) for gen, m in self._buffer if gen == self._generation]
            if self._buffer:
                batch, self._buffer = self._buffer[:limit], self._buffer[limit:]
                tasks = await self._admit(batch)
                if tasks:
                    return tasks
                continue
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return []
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                return []
        return []

    async def _stay_connected(self) -> None:
        """Connect, consume; on a lost connection reconnect with back-off. Unacked messages
        of the lost channel are redelivered by RabbitMQ; the records tell repeats apart."""
        assert self._link is not None
        backoff = Backoff(first=0.1, most=MAX_BACKOFF_SECONDS)
        while True:
            try:
                channel = await self._link.open()
                await channel.set_qos(prefetch_count=self._prefetch, global_=True)
                self._generation += 1
                generation = self._generation
                self._consumers = {}
                for queue in self._queues:
                    if queue not in self._paused():
                        await self._consume(queue, generation)
                if backoff.seconds > backoff.first:
                    log.info("reconnected to RabbitMQ at %s", safe_url(self.url))
                backoff.reset()
                self._connected.set()
                self._arrived.set()
                await self._link.closed.wait()
                log.warning("connection to RabbitMQ at %s lost", safe_url(self.url))
            except (BrokerUnavailable, *ERRORS) as error:
                log.warning(
                    "RabbitMQ unavailable (%s); reconnecting in %.1fs", error, backoff.seconds
                )
            self._connected.clear()
            self._generation += 1  # what the old channel delivered cannot be acked any more
            await backoff.sleep()

    def _paused(self) -> set[str]:
        return self._pauses.paused if self._pauses is not None else set()

    async def _consume(self, queue: str, generation: int) -> None:
        assert self._link is not None
        declared = await self._link.declare(queue)
        self._consumers[queue] = await declared.consume(self._receiver(generation))

    async def _follow_pauses(self, paused: set[str]) -> None:
        """Stop consuming the queues just paused, consume those just resumed; while
        disconnected, the reconnect consumes only what is not paused."""
        generation = self._generation
        if self._link is None or not self._connected.is_set():
            return
        try:
            for queue, tag in list(self._consumers.items()):
                if queue in paused:
                    await (await self._link.declare(queue)).cancel(tag)
                    del self._consumers[queue]
            for queue in self._queues:
                if queue not in paused and queue not in self._consumers:
                    if generation != self._generation:
                        return
                    await self._consume(queue, generation)
        except (BrokerUnavailable, *ERRORS) as error:  # the connection loop takes over
            log.debug("could not follow paused queues: %s", error)

    def _receiver(self, generation: int) -> Any:
        async def receive(message: AbstractIncomingMessage) -> None:
            self._buffer.append((generation, message))
            self._arrived.set()

        return receive

    async def _admit(self, batch: list[tuple[int, AbstractIncomingMessage]]) -> list[Task]:
        """Tasks to run from deliveries: early ones go back to wait, stale ones are dropped."""
        assert self._link is not None
        ready: list[tuple[Task, int, AbstractIncomingMessage]] = []
        for generation, message in batch:
            try:
                task = decode(message)
            except (ValueError, KeyError, TypeError) as error:
                log.error("dead-lettering an undecodable message %s: %s", message.message_id, error)
                await self._settle_message(generation, message, reject=True)
                continue
            if task.run_at.timestamp() > time.time() + 0.002:  # delays beyond the chain
                try:
                    again = build_message(
                        message.body,
                        task.id,
                        task.priority,
                        task.attempts - 1,
                        task.run_at.timestamp(),
                        extra_headers=unknown_headers(message.headers),
                    )
                    await self._link.publish(task.queue, again, task.run_at.timestamp())
                    await self._settle_message(generation, message)
                except BrokerUnavailable:
                    pass  # redelivered after the reconnect
                continue
            if task.queue in self._paused():  # delivered before its consumer was cancelled
                if generation == self._generation:
                    with contextlib.suppress(*ERRORS):
                        await message.nack(requeue=True)
                continue
            if task.id in self._inflight:  # a duplicate of a run in progress
                await self._settle_message(generation, message)
                continue
            ready.append((task, generation, message))
        if ready and self._records is not None:
            ready = await self._start_records(self._records, ready)
        for task, generation, message in ready:
            self._inflight[task.id] = (generation, message)
        return [task for task, _, _ in ready]

    async def _start_records(
        self, records: RecordWriter, ready: list[tuple[Task, int, AbstractIncomingMessage]]
    ) -> list[tuple[Task, int, AbstractIncomingMessage]]:
        started = await records.start([task for task, _, _ in ready])
        admitted = []
        for task, generation, message in ready:
            if task.id not in started:
                log.info(
                    "task %s %s: stale delivery (finished, cancelled or retried); dropped",
                    task.id,
                    task.name,
                )
                await self._settle_message(generation, message)
                continue
            # Not handed out yet: completing the record in place is safe (records.py).
            task.attempts, task.lease_token = started[task.id]
            admitted.append((task, generation, message))
        return admitted

    async def _settle_message(
        self, generation: int, message: AbstractIncomingMessage, reject: bool = False
    ) -> None:
        """Ack (or reject) a delivery if its channel still lives; else it comes back anyway."""
        if generation != self._generation:
            return
        try:
            await (message.reject(requeue=False) if reject else message.ack())
        except ERRORS as error:
            log.debug("could not ack message %s: %s", message.message_id, error)

    async def finish(self, outcome: Outcome) -> None:
        self._outcomes.append(outcome)
        self._settled.clear()
        self._outcome_ready.set()

    async def _settle_loop(self) -> None:
        while True:
            if not self._outcomes:
                await self._outcome_ready.wait()
            self._outcome_ready.clear()
            batch, self._outcomes = self._outcomes, []
            try:
                await self._settle(batch)
            except Exception:  # refused: settle each alone, so one cannot hold back the rest
                for outcome in batch if len(batch) > 1 else ():
                    await self._settle_alone(outcome)
                if len(batch) == 1:
                    await self._requeue(batch[0])
            if not self._outcomes:
                self._settled.set()

    async def _settle(self, batch: list[Outcome]) -> None:
        follow_ups = await self._decide(batch)
        await self._publish_follow_ups(follow_ups)
        for follow_up in follow_ups:
            entry = self._inflight.pop(follow_up.outcome.task.id, None)
            if entry is not None:
                await self._settle_message(*entry)

    async def _settle_alone(self, outcome: Outcome) -> None:
        try:
            await self._settle([outcome])
        except Exception:
            await self._requeue(outcome)

    async def _requeue(self, outcome: Outcome) -> None:
        """A bug, not an outage: give the message back to its queue (logged)."""
        log.exception("could not settle the outcome of task %s; requeueing it", outcome.task.id)
        entry = self._inflight.pop(outcome.task.id, None)
        if entry is not None and entry[0] == self._generation:
            with contextlib.suppress(*ERRORS):
                await entry[1].nack(requeue=True)

    async def _decide(self, batch: list[Outcome]) -> list[FollowUp]:
        """Record the outcomes (one transaction) and decide what each one publishes."""
        headers = None
        if self._records is not None:
            written = await self._records.record(batch)
        else:
            grace = self.settings.unknown_task_grace_seconds
            untracked = decide_untracked(batch, self._delivered_headers, self._worker_id, grace)
            written, headers = untracked.written, untracked.headers
        report(batch, written, tracebacks=self.settings.log_failure_tracebacks)
        return follow_ups(batch, written, headers)

    def _delivered_headers(self, task: Task) -> dict[str, Any]:
        entry = self._inflight.get(task.id)
        return dict(entry[1].headers or {}) if entry else {}

    async def _publish_follow_ups(self, follow_ups: list[FollowUp]) -> None:
        """Publish until confirmed, across reconnects; only then are the originals acked."""
        backoff = Backoff(first=0.1, most=MAX_BACKOFF_SECONDS)
        while pending := [f for f in follow_ups if f.action != "ack" and not f.done]:
            await self._connected.wait()
            results = await asyncio.gather(
                *(self._publish_follow_up(f) for f in pending), return_exceptions=True
            )
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                await backoff.pause(
                    log, "cannot publish %d retries (%s)", len(failures), failures[0]
                )

    async def _publish_follow_up(self, follow_up: FollowUp) -> None:
        assert self._link is not None
        task = follow_up.outcome.task
        entry = self._inflight.get(task.id)
        body = entry[1].body if entry else record_message(task).body
        message = build_message(
            body,
            task.id,
            task.priority,
            follow_up.attempts,
            follow_up.run_at,
            follow_up.error,
            follow_up.headers,
        )
        if follow_up.action == "dead":
            await self._link.publish_dead(task.queue, message)
        else:
            await self._link.publish(task.queue, message, follow_up.run_at)
        follow_up.done = True

    async def _publish_rows(self, rows: Sequence[outbox.OutboxRow]) -> None:
        await self._connected.wait()
        assert self._link is not None
        await publish_rows(self._link, rows)

    async def heartbeat(
        self, running: Sequence[Task], claimed_ahead: Sequence[Task] = ()
    ) -> set[uuid.UUID]:
        """No leases here (a dead connection is the lease); reports tasks cancelled meanwhile."""
        tasks = [*running, *claimed_ahead]
        if not tasks or self._records is None:
            return set()
        return {task.id for task in tasks} - await self._records.held(tasks)

    async def forget(self, tasks: Sequence[Task]) -> None:
        for task in tasks:
            entry = self._inflight.pop(task.id, None)
            if entry is not None:
                await self._settle_message(*entry)

    def wake(self) -> None:
        self._interrupted = True
        self._arrived.set()

    async def close(self) -> None:
        if self._cron is not None:
            await self._cron.stop()
            self._cron = None
        try:
            await asyncio.wait_for(self._settled.wait(), max(self.lease_seconds / 2, 1.0))
        except TimeoutError:
            log.warning(
                "could not settle %d outcomes before shutdown; their tasks will be redelivered",
                len(self._outcomes),
            )
        if self._relay is not None:
            await self._relay.stop()
        if self._pauses is not None:
            await self._pauses.stop()
            self._pauses = None
        for loop in self._background:
            await loop.stop()
        if self._link is not None:
            await self._link.close()  # unacked deliveries go back to their queues
        self._prefetch = 0
        if self.database is not None:
            await self.database.aclose()
