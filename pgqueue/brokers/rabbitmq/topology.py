"""The RabbitMQ broker's AMQP topology: queue and exchange names, priorities, the delay chain.

One durable queue per pgqueue queue (`<prefix>.q.<queue>`, x-max-priority) and its dead-letter
queue (`<prefix>.dlq.<queue>`). Delays go through a chain of fixed-TTL queues, one per power of
two of milliseconds: a message visits only the levels of the binary decomposition of its delay,
so a short delay never waits behind a long one.
"""

from __future__ import annotations

import hashlib

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

MAX_PRIORITY = 12  # x-max-priority: pgqueue below 0 -> 0, 0..10 -> 1..11, above 10 -> 12
DELAY_LEVELS = 32  # TTL queues of 2^0 .. 2^31 ms; longer delays go round again
MAX_DELAY_MS = 2**DELAY_LEVELS - 1
MAX_QUEUE_NAME_BYTES = 255


def broker_priority(priority: int) -> int:
    """The AMQP priority of a pgqueue priority: 0..10 keep their order, the rest clamp."""
    return min(max(priority, -1), MAX_PRIORITY - 1) + 1


def delay_routing_key(delay_ms: int, token: str) -> str:
    """Bits of the delay from the top level down to 2^0 ms, then the destination token."""
    bits = format(min(max(delay_ms, 0), MAX_DELAY_MS), f"0{DELAY_LEVELS}b")
    return ".".join(bits) + "." + token


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
