"""The RabbitMQ broker (the `rabbitmq` extra): tasks travel as messages, statuses stay in
the task table. `broker` runs its parts: `connection` (confirmed publishes), `messages`
(the wire format), `topology` (names, priorities, the delay chain), `status_writer`
(records and what each outcome publishes) and `outbox` (tasks queued in a caller's
transaction, relayed after commit)."""

from __future__ import annotations

from typing import Any

__all__ = ["RabbitMQBroker", "Topology"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: `outbox` is imported without aio-pika (producers), the broker
    # needs it.
    if name == "RabbitMQBroker":
        from pgqueue.brokers.rabbitmq.broker import RabbitMQBroker

        return RabbitMQBroker
    if name == "Topology":
        from pgqueue.brokers.rabbitmq.topology import Topology

        return Topology
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
