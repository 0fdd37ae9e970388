"""The RabbitMQ broker's connection: confirmed publishes, and a thread for sync publishers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import threading
import time
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractQueue

from pgqueue.brokers.rabbitmq import outbox
from pgqueue.brokers.rabbitmq.messages import build_message, new_message, run_at_of
from pgqueue.brokers.rabbitmq.topology import Topology, delay_routing_key
from pgqueue.dsn import mask_dsn, redact
from pgqueue.errors import BrokerUnavailable
from pgqueue.records import NewTask

T = TypeVar("T")

CONNECT_TIMEOUT_SECONDS = 5.0
PUBLISH_TIMEOUT_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 10.0
PUBLISH_CHUNK = 1000
ERRORS = (OSError, aiormq.exceptions.AMQPError, RuntimeError, TimeoutError)


def safe_url(url: str) -> str:
    """The AMQP URL without its password."""
    try:
        parts = urlsplit(url)
        port = parts.port or 5672
    except ValueError:  # a port that is no number, an unclosed [IPv6]: shown as written
        return mask_dsn(url)
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{parts.hostname}:{port}{parts.path or '/'}"


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
        reason = redact(str(error).strip()) or type(error).__name__
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


class PublishingThread:
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


async def publish_new(link: Link, tasks: Sequence[NewTask]) -> None:
    """Publish new tasks in chunks; returns after every confirm."""
    for start in range(0, len(tasks), PUBLISH_CHUNK):
        chunk = tasks[start : start + PUBLISH_CHUNK]
        await asyncio.gather(
            *(
                link.publish(task.queue, new_message(task, run_at_of(task)), run_at_of(task))
                for task in chunk
            )
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
