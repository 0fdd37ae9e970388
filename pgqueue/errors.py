"""The exceptions pgqueue raises: one root, each also a matching built-in."""

from __future__ import annotations


class PgQueueError(Exception):
    """Root of every error pgqueue raises on purpose."""


class TaskDefinitionError(PgQueueError, TypeError):
    """A task was declared in a way pgqueue cannot queue (reserved parameter name, ...)."""


class InvalidTaskArguments(PgQueueError, TypeError):
    """Arguments of a task are of the wrong type: not JSON-serialisable, unknown keyword, ..."""


class InvalidTaskOption(PgQueueError, ValueError):
    """An option or argument has a bad value: empty queue, negative delay, NUL character, ..."""


class ConfigurationError(PgQueueError, ValueError):
    """A setting is missing or has a value pgqueue cannot use."""


class DatabaseUnavailable(PgQueueError, ConnectionError):
    """PostgreSQL could not be reached or dropped the connection."""


class BrokerUnavailable(PgQueueError, ConnectionError):
    """The message broker (RabbitMQ) could not be reached."""


class TaskNotFound(PgQueueError, LookupError):
    """No task has the given id."""


class UnknownTask(PgQueueError, LookupError):
    """A task name is not registered with @AsyncTask in this process."""


class EmbeddedServerError(PgQueueError, RuntimeError):
    """The embedded PostgreSQL server could not be started, stopped or used."""


class InvalidDsn(ConfigurationError):
    """A PostgreSQL DSN libpq cannot parse; the message shows it with its password masked."""
