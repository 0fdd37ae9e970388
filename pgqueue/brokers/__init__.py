"""Brokers: how tasks travel from producers to workers. `base.Broker` is the contract every
broker fulfils; `postgres/` (the default: the task table is the queue) and `rabbitmq/`
implement it. `get_broker` is the one place that names a concrete broker."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgqueue.brokers.base import Broker
from pgqueue.errors import ConfigurationError
from pgqueue.records import CleanupPolicy
from pgqueue.settings import get_settings
from pgqueue.version import install_hint

if TYPE_CHECKING:
    from pgqueue.settings import Settings

__all__ = ["Broker", "CleanupPolicy", "get_broker"]

#: What the `rabbitmq` extra installs; the broker cannot load without them.
RABBITMQ_PACKAGES = ("aio_pika", "aiormq", "pamqp")


def get_broker(settings: Settings | None = None) -> Broker:
    """The broker the settings name (`PGQUEUE_BROKER`, `task.broker`); database by default."""
    settings = settings or get_settings()
    # Imported here: the RabbitMQ broker needs the optional aio-pika, and a worker or
    # producer loads only the broker it uses.
    if settings.broker == "rabbitmq":
        try:
            from pgqueue.brokers.rabbitmq.broker import RabbitMQBroker
        except ModuleNotFoundError as error:
            package = (error.name or "").partition(".")[0]
            if package not in RABBITMQ_PACKAGES:
                raise
            raise ConfigurationError(
                f"the RabbitMQ broker (PGQUEUE_BROKER=rabbitmq) needs the {package} package, "
                "which is not installed: " + install_hint("rabbitmq")
            ) from error

        return RabbitMQBroker.from_settings(settings)
    from pgqueue.brokers.postgres.broker import PostgresBroker

    return PostgresBroker.from_settings(settings)
