"""The RabbitMQ broker: durable priority queues, confirmed publishes, delays by dead-lettering.

Design (docs/rabbitmq.md): one durable queue per pgqueue queue (`<prefix>.q.<queue>`,
x-max-priority) and its dead-letter queue (`<prefix>.dlq.<queue>`). Delays go through a
chain of fixed-TTL queues, one per power of two of milliseconds: a message visits only
the levels of the binary decomposition of its delay, so a short delay never waits behind
a long one. Task records stay in the task table when status tracking is on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aio_pika
import aiormq
import psycopg
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from psycopg_pool import PoolTimeout

from pgqueue import outbox
from pgqueue.brokers import Broker, CleanupPolicy
from pgqueue.database import Database, database_from_settings
from pgqueue.errors import BrokerUnavailable, DatabaseUnavailable
from pgqueue.queries import queries as named_queries
from pgqueue.records import NewTask, Outcome, OutcomeKind, Task, TaskStatus
from pgqueue.settings import Settings
from pgqueue.store import TaskStore, async_driver_connection, sync_driver_connection
from pgqueue.worker_registry import WorkerInfo

log = logging.getLogger("pgqueue.worker")

T = TypeVar("T")

ATTEMPTS_HEADER = "x-pgqueue-attempts"  # runs made before this delivery
# Epoch milliseconds, an integer: AMQP tables carry Python floats as 32-bit floats, which
# would round today's epoch seconds to 128 s.
RUN_AT_HEADER = "x-pgqueue-run-at-ms"  # never run before
ERROR_HEADER = "x-pgqueue-error"  # on dead-lettered messages
MAX_PRIORITY = 12  # x-max-priority: pgqueue below 0 -> 0, 0..10 -> 1..11, above 10 -> 12
DELAY_LEVELS = 32  # TTL queues of 2^0 .. 2^31 ms; longer delays go round again
MAX_DELAY_MS = 2**DELAY_LEVELS - 1
MAX_QUEUE_NAME_BYTES = 255
CONNECT_TIMEOUT_SECONDS = 5.0
PUBLISH_TIMEOUT_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 10.0
PUBLISH_CHUNK = 1000
ERRORS = (OSError, aiormq.exceptions.AMQPError, RuntimeError, TimeoutError)


def broker_priority(priority: int) -> int:
    """The AMQP priority of a pgqueue priority: 0..10 keep their order, the rest clamp."""
    return min(max(priority, -1), MAX_PRIORITY - 1) + 1


def retry_backoff(attempts: int) -> float:
    """The SQL function pgqueue.retry_backoff in Python (used without status tracking)."""
    return min(2.0 ** (max(attempts, 1) - 1), 3600.0) * (0.75 + random.random() * 0.5)


def delay_routing_key(delay_ms: int, token: str) -> str:
    """Bits of the delay from the top level down to 2^0 ms, then the destination token."""
    bits = format(min(max(delay_ms, 0), MAX_DELAY_MS), f"0{DELAY_LEVELS}b")
    return ".".join(bits) + "." + token


def safe_url(url: str) -> str:
    """The AMQP URL without its password."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{parts.hostname}:{parts.port or 5672}{parts.path or '/'}"


class Topology:
    """Names of what pgqueue declares on RabbitMQ, derived from the prefix setting."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.deliver_exchange = f"{prefix}.deliver"

    def _name(self, kind: str, queue: str) -> str:
        name = f"{self.prefix}.{kind}.{queue}"
        if len(name.encode()) <= MAX_QUEUE_NAME_BYTES:
            return name
        # Never truncate into a collision: long names become a digest ('#' is never
        # produced by the plain form, which has a '.' after the kind).
        return f"{self.prefix}.{kind}#{hashlib.sha256(queue.encode()).hexdigest()}"

    def main(self, queue: str) -> str:
        return self._name("q", queue)

    def dead(self, queue: str) -> str:
        return self._name("dlq", queue)

    def token(self, queue: str) -> str:
        """A short routing word for the delay chain (routing keys are 255 bytes at most)."""
        return hashlib.sha256(self.main(queue).encode()).hexdigest()[:24]

    def delay_level(self, level: int) -> str:
        return f"{self.prefix}.delay.{level}"

    def all_names(self) -> tuple[list[str], list[str]]:
        """(queues, exchanges) shared by every pgqueue queue of this prefix."""
        levels = [self.delay_level(level) for level in range(DELAY_LEVELS)]
        return levels, [*levels, self.deliver_exchange]

    async def declare_delays(self, channel: AbstractChannel) -> AbstractExchange:
        """The delay chain; returns its top exchange, where delayed messages are published."""
        topic = aio_pika.ExchangeType.TOPIC
        below = await channel.declare_exchange(self.deliver_exchange, topic, durable=True)
        for level in range(DELAY_LEVELS):
            name = self.delay_level(level)
            exchange = await channel.declare_exchange(name, topic, durable=True)
            queue = await channel.declare_queue(
                name,
                durable=True,
                arguments={"x-message-ttl": 2**level, "x-dead-letter-exchange": below.name},
            )
            skip = "*." * (DELAY_LEVELS - 1 - level)
            await queue.bind(exchange, f"{skip}1.#")
            await below.bind(exchange, f"{skip}0.#")
            below = exchange
        return below

    async def declare_queue(self, channel: AbstractChannel, queue: str) -> AbstractQueue:
        dead = self.dead(queue)
        await channel.declare_queue(dead, durable=True)
        main = await channel.declare_queue(
            self.main(queue),
            durable=True,
            arguments={
                "x-max-priority": MAX_PRIORITY,
                "x-dead-letter-exchange": "",  # rejected (undecodable) messages
                "x-dead-letter-routing-key": dead,
            },
        )
        await main.bind(self.deliver_exchange, f"#.{self.token(queue)}")
        return main


def message_body(
    task_id: uuid.UUID, name: str, queue: str, priority: int, max_retries: int, kwargs_json: str
) -> bytes:
    """The JSON body; the arguments are copied as the producer encoded them."""
    head = json.dumps(
        {
            "id": str(task_id),
            "name": name,
            "queue": queue,
            "priority": priority,
            "max_retries": max_retries,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return (head[:-1] + ',"kwargs":' + kwargs_json + "}").encode()


def build_message(
    body: bytes,
    task_id: uuid.UUID | str,
    priority: int,
    attempts: int,
    run_at: float,
    error: str | None = None,
) -> aio_pika.Message:
    headers: dict[str, Any] = {ATTEMPTS_HEADER: attempts, RUN_AT_HEADER: math.ceil(run_at * 1000)}
    if error is not None:
        headers[ERROR_HEADER] = error[:16384]
    return aio_pika.Message(
        body,
        message_id=str(task_id),
        priority=broker_priority(priority),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        content_type="application/json",
        headers=headers,
    )


def new_message(task: NewTask, run_at: float) -> aio_pika.Message:
    body = message_body(
        task.id, task.name, task.queue, task.priority, task.max_retries, task.kwargs_json
    )
    return build_message(body, task.id, task.priority, 0, run_at)


def record_message(task: Task) -> aio_pika.Message:
    """A message rebuilt from a task record (TaskManager.retry)."""
    body = message_body(
        task.id, task.name, task.queue, task.priority, task.max_retries, json.dumps(task.kwargs)
    )
    return build_message(body, task.id, task.priority, task.attempts, time.time())


def int_header(headers: dict[str, Any], name: str) -> int:
    value = headers.get(name)
    return int(value) if isinstance(value, int | float | str) else 0


def decode(message: AbstractIncomingMessage) -> Task:
    """The task a delivery carries; attempts counts this run."""
    body = json.loads(message.body)
    headers = message.headers or {}
    run_at = int_header(headers, RUN_AT_HEADER) / 1000
    return Task(
        id=uuid.UUID(body["id"]),
        name=str(body["name"]),
        queue=str(body["queue"]),
        priority=int(body["priority"]),
        status=TaskStatus.RUNNING,
        kwargs=body["kwargs"],
        attempts=int_header(headers, ATTEMPTS_HEADER) + 1,
        max_retries=int(body["max_retries"]),
        run_at=datetime.datetime.fromtimestamp(run_at, datetime.UTC),
    )


def run_at_of(task: NewTask) -> float:
    if task.schedule_at is not None:
        return task.schedule_at.timestamp()
    return time.time() + task.delay


class Link:
    """One connection and its confirm channel, the delay chain and the queues declared on it."""

    def __init__(self, url: str, topology: Topology, reconnect: bool = True) -> None:
        self.url = url
        self.topology = topology
        self.reconnect = reconnect  # a worker's link is reopened by its own loop only
        self.connection: AbstractConnection | None = None
        self.channel: AbstractChannel | None = None
        self.closed = asyncio.Event()
        self._delays: AbstractExchange | None = None
        self._declared: dict[str, AbstractQueue] = {}

    @property
    def is_open(self) -> bool:
        return self.channel is not None and not self.channel.is_closed

    def unavailable(self, error: BaseException) -> BrokerUnavailable:
        reason = str(error).strip() or type(error).__name__
        return BrokerUnavailable(
            f"cannot use RabbitMQ at {safe_url(self.url)}: {reason} "
            "(check PGQUEUE_RABBITMQ_URL or the task.rabbitmq settings)"
        )

    async def open(self) -> AbstractChannel:
        await self.close()
        try:
            connection = await aio_pika.connect(self.url, timeout=CONNECT_TIMEOUT_SECONDS)
        except (*ERRORS, ValueError) as error:
            raise self.unavailable(error) from error
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self._delays = await self.topology.declare_delays(channel)
        except ERRORS as error:
            await connection.close()
            raise self.unavailable(error) from error
        self.closed = asyncio.Event()
        connection.close_callbacks.add(lambda *_: self.closed.set())
        self.connection, self.channel, self._declared = connection, channel, {}
        return channel

    async def ensure(self) -> AbstractChannel:
        if self.channel is not None and self.is_open:
            return self.channel
        if not self.reconnect:
            raise BrokerUnavailable(f"the connection to RabbitMQ at {safe_url(self.url)} is down")
        return await self.open()

    async def declare(self, queue: str) -> AbstractQueue:
        declared = self._declared.get(queue)
        if declared is None:
            assert self.channel is not None
            declared = await self.topology.declare_queue(self.channel, queue)
            self._declared[queue] = declared
        return declared

    async def publish(self, queue: str, message: aio_pika.Message, run_at: float) -> None:
        """Route to the queue now, or into the delay chain; returns after the confirm."""
        try:
            channel = await self.ensure()
            await self.declare(queue)
            delay_ms = math.ceil((run_at - time.time()) * 1000)
            if delay_ms <= 0:
                await channel.default_exchange.publish(
                    message, self.topology.main(queue), timeout=PUBLISH_TIMEOUT_SECONDS
                )
            else:
                assert self._delays is not None
                key = delay_routing_key(delay_ms, self.topology.token(queue))
                await self._delays.publish(message, key, timeout=PUBLISH_TIMEOUT_SECONDS)
        except ERRORS as error:
            raise self.unavailable(error) from error

    async def publish_dead(self, queue: str, message: aio_pika.Message) -> None:
        try:
            channel = await self.ensure()
            await self.declare(queue)
            await channel.default_exchange.publish(
                message, self.topology.dead(queue), timeout=PUBLISH_TIMEOUT_SECONDS
            )
        except ERRORS as error:
            raise self.unavailable(error) from error

    async def take_dead(self, queue: str, task_id: uuid.UUID) -> bool:
        """Remove a task's message from its dead-letter queue; True if it was there."""
        channel = await self.ensure()
        await self.declare(queue)
        dead = await channel.declare_queue(self.topology.dead(queue), durable=True)
        held = []
        found = False
        try:
            for _ in range(dead.declaration_result.message_count or 0):
                message = await dead.get(no_ack=False, fail=False)
                if message is None:
                    break
                if message.message_id == str(task_id):
                    await message.ack()
                    found = True
                    break
                held.append(message)
        finally:
            for message in held:
                await message.nack(requeue=True)
        return found

    async def close(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None:
            with contextlib.suppress(*ERRORS):  # already gone
                await connection.close()


class _PrivateLoop:
    """An event loop in a daemon thread, so sync code can publish with aio-pika."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=self.loop.run_forever, name="pgqueue-rabbitmq", daemon=True
        )
        thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = self.submit(coro)
        try:
            return future.result(CONNECT_TIMEOUT_SECONDS + 4 * PUBLISH_TIMEOUT_SECONDS)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BrokerUnavailable("RabbitMQ did not confirm in time") from None


@dataclasses.dataclass(slots=True)
class FollowUp:
    """What settling an outcome publishes: again later (`run_at`), dead-lettered, or nothing."""

    outcome: Outcome
    action: str  # "ack" | "again" | "dead"
    attempts: int = 0
    run_at: float = 0.0
    error: str | None = None
    done: bool = False


class RabbitMQBroker(Broker):
    """Tasks travel as RabbitMQ messages; records (statuses) stay in the task table."""

    def __init__(self, settings: Settings, database: Database | None = None) -> None:
        self.settings = settings
        self.url = settings.rabbitmq_connection_url()
        self.topology = Topology(settings.rabbitmq_prefix)
        self.database = database
        self.tracking = settings.status_tracking and database is not None
        self.lease_seconds = settings.lease_seconds
        self._store = TaskStore(database) if database is not None else None
        self._queries = database.queries if database else named_queries(settings.schema_name)
        self._private: _PrivateLoop | None = None
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
        self._background: list[asyncio.Task[None]] = []
        self._relay: outbox.Relay | None = None
        self._interrupted = False
        self._prefetch = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> RabbitMQBroker:
        """Records in the configured database (or the embedded default) when tracking is on."""
        wants_database = settings.status_tracking or settings.dsn is not None
        return cls(settings, database_from_settings(settings) if wants_database else None)

    # -- producers ---------------------------------------------------------------------

    def _producer_loop(self) -> tuple[_PrivateLoop, Link]:
        with self._lock:
            if self._private is None or self._producer is None:
                self._private = _PrivateLoop()
                self._producer = Link(self.url, self.topology)
            return self._private, self._producer

    def enqueue(self, tasks: Sequence[NewTask], connection: Any = None) -> None:
        if connection is not None:
            conn = sync_driver_connection(connection)
            if self._store is not None and self.tracking:
                self._store.insert(tasks, conn)
            outbox.write(conn, self._queries, [outbox_row(task) for task in tasks])
            return
        private, link = self._producer_loop()
        private.run(link.ensure())  # unreachable: fail before writing anything
        if self._store is not None and self.tracking:
            self._store.insert(tasks)
        try:
            private.run(self._publish_new(link, tasks))
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
        private, link = self._producer_loop()
        await asyncio.wrap_future(private.submit(link.ensure()))
        if self._store is not None and self.tracking:
            await self._store.ainsert(tasks)
        try:
            await asyncio.wrap_future(private.submit(self._publish_new(link, tasks)))
        except BrokerUnavailable:
            await asyncio.to_thread(self._forget, tasks)
            raise

    async def _publish_new(self, link: Link, tasks: Sequence[NewTask]) -> None:
        for start in range(0, len(tasks), PUBLISH_CHUNK):
            chunk = tasks[start : start + PUBLISH_CHUNK]
            await asyncio.gather(
                *(
                    link.publish(task.queue, new_message(task, run_at_of(task)), run_at_of(task))
                    for task in chunk
                )
            )

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
        private, link = self._producer_loop()

        async def move() -> None:
            await link.take_dead(task.queue, task.id)
            await link.publish(task.queue, record_message(task), time.time())

        private.run(move())

    def publish_outbox(self, rows: Sequence[outbox.OutboxRow]) -> None:
        """Relay outbox rows from sync code (tests, tools); workers relay on their own."""
        private, link = self._producer_loop()
        private.run(publish_rows(link, rows))

    # -- workers -----------------------------------------------------------------------

    async def open(
        self,
        worker_id: str,
        queues: Sequence[str],
        cleanup: CleanupPolicy | None,
        worker: WorkerInfo | None = None,
    ) -> None:
        self._worker_id = worker_id
        self._queues = list(queues)
        self._interrupted = False
        self._arrived, self._connected = asyncio.Event(), asyncio.Event()
        self._outcome_ready, self._settled = asyncio.Event(), asyncio.Event()
        self._settled.set()
        self._link = Link(self.url, self.topology, reconnect=False)
        self._background = [asyncio.create_task(self._settle_loop(), name="pgqueue-settle")]
        if self.database is not None:
            self._relay = outbox.Relay(self.database, self._publish_rows)
            self._relay.start()
        if worker is not None:  # prefetch: as many unacked messages as the worker runs
            self._start_consuming(worker.concurrency)

    def _start_consuming(self, prefetch: int) -> None:
        self._prefetch = max(prefetch, 1)
        self._background.append(
            asyncio.create_task(self._stay_connected(), name="pgqueue-rabbitmq")
        )

    async def claim(self, limit: int, wait_seconds: float) -> list[Task]:
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
        backoff = 0.1
        while True:
            try:
                channel = await self._link.open()
                await channel.set_qos(prefetch_count=self._prefetch, global_=True)
                self._generation += 1
                generation = self._generation
                for queue in self._queues:
                    declared = await self._link.declare(queue)
                    await declared.consume(self._receiver(generation))
                if backoff > 0.1:
                    log.info("reconnected to RabbitMQ at %s", safe_url(self.url))
                backoff = 0.1
                self._connected.set()
                self._arrived.set()
                await self._link.closed.wait()
                log.warning("connection to RabbitMQ at %s lost", safe_url(self.url))
            except (BrokerUnavailable, *ERRORS) as error:
                log.warning("RabbitMQ unavailable (%s); reconnecting in %.1fs", error, backoff)
            self._connected.clear()
            self._generation += 1  # what the old channel delivered cannot be acked any more
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

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
                    )
                    await self._link.publish(task.queue, again, task.run_at.timestamp())
                    await self._settle_message(generation, message)
                except BrokerUnavailable:
                    pass  # redelivered after the reconnect
                continue
            if task.id in self._inflight:  # a duplicate of a run in progress
                await self._settle_message(generation, message)
                continue
            ready.append((task, generation, message))
        if ready and self.tracking:
            ready = await self._start_records(ready)
        for task, generation, message in ready:
            self._inflight[task.id] = (generation, message)
        return [task for task, _, _ in ready]

    async def _start_records(
        self, ready: list[tuple[Task, int, AbstractIncomingMessage]]
    ) -> list[tuple[Task, int, AbstractIncomingMessage]]:
        assert self.database is not None
        params = {
            "ids": [t.id for t, _, _ in ready],
            "names": [t.name for t, _, _ in ready],
            "queues": [t.queue for t, _, _ in ready],
            "priorities": [t.priority for t, _, _ in ready],
            "kwargs": [json.dumps(t.kwargs) for t, _, _ in ready],
            "max_retries": [t.max_retries for t, _, _ in ready],
            "run_ats": [t.run_at for t, _, _ in ready],
            "attempts": [t.attempts - 1 for t, _, _ in ready],
            "worker_id": self._worker_id,
        }
        rows = await self._with_database(self._queries["broker_start_tasks"], params)
        started = {row[0]: (row[1], row[2]) for row in rows}
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
            task.attempts, task.lease_token = started[task.id]
            admitted.append((task, generation, message))
        return admitted

    async def _with_database(self, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run one statement; a worker waits out a database outage instead of dying."""
        assert self.database is not None
        backoff = 0.1
        while True:
            try:
                async with self.database.async_connection() as conn:
                    cursor = await conn.execute(query, params)
                    return await cursor.fetchall() if cursor.description else []
            except (psycopg.OperationalError, PoolTimeout, DatabaseUnavailable) as error:
                if self._interrupted:  # stopping: the unacked deliveries come back anyway
                    raise
                log.warning("database unavailable (%s); retrying in %.1fs", error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

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
            await self._outcome_ready.wait()
            self._outcome_ready.clear()
            batch, self._outcomes = self._outcomes, []
            try:
                follow_ups = await self._decide(batch)
                await self._publish_follow_ups(follow_ups)
            except Exception:  # a bug, not an outage: give the messages back to the queue
                log.exception("could not settle %d outcomes; requeueing them", len(batch))
                for outcome in batch:
                    entry = self._inflight.pop(outcome.task.id, None)
                    if entry is not None and entry[0] == self._generation:
                        with contextlib.suppress(*ERRORS):
                            await entry[1].nack(requeue=True)
                follow_ups = []
            for follow_up in follow_ups:
                entry = self._inflight.pop(follow_up.outcome.task.id, None)
                if entry is not None:
                    await self._settle_message(*entry)
            if not self._outcomes:
                self._settled.set()

    async def _decide(self, batch: list[Outcome]) -> list[FollowUp]:
        """Record the outcomes (one transaction) and decide what each one publishes."""
        if not self.tracking:
            return [decide_untracked(outcome) for outcome in batch]
        backoff = 0.1
        while True:
            try:
                return await self._record(batch)
            except (psycopg.OperationalError, PoolTimeout, DatabaseUnavailable) as error:
                log.warning("cannot record outcomes (%s); retrying in %.1fs", error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _record(self, batch: list[Outcome]) -> list[FollowUp]:
        assert self.database is not None
        queries = self._queries
        follow_ups = []
        async with self.database.async_connection() as conn, conn.transaction():
            completed = [o for o in batch if o.kind is OutcomeKind.COMPLETED]
            if completed:
                await conn.execute(
                    queries["complete_tasks"],
                    {
                        "ids": [o.task.id for o in completed],
                        "tokens": [o.task.lease_token for o in completed],
                        "results": [o.result_json for o in completed],
                    },
                )
            for outcome in batch:
                task = outcome.task
                fence = {"id": task.id, "token": task.lease_token}
                if outcome.kind is OutcomeKind.COMPLETED:
                    follow_ups.append(FollowUp(outcome, "ack"))
                elif outcome.kind is OutcomeKind.FAILED:
                    cursor = await conn.execute(
                        queries["fail_task"],
                        {**fence, "error": outcome.error, "retryable": outcome.retryable},
                    )
                    row = await cursor.fetchone()
                    follow_ups.append(failed_follow_up(outcome, row))
                elif outcome.kind is OutcomeKind.RESCHEDULED:
                    params = {
                        **fence,
                        "delay": outcome.delay,
                        "refund_attempt": outcome.refund_attempt,
                    }
                    cursor = await conn.execute(queries["reschedule_task"], params)
                    row = await cursor.fetchone()
                    attempts = task.attempts - (1 if outcome.refund_attempt else 0)
                    follow_ups.append(
                        FollowUp(outcome, "ack")
                        if row is None or row[0] is None
                        else FollowUp(outcome, "again", attempts, row[0].timestamp())
                    )
                else:  # RELEASED
                    await conn.execute(
                        queries["release_tasks"], {"ids": [task.id], "tokens": [task.lease_token]}
                    )
                    follow_ups.append(FollowUp(outcome, "again", task.attempts - 1, time.time()))
        return follow_ups

    async def _publish_follow_ups(self, follow_ups: list[FollowUp]) -> None:
        """Publish until confirmed, across reconnects; only then are the originals acked."""
        backoff = 0.1
        while pending := [f for f in follow_ups if f.action != "ack" and not f.done]:
            await self._connected.wait()
            results = await asyncio.gather(
                *(self._publish_follow_up(f) for f in pending), return_exceptions=True
            )
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                log.warning(
                    "cannot publish %d retries (%s); again in %.1fs",
                    len(failures),
                    failures[0],
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _publish_follow_up(self, follow_up: FollowUp) -> None:
        assert self._link is not None
        task = follow_up.outcome.task
        entry = self._inflight.get(task.id)
        body = entry[1].body if entry else record_message(task).body
        message = build_message(
            body, task.id, task.priority, follow_up.attempts, follow_up.run_at, follow_up.error
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

    async def heartbeat(self, tasks: Sequence[Task]) -> set[uuid.UUID]:
        """No leases here (a dead connection is the lease); reports tasks cancelled meanwhile."""
        if not tasks or not self.tracking:
            return set()
        params = {"ids": [t.id for t in tasks], "tokens": [t.lease_token for t in tasks]}
        held = {row[0] for row in await self._with_database(self._queries["held_tasks"], params)}
        return {task.id for task in tasks} - held

    def wake(self) -> None:
        self._interrupted = True
        self._arrived.set()

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._settled.wait(), max(self.lease_seconds / 2, 1.0))
        except TimeoutError:
            log.warning(
                "could not settle %d outcomes before shutdown; their tasks will be redelivered",
                len(self._outcomes),
            )
        if self._relay is not None:
            await self._relay.stop()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._link is not None:
            await self._link.close()  # unacked deliveries go back to their queues
        self._prefetch = 0
        if self.database is not None:
            await self.database.aclose()


def outbox_row(task: NewTask) -> outbox.OutboxRow:
    return outbox.OutboxRow(
        task.id,
        task.queue,
        task.priority,
        message_body(
            task.id, task.name, task.queue, task.priority, task.max_retries, task.kwargs_json
        ).decode(),
        run_at_of(task),
    )


async def publish_rows(link: Link, rows: Sequence[outbox.OutboxRow]) -> None:
    """Publish outbox rows; returns after every confirm (then the relay may delete them)."""
    await asyncio.gather(
        *(
            link.publish(
                row.queue,
                build_message(row.message.encode(), row.task_id, row.priority, 0, row.run_at),
                row.run_at,
            )
            for row in rows
        )
    )


def failed_follow_up(outcome: Outcome, row: tuple[Any, ...] | None) -> FollowUp:
    """From fail_task's (status, run_at): retry later, or dead-letter with the error."""
    if row is None:  # refused: cancelled or taken over meanwhile
        return FollowUp(outcome, "ack")
    status, run_at = row
    if status == "RETRYING":
        log.info("task %s %s will retry at %s", outcome.task.id, outcome.task.name, run_at)
        return FollowUp(outcome, "again", outcome.task.attempts, run_at.timestamp())
    return dead_follow_up(outcome)


def dead_follow_up(outcome: Outcome) -> FollowUp:
    log.error(
        "task %s %s is FAILED: %s",
        outcome.task.id,
        outcome.task.name,
        (outcome.error or "").splitlines()[0] if outcome.error else "",
    )
    return FollowUp(outcome, "dead", outcome.task.attempts, time.time(), outcome.error or "")


def decide_untracked(outcome: Outcome) -> FollowUp:
    """Without records the message carries everything: the same decisions in Python."""
    task = outcome.task
    if outcome.kind is OutcomeKind.COMPLETED:
        return FollowUp(outcome, "ack")
    if outcome.kind is OutcomeKind.FAILED:
        if outcome.retryable and task.attempts <= task.max_retries:
            return FollowUp(
                outcome, "again", task.attempts, time.time() + retry_backoff(task.attempts)
            )
        return dead_follow_up(outcome)
    if outcome.kind is OutcomeKind.RESCHEDULED:
        attempts = task.attempts - (1 if outcome.refund_attempt else 0)
        return FollowUp(outcome, "again", attempts, time.time() + outcome.delay)
    return FollowUp(outcome, "again", task.attempts - 1, time.time())
