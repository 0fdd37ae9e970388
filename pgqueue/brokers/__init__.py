"""Brokers: how tasks travel from producers to workers. `base.Broker` is the contract every
broker fulfils; `postgres/` (the default: the task table is the queue) and `rabbitmq/`
implement it. `get_broker` is the one place that names a concrete broker."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgqueue.brokers.base import Broker
from pgqueue.records import CleanupPolicy
from pgqueue.settings import get_settings

if TYPE_CHECKING:
    from pgqueue.settings import Settings

__all__ = ["Broker", "CleanupPolicy", "get_broker"]


def get_broker(settings: Settings | None = None) -> Broker:
    """The broker the settings name (`PGQUEUE_BROKER`, `task.broker`); database by default."""
    settings = settings or get_settings()
    # Imported here: the RabbitMQ broker needs the optional aio-pika, and a worker or
    # producer loads only the broker it uses.
    if settings.broker == "rabbitmq":
        from pgqueue.brokers.rabbitmq.broker import RabbitMQBroker

        return RabbitMQBroker.from_settings(settings)
    from pgqueue.brokers.postgres.broker import PostgresBroker

    return PostgresBroker.from_settings(settings)
