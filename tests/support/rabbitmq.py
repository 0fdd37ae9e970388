"""The RabbitMQ server of the tests, and removing what a test declared on it."""

from __future__ import annotations

import asyncio
import os
import socket
from urllib.parse import urlsplit

import pytest

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"


def find_rabbitmq() -> str:
    """PGQUEUE_TEST_RABBITMQ_URL, else guest@127.0.0.1:5672; skips the test if that server
    does not answer (fails it on CI)."""
    url = os.environ.get("PGQUEUE_TEST_RABBITMQ_URL", RABBITMQ_URL)
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2).close()
    except OSError as error:
        message = f"no RabbitMQ at {parts.hostname}:{parts.port or 5672} ({error})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return url


def delete_rabbitmq_names(url: str, prefix: str, queues: set[str]) -> None:
    """Delete what pgqueue declared under `prefix` for `queues` (missing ones are fine)."""
    # The optional dependency loads only for the tests that use RabbitMQ.
    import aio_pika

    from pgqueue.brokers.rabbitmq import Topology

    topology = Topology(prefix)
    shared_queues, exchanges = topology.all_names()
    names = [*shared_queues, *(n for q in queues for n in (topology.main(q), topology.dead(q)))]

    async def delete() -> None:
        connection = await aio_pika.connect(url, timeout=5)
        async with connection:
            channel = await connection.channel()
            for name in names:
                await channel.queue_delete(name)
            for name in exchanges:
                await channel.exchange_delete(name)

    asyncio.run(delete())
